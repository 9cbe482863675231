"""The training configuration: one typed dataclass, the single source of every setting.

Like airbench's one hyper-parameter dict, :class:`TrainConfig` lists every setting of a run
once, with its type, default, help text and *role*; everything else is derived from it:

* the command line (:func:`build_parser`: one flag per field, grouped as in ``--help``);
* the card's ``config`` and the ``--resume`` check (:meth:`TrainConfig.card_config`: the
  fields whose role is ``"result"``, plus the model ``options``);
* the model's ``build_model`` keyword arguments (:func:`model_options`: role ``"model"``);
* the sweep's flags (:data:`FLAGS`, which ``training.sweep.flag_args`` checks its JSON against).

Roles: ``"result"`` settings define what is learned (a resumed run must match them);
``"model"`` settings are ``build_model`` options (stored in the card's ``options``, so they
are compared too); ``"run"`` settings only say where and how the run executes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hybrid_model
from serving.cli import DefaultsHelpFormatter

from .data import DATASETS, SOURCES

__all__ = [
    "DEFAULT_GRAD_CLIP", "FLAGS", "RESUME_KEYS", "SCHEDULES", "VARIANTS", "ConfigError", "TrainConfig", "build_parser",
    "model_options", "parse_args", "parse_strides", "run_name",
]

VARIANTS: tuple[str, ...] = tuple(hybrid_model.VARIANTS)  # resnet18, spectral, diffstride, hybrid, diffstride2, ...
SCHEDULES = ("piecewise", "onecycle")
#: Piecewise schedule: lr multipliers after 0, 1, 2, 3 milestones (0.1 -> 0.01 -> 0.001 -> 0.0001).
PIECEWISE_FACTORS = (1.0, 0.1, 0.01, 0.001)
DEFAULT_MILESTONE_FRACTIONS = (0.5, 0.75, 0.9)
#: Default --grad-clip. Measured (training.stability, docs/training.md "Stability"): at the paper's
#: lr 0.1 from step 0, no clipping lets the hybrid's loss reach 46 in 16 steps (test loss 1e5) and
#: even resnet18's reach 9; a norm of 1 keeps all of them below 2.6, 2 leaves the hybrid at 3.6.
DEFAULT_GRAD_CLIP = 1.0
_DEFAULT_STRIDES = (1.0, 1.0, 2.0, 2.0, 2.0)


class ConfigError(ValueError):
    """An impossible combination of settings (one sentence; the CLI reports it via ``parser.error``)."""


# --------------------------------------------------------------------------------------
# Value parsers (argparse ``type=``; they also document the accepted values)
# --------------------------------------------------------------------------------------
def parse_strides(text: str) -> tuple[float, ...]:
    """``"1,1,2,2,2"`` -> ``(1.0, 1.0, 2.0, 2.0, 2.0)``: :func:`hybrid_model.parse_strides`
    (the model's one stride validator), its error in argparse's type."""
    try:
        return hybrid_model.parse_strides(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


# --------------------------------------------------------------------------------------
# The dataclass
# --------------------------------------------------------------------------------------
def _setting(default: Any, group: str, role: str, help: str | None = None, *, parse: Callable[[str], Any] | None = None,
             choices: Sequence[str] | None = None, flag: str | None = None) -> Any:
    """A field of :class:`TrainConfig` with what its flag needs. A bool field becomes a switch:
    ``--NAME`` (store_true) when it defaults to False/None, ``--no-NAME`` (store_false) when True."""
    meta = {"group": group, "role": role, "help": help, "parse": parse, "choices": choices, "flag": flag}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


_REQUIRED = dataclasses.MISSING


@dataclass(kw_only=True)
class TrainConfig:
    """Every setting of one training run (``python -m training.train --help`` lists them).

    The field order is the card's ``config`` order (result settings, then ``options``) and,
    within each ``--help`` group, the order of the flags.
    """

    # ---- the result: what is trained, on what, how (compared on --resume, stored in the card) ----
    variant: str = _setting(_REQUIRED, "model", "result", "model variant", choices=VARIANTS)
    dataset: str = _setting("cifar10", "data", "result", None, choices=DATASETS)
    strides: tuple[float, ...] = _setting(_DEFAULT_STRIDES, "model", "result",
                                          "stride 5-tuple stem,stage1,stage2,stage3,stage4 (DiffStride: initial values)",
                                          parse=parse_strides)
    # ---- build_model options (None: the model's default; stored in the card's "options") ----
    smoothness: float | None = _setting(None, "model", "model", "DiffStride ramp width R (model default 4)", parse=_nonneg_float)
    block: str | None = _setting(None, "model", "model", "residual block (model default post)", choices=("post", "pre"))
    head_stride: float | None = _setting(None, "model", "model", "stride of the hybrid/diffstride2 head layer (model default 2)",
                                         parse=float)
    spectral_transform: str | None = _setting(
        None, "model", "model", "transform of the body's fixed spectral pooling (variant spectral; model default fourier)",
        choices=("fourier", "hartley"))
    head_transform: str | None = _setting(
        None, "model", "model", "transform of the spectral head (hybrid, diffstride_scaled; model default hartley, Algorithm 1)",
        choices=("fourier", "hartley"))
    shared_stride: bool | None = _setting(None, "model", "model", "one learnable stride per DiffStride layer for both axes")
    width: int | None = _setting(None, "model", "model", "channels of the first stage; later stages 2x/4x/8x "
                                 "(model default 64, ResNet-18; narrower trains faster)", parse=_positive_int)
    zero_init_residual: bool | None = _setting(
        None, "model", "model", "start every residual block as its shortcut (its last BatchNorm scale zeroed): small "
                                "logits and gradients in the first steps, whatever a spectral head multiplies GAP by")
    name: str | None = _setting(None, "model", "run", "run name (default VARIANT_DATASET_sSTRIDES_seedSEED)")
    # ---- optimisation ----
    epochs: int = _setting(200, "optimisation", "result", "epochs of the whole run (the schedule spans them)",
                           parse=_positive_int)
    batch_size: int = _setting(128, "optimisation", "result", "global batch size (split over DDP ranks)", parse=_positive_int)
    lr: float = _setting(0.1, "optimisation", "result", "peak learning rate of the weights", parse=_nonneg_float)
    stride_lr: float | None = _setting(None, "optimisation", "result", "learning rate of the DiffStride strides (default: --lr)",
                                       parse=_nonneg_float)
    momentum: float = _setting(0.9, "optimisation", "result", parse=_nonneg_float)
    nesterov: bool = _setting(False, "optimisation", "result", "Nesterov momentum")
    weight_decay: float = _setting(5e-4, "optimisation", "result", "on the weights (never on the strides)", parse=_nonneg_float)
    decay_norm_bias: bool = _setting(True, "optimisation", "result",
                                     "no weight decay on BatchNorm scales/shifts and biases (only convolution and linear "
                                     "weights decay)")
    schedule: str = _setting("piecewise", "optimisation", "result",
                             "piecewise: lr x1, x0.1, x0.01, x0.001 at the milestones; onecycle: linear warm-up then linear decay to 0",
                             choices=SCHEDULES)
    milestones: tuple[float, ...] | None = _setting(
        None, "optimisation", "result", "piecewise boundaries in epochs, e.g. 100,150,180 (default: 50%%,75%%,90%% of --epochs)",
        parse=_number_list)
    warmup: float | None = _setting(None, "optimisation", "result",
                                    "warm-up length in epochs (default: 0 for piecewise, 20%% of the epochs for onecycle)",
                                    parse=_nonneg_float)
    label_smoothing: float | None = _setting(None, "optimisation", "result", "default 0 (piecewise) / 0.2 (onecycle)",
                                             parse=_nonneg_float)
    resolution_penalty: float = _setting(0.0, "optimisation", "result",
                                         "weight of sum over DiffStride layers of 1/(s_h*s_w) (pushes towards larger strides)",
                                         parse=_nonneg_float)
    grad_clip: float = _setting(DEFAULT_GRAD_CLIP, "optimisation", "result",
                                "clip the global gradient norm of the weights to this value (0: off, the papers' setting); "
                                "on by default so every variant trains stably from the first step (docs/training.md)",
                                parse=_nonneg_float)
    # ---- data (result) ----
    limit_train: int | None = _setting(None, "data", "result", "use the first N training images", parse=_positive_int)
    limit_test: int | None = _setting(None, "data", "result", "use the first N test images", parse=_positive_int)
    seed: int = _setting(0, "optimisation", "result", "seed of the initialisation, the batches and the augmentation",
                         parse=int)
    pad: int = _setting(4, "data", "result", "random-crop padding in pixels (0: no crop)", parse=int)
    pad_mode: str = _setting("reflect", "data", "result", None, choices=("reflect", "zeros"))
    flip: bool = _setting(True, "data", "result", "turn off the random horizontal flips (on by default)")
    data_source: str = _setting("auto", "data", "result", "which copy to read", choices=SOURCES)
    # ---- where and how it runs ----
    data_dir: str | None = _setting(None, "data", "run", "data directory (default: $HYBRID_DATA_DIR, ../shared/data, ./data)")
    download: bool = _setting(False, "data", "run", "let torchvision download the official archive")
    out: str = _setting(_REQUIRED, "run", "run", "output directory")
    resume: bool = _setting(False, "run", "run", "continue NAME from its last epoch (or start it)")
    overwrite: bool = _setting(False, "run", "run", "start again even if NAME exists")
    keep_state: bool = _setting(False, "run", "run", "keep NAME.state.pt after the last epoch")
    max_seconds: float | None = _setting(
        None, "run", "run", "wall-clock budget of this invocation: stop at the epoch boundary where one more epoch "
                            "would end past it (the run stays resumable with --resume)", parse=_positive_float)
    device: str = _setting("auto", "run", "run", "auto, cpu, cuda, cuda:N (under torchrun: the local rank's GPU)")
    precision: str = _setting("auto", "run", "run", "auto: bf16 autocast on CUDA, fp32 on CPU", choices=("auto", "bf16", "fp32"))
    channels_last: str = _setting("auto", "run", "run", "auto: on for CUDA", choices=("auto", "on", "off"))
    compile: bool = _setting(False, "run", "run", "torch.compile the model")
    deterministic: bool = _setting(False, "run", "run", "deterministic CUDA kernels (slower)")
    threads: int | None = _setting(None, "run", "run", "torch CPU threads", parse=_positive_int)
    eval_batch_size: int | None = _setting(None, "run", "run", "default 2x --batch-size", parse=_positive_int)
    progress: bool = _setting(True, "run", "run", "turn off the tqdm progress bar (on by default)")

    # ---- derived views ----
    def resolved(self) -> TrainConfig:
        """A copy with the combinations checked and the defaults that depend on other
        settings filled in (milestones, warm-up, label smoothing, stride lr, name), so cards
        and resume checks see the values actually used. Raises :class:`ConfigError`."""
        _check(self)
        epochs, piecewise = self.epochs, self.schedule == "piecewise"
        return dataclasses.replace(
            self,
            milestones=self.milestones if self.milestones is not None or not piecewise
            else tuple(round(f * epochs, 6) for f in DEFAULT_MILESTONE_FRACTIONS),
            warmup=self.warmup if self.warmup is not None else (0.0 if piecewise else round(0.2 * epochs, 6)),
            label_smoothing=self.label_smoothing if self.label_smoothing is not None else (0.0 if piecewise else 0.2),
            stride_lr=self.lr if self.stride_lr is None else self.stride_lr,
            name=self.name if self.name is not None else run_name(self.variant, self.dataset, self.strides, self.seed),
        )

    def card_config(self) -> dict[str, Any]:
        """The settings that define the result, as plain JSON: the card's ``config`` and what
        ``--resume`` compares (every ``"result"`` field, then the model ``options``)."""
        config = {f.name: getattr(self, f.name) for f in _fields("result")}
        config["strides"] = [_as_number(s) for s in self.strides]
        config["milestones"] = None if self.milestones is None else [_as_number(m) for m in self.milestones]
        config["options"] = model_options(self)
        return json.loads(json.dumps(config))  # plain JSON types (tuples -> lists)


def _fields(role: str | None = None) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig) if role is None or f.metadata["role"] == role]


def _as_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


#: The keys of ``TrainConfig.card_config()``: what must match for ``--resume`` to continue a run.
RESUME_KEYS: tuple[str, ...] = (*(f.name for f in _fields("result")), "options")


def model_options(config: TrainConfig | argparse.Namespace) -> dict[str, Any]:
    """The ``build_model`` keyword arguments that were set (model defaults otherwise), plus the
    head transform of a variant with a spectral head, always: a card must say which
    transform its head used even if the model default changes."""
    options = {f.name: getattr(config, f.name) for f in _fields("model")}
    if hybrid_model.VARIANTS[config.variant].head_has_transform and config.head_transform is None:
        options["head_transform"] = hybrid_model.resnet.DEFAULT_HEAD_TRANSFORM
    return {k: v for k, v in options.items() if v is not None}


def _check(c: TrainConfig) -> None:
    """Impossible combinations, each one sentence naming the flags involved."""
    if c.variant not in VARIANTS:
        raise ConfigError(f"unknown variant {c.variant!r}; expected one of {', '.join(VARIANTS)}")
    if c.variant == "resnet18" and not all(float(s).is_integer() for s in c.strides):
        raise ConfigError(f"--variant resnet18 uses strided convolutions: --strides must be integers, got {c.strides}")
    if c.resume and c.overwrite:
        raise ConfigError("--resume and --overwrite are mutually exclusive")
    if not 0 <= c.pad < 32:
        raise ConfigError(f"--pad must be in [0, 32), got {c.pad}")
    if c.label_smoothing is not None and c.label_smoothing >= 1:
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {c.label_smoothing}")
    if c.head_stride is not None and not (math.isfinite(c.head_stride) and c.head_stride >= 1):
        raise ConfigError(f"--head-stride must be a number >= 1, got {c.head_stride}")
    if c.milestones is not None:
        if c.schedule != "piecewise":
            raise ConfigError("--milestones only applies to --schedule piecewise")
        if len(c.milestones) > len(PIECEWISE_FACTORS) - 1 or list(c.milestones) != sorted(c.milestones):
            raise ConfigError(f"--milestones takes up to 3 increasing epochs, got {','.join(f'{m:g}' for m in c.milestones)}")
        if c.milestones[0] <= 0 or c.milestones[-1] > c.epochs:
            raise ConfigError(f"--milestones must lie in (0, --epochs={c.epochs}]")
    if c.warmup is not None and c.warmup > c.epochs:
        raise ConfigError(f"--warmup ({c.warmup:g} epochs) exceeds --epochs ({c.epochs})")
    if c.name is not None and (not c.name or any(ch in c.name for ch in "/\\") or c.name.startswith(".")):
        raise ConfigError(f"--name must be a plain file name, got {c.name!r}")


# --------------------------------------------------------------------------------------
# Command line, derived from the fields
# --------------------------------------------------------------------------------------
def _is_switch(hint: Any) -> bool:
    """``bool`` or ``bool | None`` (``Optional[bool]``): a field whose flag is an on/off switch."""
    if hint is bool:
        return True
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return union and set(typing.get_args(hint)) == {bool, type(None)}


#: The fields whose flag is a switch, judged on the resolved annotations (the module's
#: ``from __future__ import annotations`` leaves ``Field.type`` a string).
_SWITCHES: frozenset[str] = frozenset(
    name for name, hint in typing.get_type_hints(TrainConfig).items() if _is_switch(hint))


def _flag(f: dataclasses.Field) -> str:
    """The flag of a field without its dashes: ``batch-size``; ``no-flip`` for a switch that defaults on."""
    name = f.name.replace("_", "-")
    return f"no-{name}" if f.default is True else name


#: Flag (without ``--``) -> field name, for every flag of ``python -m training.train``.
FLAGS: dict[str, str] = {_flag(f): f.name for f in _fields()}


def _add_argument(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    meta = f.metadata
    kwargs: dict[str, Any] = {"dest": f.name}
    if meta["help"] is not None:
        kwargs["help"] = meta["help"]
    if f.default is dataclasses.MISSING:
        kwargs["required"] = True
    elif f.name in _SWITCHES:
        kwargs.update(action="store_false" if f.default is True else "store_true", default=f.default)
    else:
        kwargs["default"] = f.default
    if meta["parse"] is not None:
        kwargs["type"] = meta["parse"]
    if meta["choices"] is not None:
        kwargs["choices"] = meta["choices"]
    group.add_argument(f"--{_flag(f)}", **kwargs)


class _Parser(argparse.ArgumentParser):
    """One line for a bad command line, without the 40-line usage before it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """``python -m training.train``'s parser: one flag per :class:`TrainConfig` field."""
    parser = _Parser(
        prog="python -m training.train",
        description="Train a CIFAR ResNet-18 variant (strided conv, spectral pooling, DiffStride, hybrid).",
        formatter_class=DefaultsHelpFormatter,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for title in ("model", "data", "optimisation", "run"):
        groups[title] = parser.add_argument_group(title)
    for f in _fields():
        _add_argument(groups[f.metadata["group"]], f)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, TrainConfig]:
    """Parse and resolve (:meth:`TrainConfig.resolved`); impossible combinations end in
    ``parser.error`` (exit 2, one line)."""
    parser = build_parser()
    config = TrainConfig(**vars(parser.parse_args(argv)))
    try:
        return parser, config.resolved()
    except ConfigError as error:
        parser.error(str(error))
        raise  # parser.error exits; this keeps type checkers honest
