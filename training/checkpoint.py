"""Checkpoint files of a training run: atomic writers, model cards, loading a trained model.

A run named ``NAME`` in ``OUTDIR`` owns three files:

* ``NAME.safetensors`` - the model's ``state_dict`` (weights, BN buffers, learned strides);
* ``NAME.json`` - the model card (variant, strides, options, history, accuracy, provenance);
* ``NAME.state.pt`` - everything ``--resume`` needs (model, optimizer, scheduler, RNG
  states); removed when the run finishes unless ``--keep-state``.

Every write goes to a temporary file in the same directory followed by ``os.replace``, so
a reader (or a process killed mid-write) only ever sees a complete old or new file.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "RunPaths",
    "atomic_write",
    "atomic_write_json",
    "code_version",
    "find_cards",
    "is_finished",
    "load_card",
    "load_checkpoint",
    "save_safetensors",
    "save_torch",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
_UMASK = os.umask(0)
os.umask(_UMASK)


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path`` (same directory => atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 (and some writers recreate it): usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_safetensors(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a ``state_dict`` with ``safetensors.torch.save_file`` (CPU, contiguous, unshared copies)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_card(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def is_finished(card: dict | None) -> bool:
    """A card of a completed run (``epoch == epochs``)."""
    return bool(card) and card.get("epoch") == card.get("epochs") and card.get("epochs") is not None


def find_cards(directory: str | os.PathLike) -> list[dict]:
    """Every model card (``*.json`` with a ``variant`` and ``history``) under ``directory``.

    Each card gets a ``"_path"`` entry (its file), sorted by path.
    """
    cards = []
    for path in sorted(Path(directory).rglob("*.json")):
        try:
            card = load_card(path)
        except (OSError, ValueError):
            continue
        if isinstance(card, dict) and "variant" in card and "history" in card:
            card["_path"] = str(path)
            cards.append(card)
    return cards


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


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from its card and weights.

    ``path``: ``NAME.json``, ``NAME.safetensors`` or ``OUTDIR/NAME``. Returns
    ``(model in eval mode, card)``; the model expects :func:`training.data.normalize`\\ d input.
    """
    from safetensors.torch import load_file

    import hybrid_model

    base = Path(path)
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    card = load_card(base.with_suffix(".json"))
    model = hybrid_model.build_from_card(card)
    model.load_state_dict(load_file(str(base.with_suffix(".safetensors")), device=str(device)))
    return model.to(device).eval(), card
