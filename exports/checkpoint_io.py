"""Reading and writing training checkpoints: ``NAME.safetensors`` + ``NAME.json`` (the card).

The pair is what ``python -m training.train ... --out DIR`` writes: the model's
``state_dict`` (DiffStride ``stride`` parameters included) as safetensors, and a JSON card
describing how to rebuild the model (``variant``, ``strides``, ``num_classes``,
``options``) and how it was trained. Every failure raises :class:`CheckpointError` with a
one-line message that names the file and what is wrong with it, so command-line tools
can print it without a traceback.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from hybrid_model import VARIANTS, build_model, learned_strides
from hybrid_model import build_from_card as _build_model_from_card

from .serving.cifar import CIFAR10_CLASSES
from .serving.cifar import CIFAR_MEAN_STD as _FALLBACK_MEAN_STD
from .serving.files import file_sha256  # the one file hash (torch-free, also used by the server)

__all__ = [
    "CARD_KEYS",
    "CIFAR10_CLASSES",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_normalize",
    "file_sha256",
    "load_card",
    "load_checkpoint",
    "make_card",
    "resolve_pair",
    "save_checkpoint",
]

#: The keys a training card carries (``training/train.py`` writes all of them).
CARD_KEYS = (
    "variant", "dataset", "num_classes", "class_names", "strides", "options", "learned_strides",
    "epoch", "epochs", "history", "test_acc", "data", "normalize", "command", "code_version",
    "seed", "created",
)
#: What is needed to rebuild the model; the rest is descriptive.
REQUIRED_KEYS = ("variant", "strides")


class CheckpointError(ValueError):
    """A checkpoint or card cannot be used; the message says which file and why."""


# --------------------------------------------------------------------------------------
# Small file helpers (shared by the export and manifest code)
# --------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    Readers (the dashboard, a concurrent export) see either the old file or the new one,
    never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; models are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------
# Dataset defaults (prefer the training package's constants when it exists)
# --------------------------------------------------------------------------------------
def _training_data():
    try:
        from training import data  # type: ignore[import-not-found]
    except Exception:  # not written yet, or broken: the fallbacks below apply
        return None
    return data


def default_class_names(dataset: str, num_classes: int) -> list[str]:
    """Class names for a dataset: ``training.data`` constants, CIFAR-10's, or ``class_<i>``."""
    data = _training_data()
    if dataset == "cifar10":
        names = getattr(data, "CIFAR10_CLASSES", None) or CIFAR10_CLASSES
        if len(names) == num_classes:
            return list(names)
    for attr in (f"{dataset.upper()}_CLASSES",):
        names = getattr(data, attr, None)
        if names is not None and len(names) == num_classes:
            return list(names)
    return [f"class_{i}" for i in range(num_classes)]


def default_normalize(dataset: str) -> dict[str, list[float]]:
    """``{"mean": [3], "std": [3]}`` for a dataset, from ``training.data.CIFAR_MEAN_STD`` if present."""
    table = getattr(_training_data(), "CIFAR_MEAN_STD", None) or _FALLBACK_MEAN_STD
    key = dataset if dataset in table else "cifar10"
    mean, std = table[key]
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


# --------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------
def resolve_pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights.safetensors, card.json)`` for a path to either file (the other by stem)."""
    path = Path(path)
    if path.suffix not in (".json", ".safetensors"):
        raise CheckpointError(f"{path}: expected a .safetensors checkpoint or its .json card")
    weights, card = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for candidate in (path, weights, card):
        if not candidate.is_file():
            what = "checkpoint" if candidate.suffix == ".safetensors" else "card"
            raise CheckpointError(f"{candidate}: {what} file not found")
    return weights, card


def _validate_card(card: Any, where: str) -> dict:
    if not isinstance(card, dict):
        raise CheckpointError(f"{where}: card must be a JSON object, got {type(card).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in card]
    if missing:
        raise CheckpointError(f"{where}: card lacks required key(s) {', '.join(missing)}")
    if card["variant"] not in VARIANTS:
        raise CheckpointError(
            f"{where}: unknown variant {card['variant']!r}; expected one of {', '.join(sorted(VARIANTS))}"
        )
    strides = card["strides"]
    if not isinstance(strides, (list, tuple)) or len(strides) != 5:
        raise CheckpointError(f"{where}: 'strides' must be a list of 5 numbers, got {strides!r}")
    num_classes = card.get("num_classes", 10)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise CheckpointError(f"{where}: 'num_classes' must be a positive integer, got {num_classes!r}")
    if not isinstance(card.get("options", {}), dict):
        raise CheckpointError(f"{where}: 'options' must be an object of build_model keyword arguments")
    names = card.get("class_names")
    if names is not None and len(names) != num_classes:
        raise CheckpointError(f"{where}: {len(names)} class_names for num_classes={num_classes}")
    return card


def load_card(path: str | os.PathLike) -> dict:
    """Read and validate a card (JSON object with at least ``variant`` and ``strides``).

    Missing optional keys are filled in: ``num_classes`` 10, ``dataset`` "cifar10",
    ``options`` {}, ``class_names`` and ``normalize`` from the dataset defaults.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: card file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read card ({error})") from None
    try:
        card = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: card is not valid JSON ({error})") from None
    card = _validate_card(card, str(path))
    card.setdefault("dataset", "cifar10")
    card.setdefault("num_classes", 10)
    card.setdefault("options", {})
    if not card.get("class_names"):
        card["class_names"] = default_class_names(card["dataset"], card["num_classes"])
    if not card.get("normalize"):
        card["normalize"] = default_normalize(card["dataset"])
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
    """A complete card for ``model`` (untrained defaults for the training fields).

    ``fields`` override any key (``test_acc``, ``history``, ``epoch``, ...). Useful for tests
    and for tools that make checkpoints outside ``training.train``.
    """
    card: dict[str, Any] = {
        "variant": variant,
        "dataset": dataset,
        "num_classes": num_classes,
        "class_names": default_class_names(dataset, num_classes),
        "strides": [float(s) for s in strides],
        "options": dict(options or {}),
        "learned_strides": learned_strides(model),
        "epoch": 0,
        "epochs": 0,
        "history": [],
        "test_acc": None,
        "data": {"source": None, "n_train": 0, "n_test": 0},
        "normalize": default_normalize(dataset),
        "command": None,
        "code_version": None,
        "seed": None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    card.update(fields)
    return card


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


def build_from_card(card: Mapping[str, Any], where: str = "card") -> nn.Module:
    """``build_model`` from a card's ``variant``, ``strides``, ``num_classes`` and ``options``."""
    try:
        return _build_model_from_card(card)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: cannot build the model described by the card ({error})") from None


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a checkpoint pair from either file; returns ``(model in eval mode, card)``.

    Raises :class:`CheckpointError` for a missing file, an unreadable card or safetensors
    file, an unknown variant, or weights that do not fit the model the card describes.
    """
    weights, card_path = resolve_pair(path)
    card = load_card(card_path)
    model = build_from_card(card, str(card_path))
    state = _read_state_dict(weights)
    mismatch = _mismatch_message(model, state)
    if mismatch:
        raise CheckpointError(
            f"{weights}: weights do not match the card's model "
            f"(variant {card['variant']!r}, num_classes {card['num_classes']}): {mismatch}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval(), card


def save_checkpoint(model: nn.Module, card: Mapping[str, Any], path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``PATH.safetensors`` + ``PATH.json`` atomically (``path`` may carry either suffix).

    The card's ``learned_strides`` are refreshed from the model so they always agree with
    the weights.
    """
    from safetensors.torch import save

    base = Path(path)
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    card = dict(card)
    card["learned_strides"] = learned_strides(model)
    _validate_card(card, str(base) + ".json")
    # Clone: safetensors refuses tensors that share storage or are not contiguous.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    weights = atomic_write_bytes(base.parent / (base.name + ".safetensors"), save(state))
    card_path = atomic_write_text(base.parent / (base.name + ".json"), json.dumps(card, indent=2) + "\n")
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
    import numpy as np

    torch.manual_seed(seed)
    model = build_model(variant, tuple(strides), num_classes, **dict(options or {}))
    dataset = card_fields.pop("dataset", "cifar10")
    if calibration_images is not None:
        norm = default_normalize(dataset)
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
