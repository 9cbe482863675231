"""The serving boundary: ``serving``, ``robustness``, ``dashboard`` and ``app.py`` work without torch.

Two checks: a static one (no module on the serving side imports torch, ``hybrid_model`` or
the torch side of ``training``/``exports``, at module level or inside a function), and a
real one (``python app.py`` with those packages made unimportable classifies a real CIFAR
image and draws the Training tab through the public API).
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from conftest import run_app
from serving.cifar import CIFAR10_CLASSES
from serving.paths import REPO_ROOT

pytestmark = pytest.mark.timeout(600)

#: Packages a serving process must never import (torch, and the project's torch side).
BLOCKED = ("torch", "torchvision", "hybrid_model")
#: What the dashboard may import from ``training``: tables and plotly figures from cards.
DASHBOARD_TRAINING_OK = ("training.report",)

# A meta-path finder installed at interpreter start-up (sitecustomize): importing a blocked
# package (or any submodule) fails as if it were not installed.
SITECUSTOMIZE = '''
import sys

BLOCKED = {blocked!r}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by test_serving_boundary)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
print("test_serving_boundary: blocking", sorted(BLOCKED), file=sys.stderr, flush=True)
'''


def serving_modules() -> list[Path]:
    return [*sorted((REPO_ROOT / "serving").glob("*.py")), *sorted((REPO_ROOT / "robustness").glob("*.py")),
            *sorted((REPO_ROOT / "dashboard").glob("*.py")), REPO_ROOT / "app.py"]


def imported_names(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in a file (function bodies included);
    ``source`` is read from ``path`` unless given."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    names = []
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.append((node.lineno, module))
    return names


def forbidden(path: Path, module: str) -> bool:
    top = module.split(".")[0]
    if top in BLOCKED:
        return True
    if top == "training":
        return not (path.parent.name == "dashboard" and module in DASHBOARD_TRAINING_OK)
    return top == "exports"  # export tooling: stands on training and torch


@pytest.mark.parametrize("path", serving_modules(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_serving_modules_import_nothing_from_the_torch_side(path: Path):
    bad = [f"{path.relative_to(REPO_ROOT)}:{line}: imports {module}" for line, module in imported_names(path) if forbidden(path, module)]
    assert not bad, "\n".join(bad)


def test_the_static_check_sees_relative_and_nested_imports():
    """The check itself: a nested ``import torch.nn`` and ``from exports.checkpoint_io import x``
    in a serving module are both caught, and a relative import is resolved against its package
    (so the test above can fail)."""
    fake = REPO_ROOT / "serving" / "probe.py"
    source = "def f():\n    import torch.nn\n\nfrom exports.checkpoint_io import load_card\nfrom .runtime import STAGES\n"
    names = [module for _, module in imported_names(fake, source)]
    assert sorted(names) == ["exports.checkpoint_io", "serving.runtime", "torch.nn"]
    assert {module: forbidden(fake, module) for module in names} == {
        "torch.nn": True, "exports.checkpoint_io": True, "serving.runtime": False}
    assert not forbidden(REPO_ROOT / "dashboard" / "x.py", "training.report")
    assert forbidden(REPO_ROOT / "dashboard" / "x.py", "training.checkpoint")
    assert forbidden(fake, "training.report") and forbidden(fake, "hybrid_model.spectral")


def test_dashboard_serves_with_torch_unimportable(models_dir: Path, cifar_images, tmp_path, monkeypatch):
    """One server start: /models, /classify on a real CIFAR test image, /training."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    with run_app(models_dir, tmp_path) as server:
        client = Client(server.url, verbose=False)
        info = client.predict(api_name="/models")
        assert info["models"] and info["skipped"] == [], info
        image = cifar_images[0]
        value = client.predict(handle_file(str(image.path)), api_name="/classify")
        assert value["label"] in CIFAR10_CLASSES and len(value["confidences"]) == 5, value
        curves, _, reproduction, overview = client.predict(api_name="/training")
        assert '"data"' in curves["plot"] and len(overview["data"]) == len(info["models"])
        log = server.log()
    assert "test_serving_boundary: blocking" in log, log[-4000:]  # the blocker was active
