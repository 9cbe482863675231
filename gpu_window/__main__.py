"""The runbook of one 15-minute GPU window (issues 10, 11, 20 and 21): at most two device calls.

Here (before the window; then after it, in this order; every step in docs/gpu-window.md)::

    python -m gpu_window prepare    # scratch branch without exports/models, data/, size check
    #   device call 1: run(command="PYTHONUNBUFFERED=1 python3 -m gpu_window models --variants resnet18,spectral --profile-seconds 60 --budget 200 --out $OUT",
    #                      carry=["data"], timeout_s=230)       then: cp -r FILES_AT artifacts/window/call1
    #   device call 2: run(command="PYTHONUNBUFFERED=1 python3 -m gpu_window models --variants diffstride,hybrid,diffstride2 --budget 585 --out $OUT",
    #                      carry=["data"], timeout_s=595)       then: cp -r FILES_AT artifacts/window/call2
    python -m gpu_window restore    # back to the branch you were on
    python -m exports.ingest artifacts/window/call1 artifacts/window/call2

Modes on the device (each is one call; ``--budget`` is the call's own deadline in seconds):

* ``models``: a smoke of every variant on the device (fwd+bwd, bf16 autocast, channels-last,
  real SGD steps, ~20 s) that also times each step; then the five dashboard models
  (``--strides``, default 1,1,2,2,2, seed 0) train **concurrently** on the one GPU under the
  protocol of ``training/sweeps/short_cifar10.json`` (Table 1's short protocol, one place);
  each finished model is compressed to int8 (``exports.compact``) and its accuracy is
  measured on the device before and after compression. ``--epochs auto`` keeps the
  protocol's epochs when the step-time probe says they fit, else fewer (the cards then say
  ``off_protocol``).
* ``grid``: the next undone Table 1 points (protocol grid, seed 0 first, then 1 and 2; done =
  a finished card in the protocol's ``out`` folder, committed) that fit the budget; returns
  cards only.
* ``extra``: the layer benchmark (fast vs torch.fft, fwd+bwd, fp32 and bf16) and training
  throughput eager and ``torch.compile`` with peak memory and achieved TFLOP/s, each
  time-boxed, then ``grid`` with what is left.
* ``probe``: first a few training steps under ``torch.profiler`` (``--profile-seconds``;
  the kernel table comes back in ``profile.md``); then which of the protocol's settings
  costs accuracy. One variant (``resnet18``, the fastest) trains concurrently under the protocol and under changes of it
  (``--points VARIANT[:FLAG=VALUE,...]``), at the protocol's epochs where they fit; cards
  only come back. ``best.json`` in its work folder names the setting a later ``models
  --args-from`` call of the same (warm) window trains the five models with (:func:`gpu_window.probe.choose_setting`).

Everything under ``--out`` is written as it happens (``window.json`` after every event,
``window.log``), so a call killed at its limit still returns what finished. What comes back
is checked against the device limits (8 files, 16 MiB each, 64 MiB in all).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from serving.cards import RunCard
from serving.paths import REPO_ROOT, SHARED_DATA_DIR
from serving.variants import PAPER_VARIANTS

from .bench import PROFILE_SECONDS, mode_bench, profile_step
from .plan import (
    PROTOCOL,
    RESERVE_S,
    START_OVERHEAD_S,
    args_from,
    grid_done_dirs,
    load_protocol,
    plan_grid,
)
from .probe import PROBE_POINTS, mode_probe
from .record import Window, WindowError
from .runs import mode_train
from .travel import DATA_DIR, OUT_FILES, TREE_LIMIT, MiB, check_out_limits, prepare, restore, travel_bytes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gpu_window", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    prep = sub.add_parser("prepare", help="here: scratch branch without exports/models + data/ + size check")
    prep.add_argument("--repo", type=Path, default=REPO_ROOT)
    prep.add_argument("--data-src", type=Path, default=SHARED_DATA_DIR)
    rest = sub.add_parser("restore", help="here: back to the branch prepare left")
    rest.add_argument("--repo", type=Path, default=REPO_ROOT)
    size = sub.add_parser("size", help="here: what a device call would carry (bytes)")
    size.add_argument("--repo", type=Path, default=REPO_ROOT)
    size.add_argument("--carry", default=DATA_DIR)
    for mode, text in (("models", "device: the five dashboard models (int8 weights come back)"),
                       ("grid", "device: the next undone Table 1 points (cards only)"),
                       ("extra", "device: benchmarks, then grid points"),
                       ("probe", "device: one variant under the protocol and changes of it (cards only)")):
        q = sub.add_parser(mode, help=text)
        q.add_argument("--budget", type=float, required=True, help="seconds this call may take (its own deadline)")
        q.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "artifacts/gpu_window"))
        q.add_argument("--protocol", type=Path, default=PROTOCOL, help="the short protocol (sweep config)")
        q.add_argument("--data-dir", default=DATA_DIR)
        q.add_argument("--device", default="cuda", help="cuda; cpu rehearses the runbook")
        if mode in ("models", "probe"):
            q.add_argument("--strides", default="1,1,2,2,2", help="stride tuple of the models")
            q.add_argument("--profile-seconds", type=float, default=PROFILE_SECONDS if mode == "probe" else 0.0,
                           help="first, a few training steps under torch.profiler for at most this long (0: none)")
        if mode == "models":
            q.add_argument("--variants", default=",".join(PAPER_VARIANTS))
            q.add_argument("--epochs", default="auto", help="auto: the protocol's, or fewer if the probe says they do not fit")
            q.add_argument("--args-from", type=Path, default=None,
                           help="a probe's best.json (runs/gpu_window/probe/best.json): train with its args")
        elif mode == "probe":
            q.add_argument("--points", nargs="+", default=list(PROBE_POINTS),
                           help="VARIANT[:FLAG=VALUE,...] each; the first variant's runs decide best.json")

        else:
            q.add_argument("--done", type=Path, nargs="+", default=None,
                           help="folders of finished cards (default: the protocol's out); a point finished in any is done")
            q.add_argument("--max-points", type=int, default=5, help="at most this many grid points")
        if mode == "extra":
            q.add_argument("--bench-seconds", type=float, default=None, help="bench share (default: all but 0 s if the grid cannot fit)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.mode == "prepare":
            prepare(args.repo.resolve(), args.data_src.resolve())
            print(RUN_CALLS)
            return 0
        if args.mode == "restore":
            restore(args.repo.resolve())
            return 0
        if args.mode == "size":
            total = travel_bytes(args.repo.resolve(), [c for c in args.carry.split(",") if c])
            print(f"{total} bytes ({total / MiB:.1f} MiB; limit 64 MiB)")
            return 0 if total <= TREE_LIMIT else 1
        return _device_main(args)
    except WindowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _device_main(args) -> int:
    if args.budget <= 0:
        raise WindowError(f"--budget must be > 0 seconds, got {args.budget:g}")
    protocol = load_protocol(args.protocol)
    window = Window(args.out, args.mode, args.budget)
    window.record["protocol"] = {"path": str(args.protocol.relative_to(REPO_ROOT) if args.protocol.is_relative_to(REPO_ROOT) else args.protocol),
                                 "epochs": protocol.epochs, "args": protocol.args}
    try:
        _device_or_fail(args.device)
        _device_record(window, args.device)
        if args.mode == "models":
            from training.sweep import Run  # torch-free boundary
            from training.train import parse_strides, run_name  # torch-free boundary

            strides = parse_strides(args.strides)
            variants = [v for v in args.variants.split(",") if v]
            points = [Run(v, strides, 0, "cifar10", run_name(v, "cifar10", strides, 0)) for v in variants]
            if args.epochs != "auto":
                protocol = dataclasses.replace(protocol, epochs=int(args.epochs))
            if args.args_from is not None:
                chosen = args_from(args.args_from, protocol)
                changed = chosen.args != protocol.args
                protocol = chosen
                window.record["protocol"].update(args=protocol.args, args_from=str(args.args_from))
                window.log(f"args from {args.args_from}: {protocol.args}"
                           + (" (not the committed protocol's: these cards fill Table 1 only once the protocol "
                              "file says the same)" if changed else " (the protocol's)"))
            if args.profile_seconds > 0:
                if len(points) + 4 > OUT_FILES:  # window.json/.log, profile.json/.md and the models
                    raise WindowError(f"{len(points)} models and the profile are {len(points) + 4} files; a call returns "
                                      f"{OUT_FILES}: profile with at most {OUT_FILES - 4} models")
                profile_step(window, args.profile_seconds, args.device, protocol)
            mode_train(window, args, points, protocol, compress=True, choose_epochs=args.epochs == "auto")
        elif args.mode == "probe":
            mode_probe(window, args, protocol)
        else:
            if args.mode == "extra":
                bench = args.bench_seconds if args.bench_seconds is not None else window.left() - RESERVE_S
                mode_bench(window, bench, args.device)
            done = args.done or grid_done_dirs(protocol)
            points = plan_grid(protocol, done)[: args.max_points]
            window.record["grid_undone"] = len(plan_grid(protocol, done))
            if not points:
                window.log("grid: every point is done")
            elif window.left() > RESERVE_S + START_OVERHEAD_S + 10:
                mode_train(window, args, points, protocol, compress=False, choose_epochs=False)
            else:
                window.log("grid: no time left for a grid point in this call")
    except WindowError as error:
        window.record["error"] = str(error)
        window.log(f"error: {error}", error=True)
        window.save()
        return 2
    except Exception as error:  # noqa: BLE001 - the record must say why the call ended
        window.record["error"] = f"{type(error).__name__}: {error}"
        window.log(f"error: {type(error).__name__}: {error}", error=True)
        window.save()
        raise
    limits = check_out_limits(window.out)
    window.record["out_limits"] = {"ok": limits["ok"], "problems": limits["problems"], "total_bytes": limits["total_bytes"]}
    window.save()
    summary(window)
    return 0 if limits["ok"] else 1


def _device_or_fail(device: str) -> str:
    import torch  # torch-free boundary

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WindowError("no CUDA device: this runbook is for the GPU machine (--device cpu rehearses it here)")
    return device


def _device_record(window: Window, device: str) -> None:
    import torch  # torch-free boundary

    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.machine()} CPU ({os.cpu_count()} cores)"
    window.record.update(device=name, torch=torch.__version__, python=platform.python_version())
    window.log(f"device {name}; torch {torch.__version__}; budget {window.budget:.0f} s; out {window.out}")
    window.save()


def summary(window: Window) -> None:
    lines = ["| run | status | epochs | test acc | int8 acc | s/epoch | total s |", "|---|---|---:|---:|---:|---:|---:|"]
    for entry in window.record["runs"]:
        card = RunCard.from_dict(entry.get("card") or {})
        history = card.history or []
        seconds = sum(h.get("seconds", 0) for h in history)
        comp = card.compression or {}
        int8 = f"{comp['test_acc_int8']:.4f}" if comp else "–"
        acc = f"{card.test_acc:.4f}" if card.test_acc is not None else "–"
        lines.append(f"| {entry['name']} | {entry['status']} | {card.epoch or 0}/{entry['epochs']} | {acc} | {int8} | "
                     f"{seconds / max(len(history), 1):.1f} | {seconds:.0f} |")
    window.log("summary (window.json has everything):\n" + "\n".join(lines))


RUN_CALLS = """
Next (docs/gpu-window.md), the device calls; the repository root is this checkout, now on the scratch branch:
  call 1: run(command="PYTHONUNBUFFERED=1 python3 -m gpu_window models --variants resnet18,spectral --profile-seconds 60 --budget 200 --out $OUT",
              carry=["data"], timeout_s=230)
          then at once: mkdir -p artifacts/window && cp -r FILES_AT artifacts/window/call1
  call 2 (within 30 s; budget: status's budget_left_s - 30, at most 585; timeout 10 s above it):
          run(command="PYTHONUNBUFFERED=1 python3 -m gpu_window models --variants diffstride,hybrid,diffstride2 --budget 585 --out $OUT",
              carry=["data"], timeout_s=595)
          then: cp -r FILES_AT artifacts/window/call2; give_back
Then here:
  python -m gpu_window restore
  python -m exports.ingest artifacts/window/call1 artifacts/window/call2
"""


if __name__ == "__main__":
    sys.exit(main())
