"""Forward+backward time of the spectral layers: fast separable path vs the torch.fft reference.

    python -m benchmarks.layers                       # CPU (and CUDA when present), batch 256
    python -m benchmarks.layers --batch 64 --repeats 3 --devices cpu --models

Prints Markdown tables (median seconds per fwd+bwd, speed-up, max |fast - ref| of the outputs);
``--json FILE`` also writes the raw numbers. ``--models`` adds a whole ResNet-18 training step
(``resnet18`` vs ``diffstride`` vs ``hybrid``) at ``--model-batch`` (default 128).
"""
from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from hybrid_model import DiffStride2d, SpectralPool2d
from serving.files import atomic_write_json
from training.tables import layer_table

from .timing import time_steps
from .train_throughput import bench_variant

#: (channels, height, width) that ResNet-18 feeds its downsampling layers on CIFAR.
RESNET18_SHAPES = ((64, 32, 32), (128, 32, 32), (256, 16, 16), (512, 8, 8))


def time_it(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds (synchronised on CUDA), after ``warmup`` calls."""
    return statistics.median(time_steps(fn, device, repeats, warmup)[1])


def _make_layers(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    if kind == "diffstride":
        return DiffStride2d(2.0, impl="matmul"), DiffStride2d(2.0, impl="fft")
    transform = kind.split("-")[1]
    return SpectralPool2d(2, transform, impl="matmul"), SpectralPool2d(2, transform, impl="fft")


def bench_layer(kind: str, shape: tuple[int, int, int], batch: int, device: torch.device, repeats: int,
                autocast: torch.dtype | None = None) -> dict:
    """Time fwd+bwd of the fast and the reference layer on the same input; compare outputs."""
    x = torch.randn(batch, *shape, device=device)
    fast, ref = (layer.to(device) for layer in _make_layers(kind))

    with torch.no_grad():
        out = fast(x)
        diff = (out - ref(x)).abs().max().item()
        upstream = torch.randn_like(out)  # the gradient a next layer would send back

    def step(layer: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            inp = x.detach().requires_grad_(True)
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                out = layer(inp)
            out.backward(upstream.to(out.dtype))
        return run

    t_fast, t_ref = time_it(step(fast), device, repeats), time_it(step(ref), device, repeats)
    return {"layer": kind, "shape": list(shape), "batch": batch, "device": str(device),
            "autocast": str(autocast) if autocast else "float32",
            "fast_s": t_fast, "ref_s": t_ref, "speedup": t_ref / t_fast, "max_abs_diff": diff}


def bench_model_step(variant: str, batch: int, device: torch.device, repeats: int) -> dict:
    """One SGD training step (fwd+bwd+update) of a CIFAR ResNet-18 variant at (1,1,2,2,2), fp32."""
    result = bench_variant(variant, (1, 1, 2, 2, 2), batch, repeats, 1, device, bf16=False, channels_last=False, options={})
    return {"variant": variant, "batch": batch, "device": str(device), "step_s": result["step_s"]}


def model_table(rows: list[dict]) -> str:
    base = {r["device"]: r["step_s"] for r in rows if r["variant"] == "resnet18"}
    lines = ["| variant | device | batch | step (s) | vs resnet18 |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = r["step_s"] / base[r["device"]] if r["device"] in base else float("nan")
        lines.append(f"| {r['variant']} | {r['device']} | {r['batch']} | {r['step_s']:.3f} | {ratio:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda (default: cpu and cuda if present)")
    parser.add_argument("--layers", default="diffstride,spectral-fourier,spectral-hartley")
    parser.add_argument("--bf16", action="store_true", help="also time under bf16 autocast (CUDA)")
    parser.add_argument("--models", action="store_true", help="also time whole ResNet-18 training steps")
    parser.add_argument("--model-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the raw numbers to this file")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.model_batch < 1:
        parser.error("--batch, --repeats and --model-batch must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    devices = [torch.device(d) for d in names if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        parser.error(f"none of the devices {names} is available")
    layers = [name.strip() for name in args.layers.split(",")]
    for name in layers:
        if name not in ("diffstride", "spectral-fourier", "spectral-hartley"):
            parser.error(f"unknown layer {name!r}")

    layer_rows = []
    for device in devices:
        precisions = [None, torch.bfloat16] if args.bf16 and device.type == "cuda" else [None]
        for autocast in precisions:
            for kind in layers:
                for shape in RESNET18_SHAPES:
                    layer_rows.append(bench_layer(kind, shape, args.batch, device, args.repeats, autocast))
                    print(layer_table(layer_rows[-1:]).splitlines()[-1], flush=True)
                    if args.json:  # after every row: a run stopped at a time limit keeps what it measured
                        atomic_write_json(args.json, {"layers": layer_rows, "models": [], "torch": torch.__version__})
    model_rows = []
    if args.models:
        for device in devices:
            for variant in ("resnet18", "diffstride", "hybrid"):
                model_rows.append(bench_model_step(variant, args.model_batch, device, args.repeats))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    print(layer_table(layer_rows))
    if model_rows:
        print()
        print(model_table(model_rows))
    if args.json:
        atomic_write_json(args.json, {"layers": layer_rows, "models": model_rows, "torch": torch.__version__})


if __name__ == "__main__":
    main()
