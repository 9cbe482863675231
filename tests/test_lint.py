"""The code style the project holds itself to: ``ruff check`` with the rules in
``pyproject.toml`` (pycodestyle, pyflakes, import order, pyupgrade, bugbear) is clean."""
from __future__ import annotations

import subprocess
import sys

from serving.paths import REPO_ROOT


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "--no-cache", "."],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
