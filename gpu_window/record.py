"""Where one device call writes: the ``Window`` record (``OUT/window.json`` rewritten after
every event, ``OUT/window.log``), the work folders of its modes, and the runbook's error.
The ground of the package (stdlib and ``serving.files``)."""
from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.files import atomic_write_json
from serving.paths import REPO_ROOT


class WindowError(RuntimeError):
    """A condition the runbook reports in one line (exit status 2)."""


@dataclass
class Window:
    """The state of one device call, mirrored into ``OUT/window.json`` after every event."""

    out: Path
    mode: str
    budget: float
    start: float = field(default_factory=time.monotonic)
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "window.log"
        self.record.update(mode=self.mode, budget_s=self.budget, started=_now(), runs=[], steps=[])

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def log(self, text: str, error: bool = False) -> None:
        line = f"[{self.elapsed():6.1f}s] {text}"
        print(line, flush=True, file=sys.stderr if error else sys.stdout)
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def save(self) -> None:
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        atomic_write_json(self.out / "window.json", self.record)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def work_dir(mode: str) -> Path:
    """Where a mode's runs write (``$GPU_WINDOW_WORK`` or ``runs/gpu_window``, then the mode):
    git-ignored, so it stays on a warm device machine between the calls of one window."""
    return Path(os.environ.get("GPU_WINDOW_WORK") or (REPO_ROOT / "runs" / "gpu_window")) / mode
