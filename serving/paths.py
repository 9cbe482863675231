"""Where the project's own files are: the checkout these packages run from, its bundled
models and the data folder beside it. The one definition every tool's defaults use."""
from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED_MODELS_DIR", "REPO_ROOT", "SHARED_DATA_DIR"]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The models the dashboard serves by default (``exports/models``).
BUNDLED_MODELS_DIR = REPO_ROOT / "exports" / "models"
#: The data folder beside the project (where these machines keep CIFAR-10).
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
