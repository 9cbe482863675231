"""CPU latency: onnxruntime vs PyTorch eager, per variant, for one image and a batch of 64.

    python benchmarks/onnx_latency.py [--variants resnet18 hybrid ...] [--repeats 30]
        [--batch-repeats 5] [--threads 1 2] [--int8] [--no-eager] [--out benchmarks/onnx_latency_cpu.md]

Each variant is built fresh (seeded; latency does not depend on the weights' values),
exported through the real export path (``exports.export``) to a temporary folder, then
timed. Columns:

* eager: the PyTorch model as trained (DiffStride layers rebuild their operators from the
  stride at every forward), ``torch.no_grad``;
* eager frozen: ``hybrid_model.freeze(model)``, the module that was exported;
* onnxruntime: ``serving.runtime.OnnxModel.run`` (CPU provider, graph optimisation ALL);
* int8 (``--int8``): the same export quantised by ``exports.quantize`` (QDQ, per-channel
  int8 weights, spectral MatMuls float, calibrated on 64 CIFAR-10 training images), run
  the same way. ``--no-eager`` leaves out the two PyTorch columns.

PyTorch and onnxruntime use the same number of threads. Timings are medians after
warm-up; the measurements of the three engines are interleaved round by round so that
background load on a shared machine hits them alike.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exports.export import export_checkpoint  # noqa: E402
from exports.quantize import quantize_model  # noqa: E402
from hybrid_model import VARIANTS, freeze, model_cost  # noqa: E402
from serving.runtime import CPU, OnnxModel  # noqa: E402
from training.checkpoint import fresh_checkpoint, load_checkpoint  # noqa: E402

STRIDES = (1, 1, 2, 2, 2)
ENGINE_PAUSE_S = 0.1


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of each function, timed in alternating rounds: wall clock
    (``name``) and this process's CPU time, all threads (``name_cpu``; robust to other jobs
    on a shared machine, which stretch wall time but not the work done)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    times.update({f"{name}_cpu": [] for name in fns})
    for _ in range(repeats):
        for name, fn in fns.items():
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - start) * 1000.0)
            times[f"{name}_cpu"].append((time.process_time() - cpu) * 1000.0)
            # onnxruntime's intra-op threads busy-wait for tens of ms after a run and would
            # slow down whichever engine runs next (measured: a 50 ms PyTorch forward took
            # 89 ms right after a 2-thread run, 52 ms after a 0.1 s pause). Untimed.
            time.sleep(ENGINE_PAUSE_S)
    return {name: statistics.median(values) for name, values in times.items()}


def _quantized(float_path: Path) -> Path:
    """``float_path`` quantised to int8 (the gate is not the point here: untrained weights)."""
    out = float_path.with_suffix(".int8.onnx")
    quantize_model(float_path, out, calibration_images=64, test_images=64, max_acc_drop=100.0, min_agreement=0.0,
                   manifest=False, log=lambda _: None)
    return out


def bench_variant(variant: str, workdir: Path, repeats: int, batch_repeats: int, threads: list[int],
                  int8: bool = False, eager_engines: bool = True) -> list[dict]:
    card = workdir / f"{variant}.json"
    fresh_checkpoint(variant, card, STRIDES)
    export_checkpoint(card, workdir / f"{variant}.onnx", parity_images=8, manifest=False, log=lambda _: None)
    int8_path = _quantized(workdir / f"{variant}.onnx") if int8 else None
    model, _ = load_checkpoint(card)
    frozen = freeze(model, (32, 32))
    gflops = model_cost(model)["flops"] / 1e9  # per image
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        session = OnnxModel(workdir / f"{variant}.onnx", providers=[CPU], intra_op_threads=n_threads)
        session8 = OnnxModel(int8_path, providers=[CPU], intra_op_threads=n_threads) if int8_path else None
        for batch, reps in ((1, repeats), (64, batch_repeats)):
            x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
            xt = torch.from_numpy(x)

            # Each engine's call, with this iteration's input and sessions bound now.
            def eager(m: torch.nn.Module = model, xt: torch.Tensor = xt):
                with torch.no_grad():
                    return m(xt)

            fns = {"eager": eager, "eager_frozen": functools.partial(eager, frozen)} if eager_engines else {}
            fns["onnxruntime"] = functools.partial(session.run, x)
            if session8 is not None:
                fns["int8"] = functools.partial(session8.run, x)
            medians = _interleaved(fns, reps, warmup=3 if batch == 1 else 1)
            rows.append({"variant": variant, "threads": n_threads, "batch": batch, "gflops": gflops, **medians})
            print(f"{variant:12s} {n_threads} thread(s) batch {batch:3d}: "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in medians.items() if not k.endswith("_cpu")), flush=True)
    return rows


def markdown(rows: list[dict], command: str, load: tuple[float, float]) -> str:
    eager = "eager" in rows[0]
    int8 = "int8" in rows[0]
    lines = [
        "# ONNX Runtime vs PyTorch eager latency (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
        f"the same thread count for both engines; torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}; strides {STRIDES}, 32x32 inputs, "
        "fresh (untrained) weights. Median milliseconds per call (lower is better); 'CPU ms' is "
        "the process's CPU time per call, all threads (robust to other jobs on the machine).",
        "",
        f"1-minute load average before / after the run: {load[0]:.1f} / {load[1]:.1f} "
        "(other jobs shared the machine when this is above the core count; eager PyTorch suffers "
        "more from contention than onnxruntime).",
        "",
        "| variant | GFLOP/img | threads | batch"
        + (" | PyTorch eager | eager (frozen)" if eager else "") + " | onnxruntime"
        + (" | int8" if int8 else "") + (" | speed-up vs eager | vs frozen" if eager else "")
        + (" | int8 speed-up | CPU ms onnxruntime | CPU ms int8 | int8 CPU-time ratio" if int8 else "")
        + " | onnxruntime GFLOP/s |",
        "|---|" + "---:|" * (5 + 4 * eager + 5 * int8),
    ]
    for r in sorted(rows, key=lambda r: (r["threads"], r["batch"])):
        cells = [r["variant"], f"{r['gflops']:.2f}", str(r["threads"]), str(r["batch"])]
        if eager:
            cells += [f"{r['eager']:.1f}", f"{r['eager_frozen']:.1f}"]
        cells.append(f"{r['onnxruntime']:.1f}")
        if int8:
            cells.append(f"{r['int8']:.1f}")
        if eager:
            cells += [f"{r['eager'] / r['onnxruntime']:.2f}x", f"{r['eager_frozen'] / r['onnxruntime']:.2f}x"]
        if int8:
            cells += [f"{r['onnxruntime'] / r['int8']:.2f}x", f"{r['onnxruntime_cpu']:.1f}", f"{r['int8_cpu']:.1f}",
                      f"{r['onnxruntime_cpu'] / r['int8_cpu']:.2f}x"]
        cells.append(f"{r['gflops'] * r['batch'] / r['onnxruntime'] * 1000:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=30, help="timed runs for one image")
    parser.add_argument("--batch-repeats", type=int, default=5, help="timed runs for the batch of 64")
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, min(4, os.cpu_count() or 1)}),
                        help="thread counts to measure (both engines use the same)")
    parser.add_argument("--int8", action="store_true", help="also time the int8 model (exports.quantize)")
    parser.add_argument("--no-eager", dest="eager", action="store_false", help="leave out the PyTorch engines")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            rows.extend(bench_variant(variant, Path(tmp), args.repeats, args.batch_repeats, args.threads, args.int8, args.eager))
    table = markdown(rows, command, (load_before, os.getloadavg()[0]))
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
