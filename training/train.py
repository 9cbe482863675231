"""Train one CIFAR model: ``python -m training.train --variant hybrid --epochs 200 --out runs/x``.

SGD (momentum 0.9, optional Nesterov) with weight decay on the weights and the learnable
DiffStride strides in their own parameter group (no weight decay, own learning rate);
the paper's piecewise schedule or a short one-cycle schedule with label smoothing; bf16
autocast and channels-last on CUDA; optional ``torch.compile``; DDP under ``torchrun``.

Every epoch, rank 0 atomically writes ``OUT/NAME.safetensors`` (weights), ``OUT/NAME.json``
(the model card) and ``OUT/NAME.state.pt`` (resume state). ``--resume`` continues from the
last finished epoch and reproduces an uninterrupted run with the same seed exactly: the
batches depend only on ``(seed, epoch)`` and every RNG/optimizer/scheduler state is saved.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import hybrid_model

from . import checkpoint as ckpt
from .data import CIFAR_MEAN_STD, DATASETS, NUM_CLASSES, SOURCES, CifarData, GpuLoader, load_cifar

__all__ = [
    "build_optimizer", "build_parser", "main", "parse_args", "parameter_groups", "parse_strides", "run_name", "lr_lambda",
    "train_step",
]

VARIANTS: tuple[str, ...] = tuple(hybrid_model.VARIANTS)  # resnet18, spectral, diffstride, hybrid, diffstride2
SCHEDULES = ("piecewise", "onecycle")
#: Piecewise schedule: lr multipliers after 0, 1, 2, 3 milestones (0.1 -> 0.01 -> 0.001 -> 0.0001).
PIECEWISE_FACTORS = (1.0, 0.1, 0.01, 0.001)
DEFAULT_MILESTONE_FRACTIONS = (0.5, 0.75, 0.9)
#: Training hyper-parameters that must match for --resume to continue a run.
RESUME_KEYS = (
    "variant", "dataset", "strides", "options", "epochs", "batch_size", "lr", "stride_lr", "momentum",
    "nesterov", "weight_decay", "schedule", "milestones", "warmup", "label_smoothing", "resolution_penalty", "grad_clip",
    "limit_train", "limit_test", "seed", "pad", "pad_mode", "flip", "data_source",
)
#: Default --grad-clip. Measured (training.stability, docs/training.md "Stability"): at the paper's
#: lr 0.1 from step 0, no clipping lets the hybrid's loss reach 46 in 16 steps (test loss 1e5) and
#: even resnet18's reach 9; a norm of 1 keeps all of them below 2.6, 2 leaves the hybrid at 3.6.
DEFAULT_GRAD_CLIP = 1.0
STALL_ENV = "HYBRID_TRAIN_STALL_AT_STEP"  # test hook: rank 0 stalls after this global step


class CliError(Exception):
    """A user error found after parsing (reported through ``parser.error``)."""


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def parse_strides(text: str) -> tuple[float, ...]:
    """``"1,1,2,2,2"`` -> ``(1.0, 1.0, 2.0, 2.0, 2.0)``: exactly 5 finite numbers >= 1."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"strides must be 5 comma-separated numbers like 1,1,2,2,2, got {text!r}") from None
    if len(values) != 5:
        raise argparse.ArgumentTypeError(f"strides must be 5 comma-separated numbers (stem,stage1..stage4), got {len(values)} in {text!r}")
    if not all(math.isfinite(v) and 1 <= v < 64 for v in values):
        raise argparse.ArgumentTypeError(f"every stride must be a number in [1, 64), got {text!r}")
    return values


def _number_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def _number_arg(cast: type, description: str, accept: Callable[[float], bool]) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses one finite number and checks it with ``accept``."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    parse.__name__ = description  # argparse names the type in its messages
    return parse


_positive_int = _number_arg(int, "a positive integer", lambda v: v > 0)
_positive_float = _number_arg(float, "a positive number", lambda v: v > 0)
_nonneg_float = _number_arg(float, "a finite number >= 0", lambda v: v >= 0)


def _stride_token(value: float) -> str:
    text = f"{value:g}"
    return text.replace(".", "p")  # no dots in file names (NAME.json / NAME.state.pt)


def run_name(variant: str, dataset: str, strides: Sequence[float], seed: int) -> str:
    """Default run name, e.g. ``hybrid_cifar10_s11222_seed0`` (``1.5`` is written ``1p5``)."""
    return f"{variant}_{dataset}_s{''.join(_stride_token(s) for s in strides)}_seed{seed}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a CIFAR ResNet-18 variant (strided conv, spectral pooling, DiffStride, hybrid).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument("--variant", required=True, choices=VARIANTS, help="model variant")
    g.add_argument("--strides", type=parse_strides, default=parse_strides("1,1,2,2,2"),
                   help="stride 5-tuple stem,stage1,stage2,stage3,stage4 (DiffStride: initial values)")
    g.add_argument("--smoothness", type=_nonneg_float, default=None, help="DiffStride ramp width R (model default 4)")
    g.add_argument("--block", choices=("post", "pre"), default=None, help="residual block (model default post)")
    g.add_argument("--head-stride", type=float, default=None, help="stride of the hybrid/diffstride2 head layer (model default 2)")
    g.add_argument("--spectral-transform", choices=("fourier", "hartley"), default=None,
                   help="transform of the body's fixed spectral pooling (variant spectral; model default fourier)")
    g.add_argument("--head-transform", choices=("fourier", "hartley"), default=None,
                   help="transform of the spectral head (hybrid, diffstride_scaled; model default hartley, Algorithm 1)")
    g.add_argument("--shared-stride", action="store_true", default=None, help="one learnable stride per DiffStride layer for both axes")
    g.add_argument("--name", default=None, help="run name (default VARIANT_DATASET_sSTRIDES_seedSEED)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="cifar10")
    g.add_argument("--data-dir", default=None, help="data directory (default: $HYBRID_DATA_DIR, ../shared/data, ./data)")
    g.add_argument("--data-source", choices=SOURCES, default="auto", help="which copy to read")
    g.add_argument("--download", action="store_true", help="let torchvision download the official archive")
    g.add_argument("--limit-train", type=_positive_int, default=None, help="use the first N training images")
    g.add_argument("--limit-test", type=_positive_int, default=None, help="use the first N test images")
    g.add_argument("--pad", type=int, default=4, help="random-crop padding in pixels (0: no crop)")
    g.add_argument("--pad-mode", choices=("reflect", "zeros"), default="reflect")
    g.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=200)
    g.add_argument("--batch-size", type=_positive_int, default=128, help="global batch size (split over DDP ranks)")
    g.add_argument("--lr", type=_nonneg_float, default=0.1, help="peak learning rate of the weights")
    g.add_argument("--stride-lr", type=_nonneg_float, default=None, help="learning rate of the DiffStride strides (default: --lr)")
    g.add_argument("--momentum", type=_nonneg_float, default=0.9)
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--weight-decay", type=_nonneg_float, default=5e-4, help="on the weights (never on the strides)")
    g.add_argument("--schedule", choices=SCHEDULES, default="piecewise",
                   help="piecewise: lr x1, x0.1, x0.01, x0.001 at the milestones; onecycle: linear warm-up then linear decay to 0")
    g.add_argument("--milestones", type=_number_list, default=None,
                   help="piecewise boundaries in epochs, e.g. 100,150,180 (default: 50%%,75%%,90%% of --epochs)")
    g.add_argument("--warmup", type=_nonneg_float, default=None,
                   help="warm-up length in epochs (default: 0 for piecewise, 20%% of the epochs for onecycle)")
    g.add_argument("--label-smoothing", type=_nonneg_float, default=None, help="default 0 (piecewise) / 0.2 (onecycle)")
    g.add_argument("--resolution-penalty", type=_nonneg_float, default=0.0,
                   help="weight of sum over DiffStride layers of 1/(s_h*s_w) (pushes towards larger strides)")
    g.add_argument("--grad-clip", type=_nonneg_float, default=DEFAULT_GRAD_CLIP,
                   help="clip the global gradient norm of the weights to this value (0: off, the papers' setting); "
                        "on by default so every variant trains stably from the first step (docs/training.md)")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--resume", action="store_true", help="continue NAME from its last epoch (or start it)")
    g.add_argument("--overwrite", action="store_true", help="start again even if NAME exists")
    g.add_argument("--keep-state", action="store_true", help="keep NAME.state.pt after the last epoch")
    g.add_argument("--max-seconds", type=_positive_float, default=None,
                   help="wall-clock budget of this invocation: stop at the epoch boundary where one more epoch "
                        "would end past it (the run stays resumable with --resume)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (under torchrun: the local rank's GPU)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (slower)")
    g.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    g.add_argument("--eval-batch-size", type=_positive_int, default=None, help="default 2x --batch-size")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bar")
    g.add_argument("--checksum-dir", default=None, help="debug: every rank writes rankR.json with its final parameter checksum")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse and validate; impossible combinations end in ``parser.error`` (exit 2, one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.variant == "resnet18" and not all(float(s).is_integer() for s in args.strides):
        parser.error(f"--variant resnet18 uses strided convolutions: --strides must be integers, got {args.strides}")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite are mutually exclusive")
    if not 0 <= args.pad < 32:
        parser.error(f"--pad must be in [0, 32), got {args.pad}")
    if args.label_smoothing is not None and args.label_smoothing >= 1:
        parser.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.head_stride is not None and not (math.isfinite(args.head_stride) and args.head_stride >= 1):
        parser.error(f"--head-stride must be a number >= 1, got {args.head_stride}")
    if args.milestones is not None:
        if args.schedule != "piecewise":
            parser.error("--milestones only applies to --schedule piecewise")
        if len(args.milestones) > len(PIECEWISE_FACTORS) - 1 or list(args.milestones) != sorted(args.milestones):
            parser.error(f"--milestones takes up to 3 increasing epochs, got {','.join(f'{m:g}' for m in args.milestones)}")
        if args.milestones[0] <= 0 or args.milestones[-1] > args.epochs:
            parser.error(f"--milestones must lie in (0, --epochs={args.epochs}]")
    if args.warmup is not None and args.warmup > args.epochs:
        parser.error(f"--warmup ({args.warmup:g} epochs) exceeds --epochs ({args.epochs})")
    if args.name is not None and (not args.name or any(c in args.name for c in "/\\") or args.name.startswith(".")):
        parser.error(f"--name must be a plain file name, got {args.name!r}")
    # Resolved defaults, so cards and resume checks see the values actually used.
    if args.milestones is None and args.schedule == "piecewise":
        args.milestones = tuple(round(f * args.epochs, 6) for f in DEFAULT_MILESTONE_FRACTIONS)
    if args.warmup is None:
        args.warmup = 0.0 if args.schedule == "piecewise" else round(0.2 * args.epochs, 6)
    if args.label_smoothing is None:
        args.label_smoothing = 0.0 if args.schedule == "piecewise" else 0.2
    if args.stride_lr is None:
        args.stride_lr = args.lr
    if args.name is None:
        args.name = run_name(args.variant, args.dataset, args.strides, args.seed)
    return parser, args


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``build_model`` keyword arguments given on the command line (model defaults
    otherwise), plus the head transform of a variant with a spectral head, always: a card
    must say which transform its head used even if the model default changes."""
    options = {
        "smoothness": args.smoothness,
        "block": args.block,
        "head_stride": args.head_stride,
        "spectral_transform": args.spectral_transform,
        "head_transform": args.head_transform,
        "shared_stride": args.shared_stride,
    }
    if hybrid_model.VARIANTS[args.variant][1] in ("spectral", "scale") and args.head_transform is None:
        options["head_transform"] = hybrid_model.resnet.DEFAULT_HEAD_TRANSFORM
    return {k: v for k, v in options.items() if v is not None}


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that define the result (compared on --resume, stored in the card)."""
    config = {k: getattr(args, k) for k in RESUME_KEYS if k != "options"}
    config["options"] = model_options(args)
    config["strides"] = [_as_number(s) for s in args.strides]
    config["milestones"] = None if args.milestones is None else [_as_number(m) for m in args.milestones]
    return json.loads(json.dumps(config))  # plain JSON types (tuples -> lists)


def _as_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------
def lr_lambda(schedule: str, total_steps: int, steps_per_epoch: int, milestones: Sequence[float] | None, warmup: float):
    """Per-step lr multiplier ``f(step)`` (step = optimizer steps taken so far).

    piecewise: linear warm-up over ``warmup`` epochs, then ``PIECEWISE_FACTORS[k]`` after
    ``k`` milestones (epochs, fractional allowed). onecycle: linear 0 -> 1 over ``warmup``
    epochs, then linear 1 -> 0 at the last step (airbench-style triangle).
    """
    warm = max(int(round(warmup * steps_per_epoch)), 0)
    bounds = [m * steps_per_epoch for m in (milestones or ())]

    def piecewise(step: int) -> float:
        factor = PIECEWISE_FACTORS[sum(step >= b for b in bounds)]
        return factor * min(1.0, (step + 1) / warm) if warm else factor

    def onecycle(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(total_steps - warm, 1))

    return piecewise if schedule == "piecewise" else onecycle


# --------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------
def _dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _all_reduce_sum(values: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _sync_buffers(model: nn.Module, world_size: int) -> None:
    """Average float buffers (BN running stats) over ranks, so every rank evaluates and
    saves the same model (DDP only broadcasts them at the next forward)."""
    if world_size == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world_size)


def _select_device(spec: str, local_rank: int, world_size: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {spec}: CUDA is not available on this machine")
        if world_size > 1 or device.index is None:
            device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


# --------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------
class TimeBudget:
    """``--max-seconds``: whether one more epoch, as long as the last one, still fits.

    Decided at epoch boundaries only, so a stopped run is an ordinary resumable checkpoint.
    Under DDP the slowest rank decides for all (ranks must stop at the same epoch).
    """

    def __init__(self, max_seconds: float | None) -> None:
        self.max_seconds = max_seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def next_epoch_overruns(self, epoch_seconds: float, device: torch.device) -> bool:
        if self.max_seconds is None:
            return False
        projected = torch.tensor([self.elapsed() + epoch_seconds], dtype=torch.float64, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(projected, op=dist.ReduceOp.MAX)
        return float(projected) > self.max_seconds


def parameter_groups(model: nn.Module, lr: float, stride_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """SGD groups: the weights (``weight_decay``), then the DiffStride strides, if any, with
    their own learning rate and no weight decay."""
    from hybrid_model import stride_parameters

    strides = stride_parameters(model)
    stride_ids = {id(p) for p in strides}
    groups = [{"params": [p for p in model.parameters() if id(p) not in stride_ids], "lr": lr,
               "weight_decay": weight_decay, "name": "weights"}]
    if strides:
        groups.append({"params": strides, "lr": stride_lr, "weight_decay": 0.0, "name": "strides"})
    return groups


def _diffstride_layers(model: nn.Module) -> list[nn.Module]:
    from hybrid_model import DiffStride2d

    return [m for m in model.modules() if isinstance(m, DiffStride2d)]


def resolution_penalty(model: nn.Module) -> Tensor:
    """``sum over DiffStride layers of 1 / (s_h * s_w)``: the kept fraction of each layer's input."""
    terms = [1.0 / m.stride_pair().prod() for m in _diffstride_layers(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _strides_text(strides: dict[str, list[float]]) -> str:
    return " ".join(f"{h:.2f}" if abs(h - w) < 5e-3 else f"{h:.2f}x{w:.2f}" for h, w in strides.values())


def param_checksum(model: nn.Module) -> dict[str, Any]:
    """SHA-256 of every parameter and buffer's bytes (in state_dict order) and their float sum."""
    digest, total = hashlib.sha256(), 0.0
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.view(torch.int16).numpy().tobytes())
        if value.is_floating_point():
            total += float(value.double().sum())
    return {"sha256": digest.hexdigest(), "sum": total}


def build_optimizer(model: nn.Module, args: argparse.Namespace, steps_per_epoch: int):
    """SGD over :func:`parameter_groups` and the per-step ``LambdaLR`` of ``args.schedule``
    for a run of ``args.epochs`` epochs of ``steps_per_epoch`` steps."""
    groups = parameter_groups(model, args.lr, args.stride_lr, args.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov and args.momentum > 0)
    schedule = lr_lambda(args.schedule, steps_per_epoch * args.epochs, steps_per_epoch, args.milestones, args.warmup)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train_step(model: nn.Module, train_model: nn.Module, x: Tensor, y: Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scheduler, args: argparse.Namespace,
               autocast: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor | None]:
    """One optimiser step (forward, loss, backward, clipping, SGD, stride constraint, lr
    schedule); ``model`` is the bare module, ``train_model`` what runs it (DDP/compiled).
    Returns the task loss, the logits (for the caller's running statistics) and the
    weights' gradient norm before clipping (``None`` without ``--grad-clip``)."""
    with torch.autocast(**autocast):
        logits = train_model(x)
        loss = criterion(logits.float(), y)
    total = loss
    has_strides = len(optimizer.param_groups) > 1
    if args.resolution_penalty and has_strides:
        total = loss + args.resolution_penalty * resolution_penalty(model).to(loss.device)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = None
    if args.grad_clip:
        # Weights only: the strides have their own (small) learning rate.
        grad_norm = torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], args.grad_clip)
    optimizer.step()
    for layer in _diffstride_layers(model):  # the official Keras stride constraint, after each step
        layer.constrain_()
    scheduler.step()
    return loss, logits, grad_norm


# --------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------
def evaluate(model: nn.Module, loader: GpuLoader, autocast: dict[str, Any]) -> tuple[float, float]:
    """``(mean loss, accuracy)`` over the whole split (summed over ranks)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=loader.device)  # loss, correct, count
    with torch.no_grad(), torch.autocast(**autocast):
        for x, y in loader.batches(0):
            logits = model(x).float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(y)
    sums = _all_reduce_sum(sums).tolist()
    return sums[0] / max(sums[2], 1), sums[1] / max(sums[2], 1)


def _maybe_stall(step: int, rank: int, paths: ckpt.RunPaths) -> None:
    """Test hook: with ``$HYBRID_TRAIN_STALL_AT_STEP=N``, rank 0 stops after global step N
    and waits to be killed (so a test can SIGKILL it at a known point mid-epoch)."""
    target = os.environ.get(STALL_ENV)
    if target and rank == 0 and step == int(target):
        paths.out_dir.mkdir(parents=True, exist_ok=True)
        (paths.out_dir / f"{paths.name}.stalled").write_text(str(step))
        while True:
            time.sleep(60)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def _load_data(args: argparse.Namespace) -> CifarData:
    try:
        return load_cifar(
            args.dataset, args.data_dir, download=args.download, limit_train=args.limit_train,
            limit_test=args.limit_test, source=args.data_source,
        )
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from None


def _check_model(model: nn.Module, device: torch.device) -> None:
    """One eval forward on a single image: impossible stride/smoothness combinations
    (maps smaller than the DiffStride ramp, ...) fail here, before any training."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32, device=device))
    except ValueError as error:
        raise CliError(f"the model cannot run on 32x32 images: {error}") from None
    model.train()


def _hardware(device: torch.device) -> str:
    """What trained the model, for the card: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _card(args, config, data: CifarData, model: nn.Module, history: list, epoch: int, created: str, argv) -> dict:
    from hybrid_model import learned_strides
    from hybrid_model.introspect import describe_head, layer_transforms

    seconds = [h["seconds"] for h in history]

    mean, std = CIFAR_MEAN_STD[args.dataset]
    return {
        "name": args.name,
        "variant": args.variant,
        "dataset": args.dataset,
        "num_classes": NUM_CLASSES[args.dataset],
        "class_names": list(data.classes),
        "strides": config["strides"],
        "options": config["options"],
        "learned_strides": learned_strides(model),
        # Which transform each spectral layer used, and what the head does to the classifier.
        "transforms": layer_transforms(model),
        "head": describe_head(model),
        "epoch": epoch,
        "epochs": args.epochs,
        "test_acc": history[-1]["test_acc"] if history else None,
        "test_loss": history[-1]["test_loss"] if history else None,
        "history": history,
        "data": data.describe() | {"exact": data.exact},
        "normalize": {"mean": list(mean), "std": list(std)},
        "input_size": [3, 32, 32],
        "config": config,
        "command": ["python", "-m", "training.train", *argv],
        "code_version": ckpt.code_version(),
        "seed": args.seed,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        # Hardware and wall-clock (per epoch = training + evaluation; total = sum over epochs run).
        "hardware": _hardware(next(model.parameters()).device),
        "torch": torch.__version__,
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "train_wall_seconds": sum(seconds),
        "created": created,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, args = parse_args(argv)
    try:
        return _train(args, argv)
    except CliError as error:
        parser.error(str(error).replace("\n", " "))
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 2


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    from hybrid_model import build_model, learned_strides

    budget = TimeBudget(args.max_seconds)  # --max-seconds counts the whole invocation
    rank, world_size, local_rank = _dist_env()
    paths = ckpt.RunPaths(args.out, args.name)
    config = run_config(args)

    # ---- what to do with existing files (decided before any heavy work) ----
    state = None
    if paths.exists() and not (args.resume or args.overwrite):
        raise CliError(f"{paths.out_dir / args.name}.* exists: pass --resume to continue it or --overwrite to start again")
    if args.resume and paths.state.exists():
        state = torch.load(paths.state, map_location="cpu", weights_only=False)
        mismatched = [k for k in RESUME_KEYS if state["config"].get(k) != config.get(k)]
        if mismatched:
            diffs = ", ".join(f"{k}: saved {state['config'].get(k)!r} vs now {config.get(k)!r}" for k in mismatched)
            raise CliError(f"cannot resume {args.name}: settings differ ({diffs})")
    elif args.resume and paths.card.exists():
        card = ckpt.load_card(paths.card)
        if ckpt.is_finished(card):
            if card.get("config") != config:
                raise CliError(f"{args.name} already finished with other settings; use --overwrite or another --name")
            if rank == 0:
                print(f"{args.name}: already finished ({card['epochs']} epochs, test_acc={card['test_acc']:.4f})")
            return 0
        raise CliError(f"cannot resume {args.name}: {paths.state.name} is missing (card at epoch {card.get('epoch')}); use --overwrite")

    if args.overwrite and rank == 0:
        # A stale state file must never be picked up by a later --resume of the new run.
        for path in (paths.state, paths.card, paths.weights):
            path.unlink(missing_ok=True)

    # ---- devices, processes, seeds ----
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _select_device(args.device, local_rank, world_size)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
        # TF32 for convolutions only: the spectral layers' float32 matmuls keep full precision
        # (shared/design/spectral-layers.md).
        torch.backends.cudnn.allow_tf32 = True
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": precision == "bf16"}
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda")

    data = _load_data(args)
    _seed_everything(args.seed)
    try:
        model = build_model(args.variant, tuple(args.strides), NUM_CLASSES[args.dataset], **model_options(args))
    except (ValueError, TypeError) as error:
        raise CliError(f"cannot build {args.variant}: {error}") from None
    model.to(device)
    _check_model(model, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    try:
        train_loader = GpuLoader(
            data.x_train, data.y_train, args.batch_size, train=True, device=device, dataset=args.dataset,
            seed=args.seed, pad=args.pad, pad_mode=args.pad_mode, flip=args.flip, rank=rank, world_size=world_size,
            channels_last=channels_last,
        )
        eval_batch = args.eval_batch_size or 2 * args.batch_size
        eval_batch -= eval_batch % world_size
        test_loader = GpuLoader(
            data.x_test, data.y_test, max(eval_batch, world_size), train=False, device=device, dataset=args.dataset,
            rank=rank, world_size=world_size, channels_last=channels_last,
        )
    except ValueError as error:
        raise CliError(str(error)) from None

    # ---- optimiser: weights (weight decay) and strides (own lr, no decay) ----
    steps_per_epoch = len(train_loader)
    optimizer, scheduler = build_optimizer(model, args, steps_per_epoch)

    # ---- resume ----
    history: list[dict] = []
    start_epoch = 0
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch, created = state["history"], state["epoch"], state["created"]
        _set_rng_state(state["rng"])
        if rank == 0:
            print(f"{args.name}: resuming after epoch {start_epoch}/{args.epochs}")

    train_model: nn.Module = model
    if world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    has_strides = len(optimizer.param_groups) > 1
    if rank == 0 and start_epoch == 0:
        print(f"{args.name}: {data.source}, {data.n_train} train / {data.n_test} test images; "
              f"{steps_per_epoch} steps/epoch x {args.epochs} epochs on {device} ({precision}, world size {world_size})")

    step = start_epoch * steps_per_epoch
    stopped_early = False
    for epoch in range(start_epoch, args.epochs):
        train_model.train()
        t0 = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss*n, correct, n
        progress = None
        if rank == 0 and args.progress:
            from tqdm import tqdm

            progress = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, dynamic_ncols=True)
        for x, y in train_loader.batches(epoch):
            loss, logits, _ = train_step(model, train_model, x, y, criterion, optimizer, scheduler, args, autocast)
            step += 1
            with torch.no_grad():
                sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                     torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
            if progress is not None:
                progress.update(1)
                if progress.n % 10 == 1 or progress.n == steps_per_epoch:
                    seen = float(sums[2]) * world_size
                    progress.set_postfix_str(
                        f"loss={float(sums[0] / sums[2]):.3f} acc={float(sums[1] / sums[2]):.3f} "
                        f"img/s={seen / (time.perf_counter() - t0):.0f}"
                        + (f" strides={_strides_text(learned_strides(model))}" if has_strides else "")
                    )
            _maybe_stall(step, rank, paths)
        if progress is not None:
            progress.close()
        sums = _all_reduce_sum(sums).tolist()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        _sync_buffers(model, world_size)
        test_loss, test_acc = evaluate(model, test_loader, autocast)
        record = {
            "epoch": epoch + 1,
            "train_loss": sums[0] / sums[2],
            "train_acc": sums[1] / sums[2],
            "test_loss": test_loss,
            "test_acc": test_acc,
            "strides": learned_strides(model),
            "lr": optimizer.param_groups[0]["lr"],
            "stride_lr": optimizer.param_groups[1]["lr"] if has_strides else None,
            "images_per_s": sums[2] / train_seconds,
            "train_seconds": train_seconds,
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs} train_loss={record['train_loss']:.4f} train_acc={record['train_acc']:.4f} "
                  f"test_loss={test_loss:.4f} test_acc={test_acc:.4f} {record['images_per_s']:.0f} img/s "
                  f"{record['seconds']:.1f}s" + (f" strides={_strides_text(record['strides'])}" if has_strides else ""),
                  flush=True)
            _save(paths, args, config, data, model, optimizer, scheduler, history, epoch + 1, created, argv)
        if world_size > 1:
            dist.barrier()  # nobody runs ahead of rank 0's checkpoint
        if epoch + 1 < args.epochs and budget.next_epoch_overruns(record["seconds"], device):
            stopped_early = True
            if rank == 0:
                print(f"{args.name}: stopping after epoch {epoch + 1}/{args.epochs}: another epoch "
                      f"(~{record['seconds']:.0f} s) would pass --max-seconds {args.max_seconds:g} "
                      f"({budget.elapsed():.0f} s used); continue with --resume", flush=True)
            break

    if rank == 0 and not args.keep_state and not stopped_early:
        paths.state.unlink(missing_ok=True)
    if args.checksum_dir:
        out = Path(args.checksum_dir)
        out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(out / f"rank{rank}.json", param_checksum(model) | {"rank": rank, "world_size": world_size})
    if rank == 0 and history and not stopped_early:
        print(f"{args.name}: done, test_acc={history[-1]['test_acc']:.4f} -> {paths.weights}")
    return 0


def _save(paths, args, config, data, model, optimizer, scheduler, history, epoch, created, argv) -> None:
    """Rank 0, after each epoch: resume state first (the truth for --resume), then weights and card."""
    ckpt.save_torch(paths.state, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "epoch": epoch,
        "history": history,
        "config": config,
        "created": created,
    })
    ckpt.save_safetensors(paths.weights, model.state_dict(),
                          metadata={"name": args.name, "variant": args.variant, "epoch": str(epoch)})
    ckpt.atomic_write_json(paths.card, _card(args, config, data, model, history, epoch, created, argv))


if __name__ == "__main__":
    sys.exit(main())
