"""Speed and accuracy measurements; their results live in ``benchmarks/RESULTS.md``.

The GPU-window runbook is its own package, ``gpu_window``; the tables both print are in
``training.tables``."""
from __future__ import annotations

from pathlib import Path

from serving.files import atomic_write_text


def emit_report(report: str, markdown: Path | None) -> int:
    """Print a tool's Markdown report and, with ``--markdown``, write it (atomically): exit 0."""
    print(report)
    if markdown is not None:
        atomic_write_text(markdown, report)
    return 0
