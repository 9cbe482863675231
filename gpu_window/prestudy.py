"""A CPU pre-study of training settings: ``python -m gpu_window.prestudy``.

Issue 20 asks for a ranking of protocol candidates *before* GPU time is spent on them. This
trains ``resnet18`` (or ``--variant``) at a reduced width on a subset of CIFAR-10 under the
protocol (``training/sweeps/short_cifar10.json``) and under changes of it, written as the
GPU probe writes them (``VARIANT:FLAG=VALUE,...``, :func:`gpu_window.probe.parse_probe_point`),
one run per setting and seed, in this process, one after another; then prints a Markdown
table (test accuracy per seed, mean) and writes it with ``--markdown``. The warm-up keeps its
fraction of the run; ``--batch-size`` keeps a subset's step count near a real run's, with
every setting's lr scaled linearly by the batch ratio. The subset and width
make a run take minutes on a 2-core CPU; how far such a ranking carries to the full-size
runs is what ``benchmarks/RESULTS.md`` ("Protocol pre-study on the CPU") compares with the
GPU probe of the second window.

    python -m gpu_window.prestudy --width 16 --limit-train 5000 --limit-test 1000 --epochs 10 \\
        --batch-size 128 --seeds 0 1 --markdown OUT.md
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import emit_report

from .plan import PROTOCOL
from .probe import parse_probe_point, probe_name
from .record import WindowError

if TYPE_CHECKING:  # training.sweep imports torch
    from training.sweep import SweepConfig

#: Window 2's probe settings that matter for v2 (lr, clip, the two levers), as changes of v2.
DEFAULT_POINTS = ("resnet18", "resnet18:lr=0.2,grad-clip=1", "resnet18:zero-init-residual=true,no-decay-norm-bias=true",
                  "resnet18:zero-init-residual=true,no-decay-norm-bias=true,lr=0.2")


def train_point(text: str, seed: int, protocol: SweepConfig, sizes: dict, data_dir: str | None, out: Path) -> dict:
    """Train one setting at one seed (``training.train.main`` in-process): its card's figures."""
    from training.sweep import flag_args  # start-up: imports torch, not needed for --help
    from training.train import main  # start-up: imports torch, not needed for --help

    variant, changes = parse_probe_point(text)
    args = {**protocol.args, **changes, "epochs": sizes["epochs"], "width": sizes["width"],
            "limit-train": sizes["limit_train"], "limit-test": sizes["limit_test"], "no-progress": True}
    if "warmup" in protocol.args:  # the same fraction of the (shorter) run
        args["warmup"] = round(float(protocol.args["warmup"]) * sizes["epochs"] / protocol.epochs, 6)
    if sizes.get("batch_size"):  # a smaller batch keeps the steps of a subset; the lr scales linearly with it
        scale = sizes["batch_size"] / int(args["batch-size"])
        args["batch-size"] = sizes["batch_size"]
        args["lr"] = round(float(args["lr"]) * scale, 8)
    name = f"{probe_name(variant, changes)}_seed{seed}"
    argv = ["--variant", variant, "--seed", str(seed), "--out", str(out), "--name", name, "--overwrite",
            "--device", "cpu", *flag_args(args)]
    if data_dir:
        argv += ["--data-dir", data_dir]
    started = time.perf_counter()
    if main(argv) != 0:
        raise WindowError(f"{text} (seed {seed}): training failed")
    card = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    return {"point": text, "seed": seed, "test_acc": card["test_acc"], "train_acc": card["history"][-1]["train_acc"],
            "seconds": round(time.perf_counter() - started, 1)}


def table(rows: list[dict], points: Sequence[str], seeds: Sequence[int]) -> str:
    """One row per setting: test accuracy per seed and their mean, best first."""
    lines = ["| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | rank |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    means = {p: statistics.fmean(r["test_acc"] for r in rows if r["point"] == p) for p in points}
    order = sorted(points, key=lambda p: -means[p])
    for point in points:
        accs = [next(r["test_acc"] for r in rows if r["point"] == point and r["seed"] == s) for s in seeds]
        lines.append(f"| `{point}` | " + " | ".join(f"{100 * a:.2f} %" for a in accs)
                     + f" | {100 * means[point]:.2f} % | {order.index(point) + 1} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu_window.prestudy", description=__doc__.split("\n\n")[0])
    p.add_argument("--points", nargs="+", default=list(DEFAULT_POINTS), help="VARIANT[:FLAG=VALUE,...] each")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--limit-train", type=int, default=5000)
    p.add_argument("--limit-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: the protocol's; another batch scales every setting's lr by the same ratio")
    p.add_argument("--protocol", type=Path, default=PROTOCOL)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    if min(args.width, args.limit_train, args.limit_test, args.epochs) < 1:
        p.error("--width, --limit-train, --limit-test and --epochs must be positive")
    from training.sweep import ConfigError, load_config  # start-up: imports torch, not needed for --help

    try:
        protocol = load_config(args.protocol)
        for text in args.points:
            parse_probe_point(text)
        sizes = {"width": args.width, "limit_train": args.limit_train, "limit_test": args.limit_test,
                 "epochs": args.epochs, "batch_size": args.batch_size}
        rows = []
        with tempfile.TemporaryDirectory(prefix="prestudy-") as out:
            for seed in args.seeds:
                for text in args.points:
                    rows.append(train_point(text, seed, protocol, sizes, args.data_dir, Path(out)))
                    print(json.dumps(rows[-1]), flush=True)
    except (WindowError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cpu = platform.processor() or platform.machine()
    report = (f"{table(rows, args.points, args.seeds)}\n\nresnet18 width {args.width}, first {args.limit_train} training / "
              f"{args.limit_test} test images (JPEG copy), {args.epochs} epochs, the protocol's other flags; "
              f"{cpu} CPU; {sum(r['seconds'] for r in rows):.0f} s in all.\n")
    return emit_report(report, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
