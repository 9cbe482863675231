"""The set of exported models a server offers: validated at start-up, loaded on first use.

``ModelRegistry(models_dir)`` reads ``manifest.json`` (see ``serving.manifest``) and
also picks up ``*.onnx`` files the manifest does not list. Each model is validated without
starting onnxruntime (protobuf parse, ``onnx.checker``, SHA-256 against the manifest,
embedded card against the graph's inputs/outputs); anything wrong lands in ``.skipped``
with a reason instead of raising, so one bad file never takes the dashboard down.
Sessions are created lazily by :meth:`ModelRegistry.get` and cached; the registry is
safe to use from several threads.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import onnx

from .cards import CardError, RunCard, read_onnx_card
from .files import file_sha256
from .manifest import MANIFEST
from .runtime import ModelError, OnnxModel, card_problems, graph_io

__all__ = ["ModelEntry", "ModelRegistry", "by_accuracy"]


@dataclass(frozen=True)
class ModelEntry:
    """One valid model: what a model picker needs without loading it."""

    name: str
    file: str
    variant: str
    dataset: str | None
    test_acc: float | None
    size_bytes: int
    path: Path = field(repr=False)
    card: RunCard = field(repr=False, compare=False)
    precision: str = "fp32"  # "int8", "fp16" (fp16-stored weights) or "fp32": the card's export.precision

    def to_dict(self) -> dict:
        """Plain summary (no card, no path object)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "card"}
        out["path"] = str(self.path)
        return out


def _validate(path: Path, expected_sha256: str | None) -> RunCard:
    """The model's card, or ``ModelError`` saying why the file cannot be served."""
    if not path.is_file():
        raise ModelError("file not found")
    if path.stat().st_size == 0:
        raise ModelError("empty file")
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise ModelError("sha256 differs from manifest.json (file changed or corrupted since export)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf DecodeError and friends
        raise ModelError(f"not an ONNX model ({type(error).__name__})") from None
    if not model.graph.node:
        raise ModelError("not an ONNX model (no graph)")
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        raise ModelError(f"invalid ONNX graph ({str(error).splitlines()[0][:160]})") from None
    try:
        card = read_onnx_card(model)
    except CardError as error:
        raise ModelError(str(error)) from None
    problems = card_problems(card, *graph_io(model))
    if problems:
        raise ModelError(f"card does not match the graph: {problems[0]}")
    return card


def _twin_name(entries: list[ModelEntry], name: str, precision: str) -> str:
    """The name to list a model under when a model of the same name but another precision
    is already listed: the int8 file is served under the plain name (it is the faster one
    on CPUs, see exports.quantize), the float one stays loadable as ``NAME-fp16``/``-fp32``."""
    for k, other in enumerate(entries):
        if other.name != name or other.precision == precision:
            continue
        if precision == "int8":  # the int8 twin takes the name; the float one is renamed
            entries[k] = replace(other, name=f"{name}-{other.precision}")
            return name
        if other.precision == "int8":
            return f"{name}-{precision}"
    return name


def by_accuracy(entries: Iterable[ModelEntry]) -> list[ModelEntry]:
    """Best test accuracy first (unknown accuracy last; ties by name): the dashboard's order."""
    return sorted(entries, key=lambda e: (e.test_acc is None, -(e.test_acc or 0.0), e.name))


class ModelRegistry:
    """Exported models in ``models_dir``.

    Args:
        models_dir: folder with ``manifest.json`` and/or ``*.onnx`` files.
        providers / intra_op_threads: passed to every :class:`OnnxModel`.
        verify_sha256: check files against the manifest's hashes (cheap: ~0.1 s per model).

    Attributes: ``entries`` (list of :class:`ModelEntry`, manifest order then unlisted
    files), ``skipped`` (list of ``(file, reason)``).
    """

    def __init__(
        self,
        models_dir: str | os.PathLike,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        verify_sha256: bool = True,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.providers = list(providers) if providers else None
        self.intra_op_threads = intra_op_threads
        self.verify_sha256 = verify_sha256
        self.entries: list[ModelEntry] = []
        self.skipped: list[tuple[str, str]] = []
        self._loaded: dict[str, OnnxModel] = {}
        self._lock = threading.Lock()
        self.refresh()

    # ---------------------------------------------------------------- discovery
    def _manifest_rows(self) -> list[dict]:
        path = self.models_dir / MANIFEST
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data["models"]
            if not isinstance(rows, list):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            self.skipped.append((MANIFEST, "unreadable manifest (not JSON with a 'models' list); scanning *.onnx instead"))
            return []
        good = [r for r in rows if isinstance(r, dict) and isinstance(r.get("file"), str)]
        if len(good) != len(rows):
            self.skipped.append((MANIFEST, f"{len(rows) - len(good)} malformed manifest row(s) ignored"))
        return good

    def _candidates(self) -> list[tuple[str, str | None, dict]]:
        """``(file, expected sha256, manifest row)``: manifest rows first, then unlisted files."""
        rows = self._manifest_rows()
        listed = {r["file"] for r in rows}
        found = [(r["file"], r.get("sha256") if self.verify_sha256 else None, r) for r in rows]
        if self.models_dir.is_dir():
            for path in sorted(self.models_dir.glob("*.onnx")):
                if path.name not in listed:
                    found.append((path.name, None, {}))
        return found

    def refresh(self) -> None:
        """Re-read the folder. Cached sessions of models whose file changed are dropped."""
        entries: list[ModelEntry] = []
        skipped: list[tuple[str, str]] = []
        self.skipped = skipped
        for file, sha, row in self._candidates():
            path = self.models_dir / file
            if Path(file).name != file:
                skipped.append((file, "manifest paths must be plain file names in the models folder"))
                continue
            try:
                card = _validate(path, sha)
            except ModelError as error:
                skipped.append((file, str(error)))
                continue
            name = str(row.get("name") or card.name or path.stem)
            precision = card.precision
            name = _twin_name(entries, name, precision)
            if any(e.name == name for e in entries):
                skipped.append((file, f"duplicate model name {name!r}"))
                continue
            entries.append(
                ModelEntry(
                    name=name,
                    file=file,
                    variant=str(card.variant),
                    dataset=card.dataset,
                    test_acc=card.test_acc,
                    size_bytes=path.stat().st_size,
                    path=path,
                    card=card,
                    precision=precision,
                )
            )
        with self._lock:
            self.entries = entries
            valid = {e.name: e.path for e in entries}
            self._loaded = {n: m for n, m in self._loaded.items() if valid.get(n) == m.path}

    # ---------------------------------------------------------------- access
    def names(self) -> list[str]:
        """Names of the valid models, in entry order."""
        return [e.name for e in self.entries]

    def entry(self, name: str) -> ModelEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"unknown model {name!r}; available: {', '.join(self.names()) or 'none'}")

    def get(self, name: str) -> OnnxModel:
        """The loaded model (onnxruntime session created on first request, then cached)."""
        entry = self.entry(name)
        with self._lock:  # one session per model even if 8 requests arrive at once
            model = self._loaded.get(name)
            if model is None:
                model = OnnxModel(entry.path, self.providers, self.intra_op_threads)
                self._loaded[name] = model
            return model

    def default_name(self) -> str | None:
        """The model with the highest test accuracy (unknown accuracy ranks last); None if empty."""
        ranked = by_accuracy(self.entries)
        return ranked[0].name if ranked else None

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.models_dir)!r}, models={self.names()}, skipped={len(self.skipped)})"

    def summary(self) -> list[dict[str, Any]]:
        """``entries`` as plain dicts (for tables and JSON APIs)."""
        return [e.to_dict() for e in self.entries]
