"""The files of a training run, and loading a trained model from them (the torch side).

A run named ``NAME`` in ``OUTDIR`` owns three files:

* ``NAME.safetensors`` - the model's ``state_dict`` (weights, BN buffers, learned strides);
* ``NAME.json`` - the model card (:class:`serving.cards.RunCard`: variant, strides,
  options, history, accuracy, provenance);
* ``NAME.state.pt`` - everything ``--resume`` needs (model, optimizer, scheduler, RNG
  states); removed when the run finishes unless ``--keep-state``.

Every write is atomic (:mod:`serving.files`), so a reader (or a process killed
mid-write) only ever sees a complete old or new file. Every failure to read a checkpoint
raises :class:`CheckpointError` with a one-line message that names the file and what is
wrong with it, so command-line tools can print it without a traceback.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file
from torch import nn

import hybrid_model
from serving.cards import RunCard, default_class_names
from serving.cifar import CIFAR_MEAN_STD
from serving.files import atomic_write, atomic_write_bytes, atomic_write_json
from serving.paths import REPO_ROOT

__all__ = [
    "CheckpointError",
    "RunPaths",
    "code_version",
    "fresh_checkpoint",
    "load_card",
    "load_checkpoint",
    "load_model",
    "make_card",
    "resolve_pair",
    "save_checkpoint",
    "save_safetensors",
    "save_torch",
]

#: What is needed to rebuild the model; the rest is descriptive.
REQUIRED_KEYS = ("variant", "strides")


class CheckpointError(ValueError):
    """A checkpoint or card cannot be used; the message says which file and why."""


# --------------------------------------------------------------------------------------
# The files of a run (training.train writes them)
# --------------------------------------------------------------------------------------
class RunPaths:
    """The file names of run ``name`` in ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike, name: str) -> None:
        self.out_dir = Path(out_dir)
        self.name = name
        self.card = self.out_dir / f"{name}.json"
        self.weights = self.out_dir / f"{name}.safetensors"
        self.state = self.out_dir / f"{name}.state.pt"

    def exists(self) -> bool:
        return self.card.exists() or self.state.exists() or self.weights.exists()


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_safetensors(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a ``state_dict`` with ``safetensors.torch.save_file`` (CPU, contiguous, unshared copies)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def code_version() -> str:
    """The repository's git commit (``"unknown"`` outside git or before the first commit)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


# --------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------
def _normalize(dataset: str) -> dict[str, list[float]]:
    """``{"mean": [3], "std": [3]}`` of a dataset (CIFAR-10's for an unknown one)."""
    mean, std = CIFAR_MEAN_STD.get(dataset, CIFAR_MEAN_STD["cifar10"])
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def resolve_pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for a path to either file or to ``OUTDIR/NAME``."""
    path = Path(path)
    if path.suffix not in (".json", ".safetensors", ""):
        raise CheckpointError(f"{path}: expected a .safetensors checkpoint or its .json card")
    base = path.with_suffix("") if path.suffix else path
    weights, card = base.parent / (base.name + ".safetensors"), base.parent / (base.name + ".json")
    for candidate in (weights, card) if path.suffix != ".json" else (card, weights):
        if not candidate.is_file():
            what = "checkpoint" if candidate.suffix == ".safetensors" else "card"
            raise CheckpointError(f"{candidate}: {what} file not found")
    return weights, card


def _validate_card(card: RunCard, where: str) -> RunCard:
    """``card`` if it describes a model this project can build (one-sentence CheckpointError otherwise)."""
    written = card.to_dict()
    missing = [key for key in REQUIRED_KEYS if key not in written]
    if missing:
        raise CheckpointError(f"{where}: card lacks required key(s) {', '.join(missing)}")
    if card.variant not in hybrid_model.VARIANTS:
        raise CheckpointError(
            f"{where}: unknown variant {card.variant!r}; expected one of {', '.join(sorted(hybrid_model.VARIANTS))}"
        )
    problems = card.problems()
    if problems:
        raise CheckpointError(f"{where}: {problems[0]}")
    return card


def load_card(path: str | os.PathLike) -> RunCard:
    """Read and validate a card (JSON object with at least ``variant`` and ``strides``).

    Missing optional keys are filled in (and written by ``to_dict()``): ``num_classes`` 10,
    ``dataset`` "cifar10", ``options`` {}, ``class_names`` and ``normalize`` from the
    dataset defaults.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: card file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read card ({error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: card is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: card must be a JSON object, got {type(data).__name__}")
    defaults = RunCard()
    for key in ("dataset", "num_classes", "options"):  # written out by to_dict(): an export of this card names them
        data.setdefault(key, getattr(defaults, key))
    card = _validate_card(RunCard.from_dict(data), str(path))
    if not card.class_names:
        card.class_names = default_class_names(card.dataset, card.num_classes)
    if not card.normalize:
        card.normalize = _normalize(card.dataset)
    return card


def make_card(
    model: nn.Module,
    variant: str,
    strides: tuple[float, ...] | list[float] = (1, 1, 2, 2, 2),
    *,
    dataset: str = "cifar10",
    num_classes: int = 10,
    options: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict:
    """A card for an untrained ``model`` (tests, smoke runs, tools that make checkpoints
    outside ``training.train``); ``fields`` override any key (``test_acc``, ``history``, ...)."""
    card: dict[str, Any] = {
        "variant": variant,
        "dataset": dataset,
        "num_classes": num_classes,
        "class_names": default_class_names(dataset, num_classes),
        "strides": [float(s) for s in strides],
        "options": dict(options or {}),
        "learned_strides": hybrid_model.learned_strides(model),
        "epoch": 0,
        "epochs": 0,
        "history": [],
        "test_acc": None,
        "data": {"source": None, "n_train": 0, "n_test": 0},
        "normalize": _normalize(dataset),
        "command": None,
        "code_version": None,
        "seed": None,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    card.update(fields)
    return card


# --------------------------------------------------------------------------------------
# Checkpoints: card + weights
# --------------------------------------------------------------------------------------
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({reason})") from None


def _mismatch_message(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """A one-line summary of key/shape differences between ``state`` and ``model``, or None."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {shapes[0]})")
    return "; ".join(parts)


def _build(card: RunCard, where: str) -> nn.Module:
    """``hybrid_model.build_from_card``, a :class:`CheckpointError` naming ``where`` if it fails."""
    try:
        return hybrid_model.build_from_card(card.to_dict())
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: cannot build the model described by the card ({error})") from None


def _load_weights(model: nn.Module, card: RunCard, state: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    """``model`` with ``state`` loaded strictly, a :class:`CheckpointError` naming ``where`` if it does not fit."""
    mismatch = _mismatch_message(model, state)
    if mismatch:
        raise CheckpointError(
            f"{where}: weights do not match the card's model "
            f"(variant {card.variant!r}, num_classes {card.num_classes}): {mismatch}"
        )
    model.load_state_dict(state, strict=True)
    return model


def load_model(card: RunCard, state: Mapping[str, torch.Tensor], where: str = "card") -> nn.Module:
    """The model ``card`` describes (``hybrid_model.build_from_card``) with the weights
    ``state`` loaded (strictly; left in train mode on the CPU).

    Raises :class:`CheckpointError` naming ``where`` when the card describes no buildable
    model or the weights do not fit it (one line: what is missing, unexpected or misshapen).
    """
    return _load_weights(_build(card, where), card, state, where)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, RunCard]:
    """Rebuild a trained model from ``NAME.json``, ``NAME.safetensors`` or ``OUTDIR/NAME``.

    Returns ``(model in eval mode on device, card)``; the model expects
    :func:`training.data.normalize`\\ d input. Raises :class:`CheckpointError` for a missing
    file, an unreadable card or safetensors file, an unknown variant, or weights that do
    not fit the model the card describes.
    """
    weights, card_path = resolve_pair(path)
    card = load_card(card_path)
    model = _build(card, str(card_path))
    model = _load_weights(model, card, _read_state_dict(weights), str(weights))
    return model.to(device).eval(), card


def save_checkpoint(model: nn.Module, card: RunCard | Mapping[str, Any], path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``PATH.safetensors`` + ``PATH.json`` atomically (``path`` may carry either suffix).

    The card's ``learned_strides`` are refreshed from the model so they always agree with
    the weights.
    """
    base = Path(path)
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    card = RunCard.from_dict(card)  # a copy
    card.learned_strides = hybrid_model.learned_strides(model)
    _validate_card(card, str(base) + ".json")
    # Clone: safetensors refuses tensors that share storage or are not contiguous.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    weights = atomic_write_bytes(base.parent / (base.name + ".safetensors"), save(state))
    card_path = atomic_write_json(base.parent / (base.name + ".json"), card.to_dict())
    return weights, card_path


def fresh_checkpoint(
    variant: str,
    path: str | os.PathLike,
    strides: tuple[float, ...] | list[float] = (1, 1, 2, 2, 2),
    *,
    seed: int = 0,
    num_classes: int = 10,
    options: Mapping[str, Any] | None = None,
    calibration_images: Any = None,
    **card_fields: Any,
) -> tuple[Path, Path]:
    """Write a freshly initialised checkpoint pair (tests, smoke runs, pipeline checks).

    ``calibration_images``: optional ``(N, 32, 32, 3)`` uint8 images; when given, the
    batch-norm running statistics are estimated on them (train-mode forwards, no weight
    update), so activations and logits have the scale of a trained network instead of
    the drift of untouched ``mean=0, var=1`` statistics.
    """
    torch.manual_seed(seed)
    model = hybrid_model.build_model(variant, tuple(strides), num_classes, **dict(options or {}))
    dataset = card_fields.pop("dataset", "cifar10")
    if calibration_images is not None:
        norm = _normalize(dataset)
        x = np.asarray(calibration_images, np.float32) / 255.0
        x = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
        _calibrate_batchnorm(model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    card = make_card(
        model, variant, strides, dataset=dataset, num_classes=num_classes, options=options, seed=seed, **card_fields
    )
    return save_checkpoint(model.eval(), card, path)


@torch.no_grad()
def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch: int = 64) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    for start in range(0, len(x), batch):
        model(x[start : start + batch])
    for bn in norms:
        bn.momentum = 0.1
    model.eval()
