"""Training throughput of each variant: one SGD step (forward + backward + update) per batch.

    python -m benchmarks.train_throughput                              # batch 256, all variants
    python -m benchmarks.train_throughput --steps 3 --variants resnet18,hybrid --json out.json
    python -m benchmarks.train_throughput --compile            # torch.compile'd steps

Runs on CUDA when present (bf16 autocast + channels-last, as ``training.train`` does),
else on the CPU (fp32). Prints a Markdown table: median step time, images/s, the
step-time ratio against ``resnet18`` (the plain strided-conv ResNet-18), the time of the
first (warm-up / compilation) step, on CUDA the peak memory allocated by the step, and the
achieved TFLOP/s: 3 x ``hybrid_model.model_cost`` forward FLOPs per image x images/s (an
H100 peaks at ~800 dense bf16 TFLOP/s).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_model import VARIANTS, build_model, model_cost, parse_strides
from serving.files import atomic_write_json
from training.tables import throughput_table
from training.train import parameter_groups

from .timing import time_steps


def training_step(variant: str, strides: Sequence[float], batch: int, device: torch.device, bf16: bool,
                  channels_last: bool, options: dict, compile: bool = False) -> tuple[nn.Module, Callable[[], None]]:
    """A model of ``variant`` on ``device`` and one fwd+bwd+SGD step of it on a fixed random
    CIFAR-sized batch (bf16 autocast, channels-last as asked): ``(model, step)``."""
    torch.manual_seed(0)
    model = build_model(variant, tuple(strides), 10, **options).to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(parameter_groups(model, lr=0.01, stride_lr=0.01, weight_decay=5e-4), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    forward = torch.compile(model) if compile else model

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def bench_variant(variant: str, strides: tuple[float, ...], batch: int, steps: int, warmup: int,
                  device: torch.device, bf16: bool, channels_last: bool, options: dict, compile: bool = False) -> dict:
    """Median seconds per training step of one variant on random CIFAR-sized input."""
    if compile:
        torch._dynamo.reset()  # every variant compiles from scratch (fair first-step times)
    flops = model_cost(build_model(variant, strides, 10, **options))["flops"]  # forward, one image, initial strides
    _, step = training_step(variant, strides, batch, device, bf16, channels_last, options, compile)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first, times = time_steps(step, device, steps, warmup)
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    # A training step is ~3 forward passes of FLOPs (forward + backward for inputs and weights).
    return {"variant": variant, "step_s": median, "images_per_s": batch / median, "times_s": times,
            "warmup_s": first, "compiled": compile, "peak_memory_bytes": peak, "forward_flops_per_image": flops,
            "achieved_tflops": 3 * flops * batch / median / 1e12}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants (resnet18 first gives the ratio)")
    p.add_argument("--strides", default="1,1,2,2,2")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 1 with --compile)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model (the warm-up column then "
                   "includes compilation)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    p.add_argument("--smoothness", type=float, default=None, help="DiffStride R (model default 4)")
    p.add_argument("--width", type=int, default=None, help="channels of the first stage (model default 64, ResNet-18)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; expected some of {list(VARIANTS)}")
    if args.steps < 1 or args.batch < 1 or args.warmup < 0:
        p.error("--steps and --batch must be >= 1, --warmup >= 0")
    if args.compile and args.warmup < 1:
        p.error("--compile needs --warmup >= 1 (the first step compiles)")
    if args.width is not None and args.width < 1:
        p.error(f"--width must be a positive integer, got {args.width}")
    try:
        strides = parse_strides(args.strides)
    except ValueError as error:
        p.error(f"argument --strides: {error}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    options = {key: value for key, value in (("smoothness", args.smoothness), ("width", args.width)) if value is not None}
    name = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch}; strides {args.strides}; "
          f"{'bf16 autocast + channels-last' if cuda else 'fp32'}{', torch.compile' if args.compile else ''}; median of {args.steps} steps after {args.warmup} warm-up",
          flush=True)
    results = []
    for variant in variants:
        result = bench_variant(variant, strides, args.batch, args.steps, args.warmup, device, cuda, cuda, options,
                               compile=args.compile)
        results.append(result)
        print(f"  {variant}: {result['step_s']:.3f} s/step, {result['images_per_s']:.1f} img/s", file=sys.stderr, flush=True)
        if args.json:  # after every variant: a run stopped at a time limit keeps what it measured
            atomic_write_json(args.json, {
                "device": name, "torch": torch.__version__, "batch": args.batch, "strides": strides,
                "steps": args.steps, "warmup": args.warmup, "compile": args.compile, "options": options, "results": results,
                "command": ["python", "-m", "benchmarks.train_throughput", *(argv if argv is not None else sys.argv[1:])],
            })
    print(throughput_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
