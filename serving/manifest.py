"""``manifest.json``: the list of a models folder's exports (name, file, precision, sha256).

The exporters (``exports.export``, ``exports.quantize``, ``exports.ingest``) add and drop
rows; :class:`~serving.registry.ModelRegistry` reads it. Updates are serialised
between processes with a lock on the folder and written atomically, so a reader sees the
old manifest or the new one.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .cards import RunCard, as_card
from .files import atomic_write_bytes, atomic_write_text, file_sha256

__all__ = ["MANIFEST", "drop_from_manifest", "read_manifest", "update_manifest", "write_model"]

#: The manifest's file name inside a models folder.
MANIFEST = "manifest.json"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise manifest updates between concurrent exports (flock on the folder; POSIX)."""
    try:
        import fcntl  # optional: POSIX only
    except ImportError:  # Windows: best effort, the write itself is still atomic
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_manifest(directory: str | os.PathLike) -> dict:
    """``manifest.json`` of a models folder (``{"format": 1, "models": []}`` if absent)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return {"format": 1, "models": []}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError(f"{path}: not a manifest (expected an object with a 'models' list)")
    return data


def _same_slot(row: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    """Rows an update replaces: the same file, or the same name at the same precision (an
    int8 model and its float source may share a name; the registry serves the int8 one)."""
    if row.get("file") == entry["file"]:
        return True
    precision = row.get("precision") or ("fp16" if row.get("fp16_weights") else "fp32")
    return row.get("name") == entry["name"] and precision == entry["precision"]


def update_manifest(onnx_path: Path, card: RunCard | Mapping[str, Any], sha256: str) -> Path:
    """Add or replace this model's entry (same file, or same name and precision) in the folder's manifest."""
    directory = onnx_path.parent
    card = as_card(card)
    entry = {
        "name": card.name,
        "file": onnx_path.name,
        "variant": card.variant,
        "dataset": card.dataset,
        "test_acc": card.test_acc,
        "size_bytes": onnx_path.stat().st_size,
        "sha256": sha256,
        "fp16_weights": card.fp16_weights,
        "precision": card.precision,
    }
    with _locked(directory):
        try:
            manifest = read_manifest(directory)
        except (ValueError, json.JSONDecodeError):
            manifest = {"format": 1, "models": []}  # a broken manifest is rebuilt, not fatal
        models = [m for m in manifest["models"] if not _same_slot(m, entry)]
        models.append(entry)
        manifest["models"] = sorted(models, key=lambda m: str(m.get("name")))
        return atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def write_model(path: Path, data: bytes, card: RunCard | Mapping[str, Any], *, manifest: bool = True) -> str:
    """Write a serialised ONNX model atomically and, with ``manifest``, give it its row in
    the folder's manifest; returns the file's sha256 (the one the manifest records)."""
    atomic_write_bytes(path, data)
    sha = file_sha256(path)
    if manifest:
        update_manifest(path, card, sha)
    return sha


def drop_from_manifest(onnx_path: Path) -> None:
    """Remove this file's row from its folder's manifest (the file itself is the caller's)."""
    directory = onnx_path.parent
    with _locked(directory):
        manifest = read_manifest(directory)
        manifest["models"] = [m for m in manifest["models"] if m.get("file") != onnx_path.name]
        atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
