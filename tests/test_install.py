"""The install split: ``requirements.txt`` serves the dashboard, ``requirements-train.txt``
adds training/export, ``requirements-dev.txt`` (the test command's file) installs both.

The key test runs the serving path (``app.create_app`` on the bundled models, one real
CIFAR image classified through the service layer, the Training tab's figures) in a fresh
interpreter where every package that only the training file brings in (torch,
torchvision, onnxscript, safetensors, ...) is made unimportable, and then checks that each
third-party module it loaded belongs to a distribution that ``requirements.txt`` installs
(directly or as a dependency). So a new ``import torch`` (or of any unlisted package) on
the serving path fails here, not on a new user's machine.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import reference_prediction, top1
from serving.paths import REPO_ROOT

TRAINING_ONLY = {"torch", "torchvision", "onnxscript", "safetensors"}


def requirement_names(path: Path) -> set[str]:
    """Canonical distribution names a requirements file installs (following ``-r``)."""
    names: set[str] = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            names |= requirement_names(path.parent / line.split(maxsplit=1)[1])
            continue
        assert not line.startswith("-"), f"{path.name}: unexpected option line {raw!r}"
        names.add(canonicalize_name(Requirement(line).name))
    return names


def pinned(path: Path) -> list[str]:
    """Lines of ``path`` itself (not its includes) that are not ``==`` pins."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines
            if line and not line.startswith("-r ") and not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", line)]


def dependency_closure(roots: set[str]) -> set[str]:
    """``roots`` plus every distribution they require, as installed here (markers applied)."""
    env = default_environment()
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


SERVING = requirement_names(REPO_ROOT / "requirements.txt")
TRAIN = requirement_names(REPO_ROOT / "requirements-train.txt")
DEV = requirement_names(REPO_ROOT / "requirements-dev.txt")


def test_files_split_serving_training_and_tests():
    assert not SERVING & TRAINING_ONLY, "requirements.txt must not pull in the training stack"
    assert SERVING < TRAIN and TRAINING_ONLY <= TRAIN, "requirements-train.txt = serving + training/export"
    assert TRAIN < DEV and "pytest" in DEV, "requirements-dev.txt installs everything plus test tools"
    for name in ("requirements.txt", "requirements-train.txt", "requirements-dev.txt"):
        assert pinned(REPO_ROOT / name) == [], f"{name}: every requirement is pinned with =="


def test_readme_commands_use_the_right_files():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -r requirements.txt && .venv/bin/python app.py" in readme
    assert "pip install -r requirements-dev.txt && .venv/bin/python -m pytest" in readme
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -q -r requirements-dev.txt && .venv/bin/python -m pytest" in ci


# The serving path, run in a child interpreter. argv: blocked top-level modules (JSON), models
# dir, image. Prints JSON: the top class and every module imported after start-up.
SERVE_SCRIPT = r"""
import importlib.abc, json, sys
BLOCKED = set(json.loads(sys.argv[1]))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in requirements.txt)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
before = set(sys.modules)
import app
demo, service = app.create_app(sys.argv[2])
name = service.default_name()
analysis = service.analyse(sys.argv[3], name)
from dashboard import training_views
cards = {n: service.card(n) for n in service.names()}
training_views.curves(cards)
training_views.strides(cards[name], name)
print(json.dumps({"model": name, "top": str(analysis.topk[0][0]), "modules": sorted(set(sys.modules) - before)}))
"""


def _top_level_modules(distributions: set[str]) -> set[str]:
    owners = metadata.packages_distributions()
    return {module for module, dists in owners.items() if any(canonicalize_name(d) in distributions for d in dists)}


@pytest.mark.timeout(240)
def test_serving_path_imports_only_what_requirements_txt_installs():
    allowed = dependency_closure(SERVING)
    assert "gradio" in allowed and "onnxruntime-gpu" in allowed
    training_only = (dependency_closure(TRAIN) - allowed) | TRAINING_ONLY
    blocked = _top_level_modules(training_only) | TRAINING_ONLY
    assert {"torch", "torchvision", "safetensors"} <= blocked
    image = sorted((REPO_ROOT / "dashboard" / "examples").glob("*.png"))[0]
    done = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, json.dumps(sorted(blocked)), str(REPO_ROOT / "exports" / "models"), str(image)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    from serving.registry import ModelRegistry

    served = ModelRegistry(REPO_ROOT / "exports" / "models").entry(result["model"])  # the model's own argmax, computed apart
    assert result["top"] == top1(reference_prediction(REPO_ROOT / "exports" / "models" / served.file, image))
    owners = metadata.packages_distributions()
    unlisted = {}
    for module in result["modules"]:
        top = module.split(".")[0]
        dists = {canonicalize_name(d) for d in owners.get(top, [])}
        if dists and not dists & allowed:
            unlisted[top] = sorted(dists)
    assert unlisted == {}, f"the serving path imports packages requirements.txt does not install: {unlisted}"


def test_blocker_catches_a_training_import():
    """The harness can fail: a serving process that imports torch is caught."""
    done = subprocess.run(
        # the import comes first: the blocker is what is checked, so Gradio need not load (~10 s)
        [sys.executable, "-c", SERVE_SCRIPT.replace("import app\n", "import torch\nimport app\n"),
         json.dumps(["torch"]), str(REPO_ROOT / "exports" / "models"), "unused.png"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=200,
    )
    assert done.returncode != 0 and "blocked: not in requirements.txt" in done.stderr
