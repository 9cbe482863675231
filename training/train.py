"""Train one CIFAR model: ``python -m training.train --variant hybrid --epochs 200 --out runs/x``.

SGD (momentum 0.9, optional Nesterov) with weight decay on the weights and the learnable
DiffStride strides in their own parameter group (no weight decay, own learning rate);
the paper's piecewise schedule or a short one-cycle schedule with label smoothing; bf16
autocast and channels-last on CUDA; optional ``torch.compile``; DDP under ``torchrun``.

Every epoch, rank 0 atomically writes ``OUT/NAME.safetensors`` (weights), ``OUT/NAME.json``
(the model card) and ``OUT/NAME.state.pt`` (resume state). ``--resume`` continues from the
last finished epoch and reproduces an uninterrupted run with the same seed exactly: the
batches depend only on ``(seed, epoch)`` and every RNG/optimizer/scheduler state is saved.

Every setting is a field of :class:`training.config.TrainConfig` (the flags are generated
from it). :func:`train` runs one config: :func:`_setup` (devices, data, model, optimiser),
:func:`_resume` (saved state), :func:`_train_epoch`, :func:`evaluate` and :func:`_save`;
:class:`Callbacks` lets a caller (a tool, a test) observe the steps and the trained model.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hybrid_model import DiffStride2d, build_model, learned_strides, stride_parameters
from hybrid_model.introspect import describe_head, layer_transforms
from serving.cards import RunCard
from serving.files import atomic_write_json

from . import checkpoint as ckpt
from .config import (  # noqa: F401  (build_parser/parse_args/... re-exported: the CLI's public names)
    PIECEWISE_FACTORS,
    RESUME_KEYS,
    TrainConfig,
    build_parser,
    model_options,
    parse_args,
    parse_strides,
    run_name,
)
from .data import CIFAR_MEAN_STD, NUM_CLASSES, CifarData, GpuLoader, load_cifar

__all__ = [
    "Callbacks", "TrainConfig", "build_optimizer", "build_parser", "evaluate", "evaluate_flip", "lr_lambda", "main",
    "model_options", "parameter_groups", "weight_parameters", "param_checksum", "parse_args", "parse_strides", "run_name", "train", "train_step",
]


class CliError(Exception):
    """A user error found after parsing (reported through ``parser.error``)."""


@dataclass
class Callbacks:
    """Observers of a run: the public seam for tools and tests (the command line passes none).

    ``on_step(step, rank)`` runs after every optimiser step (``step``: global steps so far);
    ``on_end(model, rank)`` after the last epoch run by this invocation, on every rank,
    with the trained (bare) model.
    """

    on_step: Callable[[int, int], None] | None = None
    on_end: Callable[[nn.Module, int], None] | None = None


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------
def lr_lambda(schedule: str, total_steps: int, steps_per_epoch: int, milestones: Sequence[float] | None,
              warmup: float) -> Callable[[int], float]:
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


def parameter_groups(model: nn.Module, lr: float, stride_lr: float, weight_decay: float,
                     decay_norm_bias: bool = True) -> list[dict[str, Any]]:
    """SGD groups: the weights (``weight_decay``); with ``decay_norm_bias=False`` the
    BatchNorm scales/shifts and biases (every parameter of fewer than two dimensions that
    is not a stride) in their own group without weight decay; then the DiffStride strides,
    if any, with their own learning rate and no weight decay."""
    strides = stride_parameters(model)
    stride_ids = {id(p) for p in strides}
    weights = [p for p in model.parameters() if id(p) not in stride_ids]
    if decay_norm_bias:
        groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay, "name": "weights"}]
    else:
        groups = [{"params": [p for p in weights if p.dim() > 1], "lr": lr, "weight_decay": weight_decay, "name": "weights"},
                  {"params": [p for p in weights if p.dim() <= 1], "lr": lr, "weight_decay": 0.0, "name": "norm_bias"}]
    if strides:
        groups.append({"params": strides, "lr": stride_lr, "weight_decay": 0.0, "name": "strides"})
    return groups


def _group(optimizer: torch.optim.Optimizer, name: str) -> dict[str, Any] | None:
    """The parameter group called ``name`` (:func:`parameter_groups`), or ``None``."""
    return next((g for g in optimizer.param_groups if g.get("name") == name), None)


def weight_parameters(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """Every parameter but the strides: what ``--grad-clip`` clips and its norm measures."""
    return [p for g in optimizer.param_groups if g.get("name") != "strides" for p in g["params"]]


def _diffstride_layers(model: nn.Module) -> list[nn.Module]:
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


def build_optimizer(model: nn.Module, args: TrainConfig,
                    steps_per_epoch: int) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over :func:`parameter_groups` and the per-step ``LambdaLR`` of ``args.schedule``
    for a run of ``args.epochs`` epochs of ``steps_per_epoch`` steps."""
    groups = parameter_groups(model, args.lr, args.stride_lr, args.weight_decay, args.decay_norm_bias)
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov and args.momentum > 0)
    schedule = lr_lambda(args.schedule, steps_per_epoch * args.epochs, steps_per_epoch, args.milestones, args.warmup)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train_step(model: nn.Module, train_model: nn.Module, x: Tensor, y: Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, args: TrainConfig,
               autocast: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """One optimiser step (forward, loss, backward, clipping, SGD, stride constraint, lr
    schedule); ``model`` is the bare module, ``train_model`` what runs it (DDP/compiled).
    Returns the task loss, the logits (for the caller's running statistics) and the
    weights' global gradient norm before clipping (measured with or without ``--grad-clip``:
    whether a clip binds is part of a protocol's evidence)."""
    with torch.autocast(**autocast):
        logits = train_model(x)
        loss = criterion(logits.float(), y)
    total = loss
    if args.resolution_penalty and _group(optimizer, "strides") is not None:
        total = loss + args.resolution_penalty * resolution_penalty(model).to(loss.device)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    # Weights only: the strides have their own (small) learning rate.
    weights = weight_parameters(optimizer)
    if args.grad_clip:
        grad_norm = torch.nn.utils.clip_grad_norm_(weights, args.grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in weights if p.grad is not None])
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


def evaluate_flip(model: nn.Module, loader: GpuLoader, autocast: dict[str, Any]) -> float:
    """Accuracy with flip test-time augmentation: the mean of the softmax of each image and
    of its mirror image (summed over ranks). Reported beside :func:`evaluate`'s accuracy."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=loader.device)  # correct, count
    with torch.no_grad(), torch.autocast(**autocast):
        for x, y in loader.batches(0):
            probs = model(x).float().softmax(1) + model(torch.flip(x, dims=(3,))).float().softmax(1)
            sums[0] += (probs.argmax(1) == y).sum()
            sums[1] += len(y)
    sums = _all_reduce_sum(sums).tolist()
    return sums[0] / max(sums[1], 1)


# --------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------
@dataclass
class _Run:
    """Everything one invocation trains with (built by :func:`_setup`)."""

    config: TrainConfig
    rank: int
    world_size: int
    device: torch.device
    precision: str
    autocast: dict[str, Any]
    data: CifarData
    model: nn.Module  # the bare module (what is saved)
    train_model: nn.Module  # what runs the steps (DDP / compiled wrapper of ``model``)
    train_loader: GpuLoader
    test_loader: GpuLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: nn.Module

    @property
    def has_strides(self) -> bool:
        return _group(self.optimizer, "strides") is not None


def _load_data(config: TrainConfig) -> CifarData:
    try:
        return load_cifar(
            config.dataset, config.data_dir, download=config.download, limit_train=config.limit_train,
            limit_test=config.limit_test, source=config.data_source,
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


def _setup(config: TrainConfig, rank: int, world_size: int, local_rank: int) -> _Run:
    """Devices and processes, data, the seeded model and its optimiser (nothing restored yet)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _select_device(config.device, local_rank, world_size)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
        # TF32 for convolutions only: the spectral layers' float32 matmuls keep full precision
        # (shared/design/spectral-layers.md).
        torch.backends.cudnn.allow_tf32 = True
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    precision = config.precision if config.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": precision == "bf16"}
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")

    data = _load_data(config)
    _seed_everything(config.seed)
    try:
        model = build_model(config.variant, tuple(config.strides), NUM_CLASSES[config.dataset], **model_options(config))
    except (ValueError, TypeError) as error:
        raise CliError(f"cannot build {config.variant}: {error}") from None
    model.to(device)
    _check_model(model, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    try:
        train_loader = GpuLoader(
            data.x_train, data.y_train, config.batch_size, train=True, device=device, dataset=config.dataset,
            seed=config.seed, pad=config.pad, pad_mode=config.pad_mode, flip=config.flip, rank=rank,
            world_size=world_size, channels_last=channels_last,
        )
        eval_batch = config.eval_batch_size or 2 * config.batch_size
        eval_batch -= eval_batch % world_size
        test_loader = GpuLoader(
            data.x_test, data.y_test, max(eval_batch, world_size), train=False, device=device, dataset=config.dataset,
            rank=rank, world_size=world_size, channels_last=channels_last,
        )
    except ValueError as error:
        raise CliError(str(error)) from None

    # Weights (weight decay) and strides (own lr, no decay).
    optimizer, scheduler = build_optimizer(model, config, len(train_loader))
    return _Run(config, rank, world_size, device, precision, autocast, data, model, model, train_loader, test_loader,
                optimizer, scheduler, nn.CrossEntropyLoss(label_smoothing=config.label_smoothing))


def _wrap(run: _Run) -> None:
    """DDP and ``torch.compile`` around the bare model (after any state is restored into it)."""
    if run.world_size > 1:
        run.train_model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.config.compile:
        run.train_model = torch.compile(run.train_model)


# --------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------
_FINISHED: dict = {"finished": True}  # _saved_state: the run is already finished with these settings


def _saved_state(config: TrainConfig, paths: ckpt.RunPaths, card_config: dict[str, Any], rank: int) -> dict | None:
    """What to do with existing files, decided before any heavy work: the resume state to
    continue from, ``None`` to start afresh, or :data:`_FINISHED` (nothing to do)."""
    if paths.exists() and not (config.resume or config.overwrite):
        raise CliError(f"{paths.out_dir / config.name}.* exists: pass --resume to continue it or --overwrite to start again")
    if config.resume and paths.state.exists():
        state = torch.load(paths.state, map_location="cpu", weights_only=False)
        saved = state["config"]
        mismatched = [k for k in RESUME_KEYS if saved.get(k) != card_config.get(k)]
        if mismatched:
            diffs = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {card_config.get(k)!r}" for k in mismatched)
            raise CliError(f"cannot resume {config.name}: settings differ ({diffs})")
        return state
    if config.resume and paths.card.exists():
        card = ckpt.load_card(paths.card)
        if card.is_finished:
            if card.config != card_config:
                raise CliError(f"{config.name} already finished with other settings; use --overwrite or another --name")
            if rank == 0:
                print(f"{config.name}: already finished ({card.epochs} epochs, test_acc={card.test_acc:.4f})")
            return _FINISHED
        raise CliError(f"cannot resume {config.name}: {paths.state.name} is missing (card at epoch {card.epoch}); use --overwrite")
    if config.overwrite and rank == 0:
        # A stale state file must never be picked up by a later --resume of the new run.
        for path in (paths.state, paths.card, paths.weights):
            path.unlink(missing_ok=True)
    return None


def _resume(run: _Run, state: dict | None) -> tuple[list[dict], int, str]:
    """Restore model, optimiser, scheduler and RNG states: ``(history, start epoch, created)``."""
    if state is None:
        return [], 0, datetime.now(UTC).isoformat(timespec="seconds")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    if run.rank == 0:
        print(f"{run.config.name}: resuming after epoch {state['epoch']}/{run.config.epochs}")
    return state["history"], state["epoch"], state["created"]


# --------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------
def _train_epoch(run: _Run, epoch: int, step: int, callbacks: Callbacks) -> tuple[dict[str, Any], int]:
    """Train one epoch and evaluate: ``(history record, global step after it)``."""
    config, model, device = run.config, run.model, run.device
    steps_per_epoch = len(run.train_loader)
    run.train_model.train()
    t0 = time.perf_counter()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss*n, correct, n
    norms = torch.zeros(3, dtype=torch.float64, device=device)  # sum of gradient norms, steps clipped, steps
    max_norm = torch.zeros((), dtype=torch.float64, device=device)
    progress = None
    if run.rank == 0 and config.progress:
        progress = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, dynamic_ncols=True)
    for x, y in run.train_loader.batches(epoch):
        loss, logits, grad_norm = train_step(model, run.train_model, x, y, run.criterion, run.optimizer, run.scheduler,
                                             config, run.autocast)
        step += 1
        with torch.no_grad():  # running sums on the device: no synchronisation per step
            sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                 torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
            norm = grad_norm.detach().double().to(device)
            clipped = (norm > config.grad_clip).double() if config.grad_clip else torch.zeros_like(norm)
            norms += torch.stack([norm, clipped, torch.ones_like(norm)])
            torch.maximum(max_norm, norm, out=max_norm)
        if progress is not None:
            progress.update(1)
            if progress.n % 10 == 1 or progress.n == steps_per_epoch:
                seen = float(sums[2]) * run.world_size
                progress.set_postfix_str(
                    f"loss={float(sums[0] / sums[2]):.3f} acc={float(sums[1] / sums[2]):.3f} "
                    f"img/s={seen / (time.perf_counter() - t0):.0f}"
                    + (f" strides={_strides_text(learned_strides(model))}" if run.has_strides else "")
                )
        if callbacks.on_step is not None:
            callbacks.on_step(step, run.rank)
    if progress is not None:
        progress.close()
    sums = _all_reduce_sum(sums).tolist()
    norms = norms.tolist()  # the same on every rank (DDP averages the gradients before the norm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - t0
    _sync_buffers(model, run.world_size)
    test_loss, test_acc = evaluate(model, run.test_loader, run.autocast)
    # Flip test-time augmentation: an extra column at the last epoch, never the primary number.
    test_acc_flip = evaluate_flip(model, run.test_loader, run.autocast) if epoch + 1 == config.epochs else None
    record = {
        "epoch": epoch + 1,
        "train_loss": sums[0] / sums[2],
        "train_acc": sums[1] / sums[2],
        "test_loss": test_loss,
        "test_acc": test_acc,
        "test_acc_flip": test_acc_flip,
        "strides": learned_strides(model),
        "lr": run.optimizer.param_groups[0]["lr"],
        "stride_lr": _group(run.optimizer, "strides")["lr"] if run.has_strides else None,
        # The weights' global gradient norm before clipping: its mean and maximum over the
        # epoch's steps, and the fraction of steps --grad-clip shortened (0 without a clip).
        "grad_norm_mean": norms[0] / max(norms[2], 1),
        "grad_norm_max": float(max_norm),
        "clipped_fraction": norms[1] / max(norms[2], 1),
        "images_per_s": sums[2] / train_seconds,
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - t0,
    }
    if run.rank == 0:
        print(f"epoch {epoch + 1}/{config.epochs} train_loss={record['train_loss']:.4f} train_acc={record['train_acc']:.4f} "
              f"test_loss={test_loss:.4f} test_acc={test_acc:.4f} {record['images_per_s']:.0f} img/s "
              f"{record['seconds']:.1f}s grad_norm={record['grad_norm_mean']:.2f} (max {record['grad_norm_max']:.1f}, "
              f"{record['clipped_fraction']:.0%} clipped)"
              + (f" flip_tta={test_acc_flip:.4f}" if test_acc_flip is not None else "")
              + (f" strides={_strides_text(record['strides'])}" if run.has_strides else ""),
              flush=True)
    return record, step


# --------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------
def _hardware(device: torch.device) -> str:
    """What trained the model, for the card: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _card(run: _Run, card_config: dict, history: list, epoch: int, created: str, argv: Sequence[str]) -> RunCard:
    config, model, data = run.config, run.model, run.data
    seconds = [h["seconds"] for h in history]
    mean, std = CIFAR_MEAN_STD[config.dataset]
    return RunCard(
        name=config.name,
        variant=config.variant,
        dataset=config.dataset,
        num_classes=NUM_CLASSES[config.dataset],
        class_names=list(data.classes),
        strides=card_config["strides"],
        options=card_config["options"],
        learned_strides=learned_strides(model),
        # Which transform each spectral layer used, and what the head does to the classifier.
        transforms=layer_transforms(model),
        head=describe_head(model),
        epoch=epoch,
        epochs=config.epochs,
        test_acc=history[-1]["test_acc"] if history else None,
        test_loss=history[-1]["test_loss"] if history else None,
        history=history,
        data=data.describe() | {"exact": data.exact},
        normalize={"mean": list(mean), "std": list(std)},
        input_size=[3, 32, 32],
        config=card_config,
        command=["python", "-m", "training.train", *argv],
        code_version=ckpt.code_version(),
        seed=config.seed,
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        # Hardware and wall-clock (per epoch = training + evaluation; total = sum over epochs run).
        hardware=_hardware(next(model.parameters()).device),
        torch=torch.__version__,
        seconds_per_epoch=sum(seconds) / len(seconds) if seconds else None,
        train_wall_seconds=sum(seconds),
        created=created,
        updated=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _save(paths: ckpt.RunPaths, run: _Run, card_config: dict, history: list, epoch: int, created: str,
          argv: Sequence[str]) -> None:
    """Rank 0, after each epoch: resume state first (the truth for --resume), then weights and card."""
    ckpt.save_torch(paths.state, {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": _rng_state(),
        "epoch": epoch,
        "history": history,
        "config": card_config,
        "created": created,
    })
    ckpt.save_safetensors(paths.weights, run.model.state_dict(),
                          metadata={"name": run.config.name, "variant": run.config.variant, "epoch": str(epoch)})
    atomic_write_json(paths.card, _card(run, card_config, history, epoch, created, argv).to_dict())


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None, callbacks: Callbacks | None = None) -> int:
    """``python -m training.train``: parse ``argv``, train; user errors exit 2 with one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, config = parse_args(argv)
    try:
        with stop_on_sigterm():
            return train(config, argv, callbacks)
    except CliError as error:
        parser.error(str(error).replace("\n", " "))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (a scheduler's stop): finished epochs are on disk
        if _dist_env()[0] == 0:
            print(f"{config.name}: interrupted; {_resume_hint(config)}", file=sys.stderr, flush=True)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 2


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM (a scheduler's or supervisor's stop) raises
    ``KeyboardInterrupt`` as Ctrl-C does, so a command can say where it stopped instead of
    dying silently. The previous handler comes back after it (``main`` may run in-process)."""
    if threading.current_thread() is not threading.main_thread():  # only it receives signals
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_hint(config: TrainConfig) -> str:
    """What an interrupted run left: the last finished epoch and how to continue it."""
    paths = ckpt.RunPaths(config.out, config.name)
    if not paths.state.exists():
        return "no epoch had finished, so nothing was saved"
    try:
        epoch = f"epoch {ckpt.load_card(paths.card).epoch}/{config.epochs}"
    except ckpt.CheckpointError:
        epoch = "the last finished epoch"
    return f"{epoch} is saved in {paths.out_dir}: continue it with --resume"


def train(config: TrainConfig, argv: Sequence[str] = (), callbacks: Callbacks | None = None) -> int:
    """Train ``config`` (resolved: :meth:`TrainConfig.resolved`); ``argv`` is recorded in the
    card's ``command``. Raises :class:`CliError` for user errors. Returns 0."""
    callbacks = callbacks or Callbacks()
    budget = TimeBudget(config.max_seconds)  # --max-seconds counts the whole invocation
    rank, world_size, local_rank = _dist_env()
    paths = ckpt.RunPaths(config.out, config.name)
    card_config = config.card_config()

    state = _saved_state(config, paths, card_config, rank)
    if state is _FINISHED:
        return 0
    run = _setup(config, rank, world_size, local_rank)
    history, start_epoch, created = _resume(run, state)
    _wrap(run)
    steps_per_epoch = len(run.train_loader)
    if rank == 0 and start_epoch == 0:
        print(f"{config.name}: {run.data.source}, {run.data.n_train} train / {run.data.n_test} test images; "
              f"{steps_per_epoch} steps/epoch x {config.epochs} epochs on {run.device} ({run.precision}, world size {world_size})")

    step = start_epoch * steps_per_epoch
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        record, step = _train_epoch(run, epoch, step, callbacks)
        history.append(record)
        if rank == 0:
            _save(paths, run, card_config, history, epoch + 1, created, argv)
        if world_size > 1:
            dist.barrier()  # nobody runs ahead of rank 0's checkpoint
        if epoch + 1 < config.epochs and budget.next_epoch_overruns(record["seconds"], run.device):
            stopped_early = True
            if rank == 0:
                print(f"{config.name}: stopping after epoch {epoch + 1}/{config.epochs}: another epoch "
                      f"(~{record['seconds']:.0f} s) would pass --max-seconds {config.max_seconds:g} "
                      f"({budget.elapsed():.0f} s used); continue with --resume", flush=True)
            break

    if rank == 0 and not config.keep_state and not stopped_early:
        paths.state.unlink(missing_ok=True)
    if callbacks.on_end is not None:
        callbacks.on_end(run.model, rank)
    if rank == 0 and history and not stopped_early:
        print(f"{config.name}: done, test_acc={history[-1]['test_acc']:.4f} -> {paths.weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
