"""Atomic file writes and the file hash: the one implementation every writer uses.

Every write goes to a temporary file in the destination's folder, is flushed to disk
(``fsync``) and then renamed over the destination with ``os.replace``, so a reader (the
dashboard, a concurrent export) or a process killed mid-write only ever sees a complete
old or new file. Torch-free: training, the exporters and the server share it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MARKERS", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "file_sha256",
           "replace_marked_block", "update_marked_block"]

# Read once (os.umask can only be read by setting it): the mode a plain open() would give.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` (any writer that takes a file name: ``torch.save``,
    ``save_file``, ``fig.write_html``), then fsync and rename ``tmp_path`` over ``path``.

    The temporary file lives in ``path``'s folder (so the rename is atomic) and is removed
    if anything fails. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 (and some writers recreate it): usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (keys in insertion order, trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (models are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


#: The start and end markers of a generated block in a Markdown file (README, RESULTS.md).
MARKERS = ("<!-- {name}:start -->", "<!-- {name}:end -->")


def replace_marked_block(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` replaced;
    ``ValueError`` when the markers are missing or out of order."""
    start, end = (marker.format(name=name) for marker in MARKERS)
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise ValueError(f"markers {start} ... {end} not found")
    head, rest = text.split(start, 1)
    return head + start + "\n" + body.rstrip("\n") + "\n" + end + rest.split(end, 1)[1]


def update_marked_block(path: str | os.PathLike, name: str, body: str) -> Path:
    """Rewrite the block ``name`` of the file at ``path`` (atomically) with ``body``."""
    path = Path(path)
    return atomic_write_text(path, replace_marked_block(path.read_text(encoding="utf-8"), name, body))
