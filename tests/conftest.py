"""Shared fixtures: exported test models, a real dashboard server, real CIFAR test images.

* ``onnx_bundle`` (session): freshly initialised checkpoints of every variant
  (``checkpoints/<variant>.json|.safetensors``) exported once with the project's exporter
  (``exports.export.export_fresh``, parity checked on real CIFAR-10 test images) into
  ``models/`` with a manifest; the cards carry a short synthetic training history (so the
  Training tab has something to draw). One folder for the whole suite: the export, runtime,
  registry, quantisation and dashboard tests all read it (copy before changing a file).
  The models are quarter-width (``WIDTH``). Exporting all variants takes about 12 s on a 2-core
  CPU, so the folder is cached under
  ``artifacts/test-models/<key>/``, keyed by the source of the model and export code, the
  installed torch/onnx/onnxruntime versions and this file.
* ``models_dir`` (session): ``onnx_bundle / "models"``, or ``DASHBOARD_TEST_MODELS=DIR``
  (a ready folder of exported models) for the dashboard tests.
* ``app_server`` (session): ``python app.py --port P --models-dir <models_dir>`` as a
  subprocess on a free port, up once the page is served; ``run_app`` starts another.
* ``cifar_images``: the PNGs in ``dashboard/examples`` (bit-exact CIFAR-10 test images, label in
  the file name).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from serving.paths import REPO_ROOT
from serving.variants import PAPER_VARIANTS as VARIANTS

# torch's OpenMP (libgomp) otherwise spins ~3 ms at every barrier: on a 2-core machine where
# anything else runs (the suite's own servers and subprocesses, another test run), a spinning
# thread holds the core its partner needs and small training steps get up to ~80x slower
# (measured: 0.04 s -> 2.7 s a step of a quarter-width ResNet-18). Read when libgomp loads,
# so set here, before any test module imports torch; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: The longest files (wall seconds alone on a 2-core CPU, Dec 2026: 141, 132, 94, 67, 65, 54, 49;
#: the rest <= 20 each) run first. pyproject.toml splits the suite over two workers a file at
#: a time in collection order (-n 2 --dist loadfile --no-loadscope-reorder): a long file
#: started last would run alone at the end.
LONGEST_FILES_FIRST = ("test_training.py", "test_app.py", "test_gpu_window.py", "test_docs.py", "test_sweep.py",
                       "test_browser.py", "test_models.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


ASSETS = REPO_ROOT / "dashboard" / "examples"  # the app's examples
ARTIFACTS = REPO_ROOT / "artifacts"
#: Synthetic test accuracies: makes the default ("best") model deterministic: hybrid.
TEST_ACC = {"resnet18": 0.41, "spectral": 0.38, "diffstride": 0.44, "hybrid": 0.47, "diffstride2": 0.45}
DEFAULT_MODEL = "hybrid"
FIXTURE_VERSION = "4"
STRIDES = (1, 1, 2, 2, 2)
#: Quarter-width ResNet-18s (stages of 16/32/64/128 channels): the same layers and graph as
#: the bundled models with 1/16 of the weights, so exporting and serving them is fast.
WIDTH = 16

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


# --------------------------------------------------------------------------------------
# Exported models: one folder for the whole suite
# --------------------------------------------------------------------------------------
PARITY_IMAGES = 8  # the CLI default is 64; 8 keeps the suite within budget on 2 cores


def calibration_images() -> np.ndarray:
    """32 real CIFAR-10 training images (uint8 NHWC) to calibrate fresh models' BatchNorm."""
    from exports.parity import DEFAULT_DATA_DIR

    with np.load(DEFAULT_DATA_DIR / "cifar10_partial_train.npz") as data:
        return data["x"][:32]


@pytest.fixture(scope="session")
def onnx_bundle() -> Path:
    """Every variant exported (``onnx_bundle / "models" / "hybrid.onnx"``) with its
    checkpoint (``onnx_bundle / "checkpoints" / "hybrid.json"``); see the module docstring."""
    target = ARTIFACTS / "test-models" / _source_key()
    if not (target / ".complete").is_file():
        staging = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        build_test_models(staging)
        (staging / ".complete").write_text("ok\n")
        try:
            staging.rename(target)
        except OSError:  # another test session finished the same folder first: use that one
            shutil.rmtree(staging, ignore_errors=True)
        _drop_stale_caches(target)
    return target


@pytest.fixture(scope="session")
def models_dir(onnx_bundle: Path) -> Path:
    override = os.environ.get("DASHBOARD_TEST_MODELS")
    return Path(override) if override else onnx_bundle / "models"


@functools.lru_cache(maxsize=4)
def _reference_session(onnx_path: Path) -> tuple[object, dict]:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    card = json.loads({p.key: p.value for p in model.metadata_props}["card"])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), card


def reference_prediction(onnx_path: Path, image_path: Path) -> dict[str, float]:
    """``{class name: probability}`` of a 32x32 image through an exported model, computed
    without the project's serving code (PIL, numpy and a bare onnxruntime session, with the
    card's class names and mean/std): what the app's answers are checked against."""
    from PIL import Image

    session, card = _reference_session(Path(onnx_path))
    pixels = np.asarray(Image.open(image_path).convert("RGB"), np.float32) / 255.0
    assert pixels.shape == (32, 32, 3), "a reference for CIFAR-sized images only (no resizing)"
    mean, std = (np.asarray(card["normalize"][k], np.float32) for k in ("mean", "std"))
    x = ((pixels - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    logits = session.run(["logits"], {"input": x})[0][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return dict(zip(card["class_names"], probs.tolist()))


def top1(probs: dict[str, float]) -> str:
    return max(probs, key=probs.get)


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CifarImage:
    path: Path
    index: int
    label: str


@pytest.fixture(scope="session")
def cifar_images() -> list[CifarImage]:
    images = []
    for path in sorted(ASSETS.glob("*.png")):
        index, _, label = path.stem.partition("_")
        images.append(CifarImage(path, int(index), label))
    assert len(images) >= 20, f"expected the bundled CIFAR test images in {ASSETS}"
    return images


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
def _source_key() -> str:
    """A hash of what the exported files depend on: the model and export code (the serving
    side's card checks and manifest included), the library versions and this file."""
    from importlib.metadata import distributions

    digest = hashlib.sha256(FIXTURE_VERSION.encode())
    names = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions()
                   if str(d.metadata["Name"]).lower().startswith(("torch", "onnx")))  # onnxruntime(-gpu) too
    digest.update(" ".join(names).encode())
    sources = [*sorted((REPO_ROOT / "hybrid_model").rglob("*.py")), *sorted((REPO_ROOT / "serving").rglob("*.py")),
               *(REPO_ROOT / "exports" / name for name in ("export.py", "parity.py")), REPO_ROOT / "training" / "checkpoint.py",
               REPO_ROOT / "training" / "data.py"]
    for path in sources:
        if path.is_file():
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def _synthetic_history(card_strides: dict[str, list[float]], final_acc: float, seed: int, epochs: int = 6) -> list[dict]:
    """A short, clearly synthetic history (the Training tab needs one to draw), distinct per
    model: accuracy rises to ``final_acc``, DiffStride strides drift from their start."""
    history = []
    for epoch in range(1, epochs + 1):
        progress = 1.0 - 0.6 ** epoch
        acc = final_acc * progress / (1.0 - 0.6 ** epochs)
        history.append({
            "epoch": epoch,
            "train_loss": round(2.3 - 1.4 * progress - 0.05 * seed, 4),
            "train_acc": round(min(1.0, acc + 0.04), 4),
            "test_loss": round(2.35 - 1.2 * progress - 0.04 * seed, 4),
            "test_acc": round(acc, 4),
            "strides": {layer: [round(s[0] + (0.08 + 0.03 * k) * progress * (1 + seed), 4),
                                round(s[1] + (0.05 + 0.02 * k) * progress * (1 + seed), 4)]
                        for k, (layer, s) in enumerate(card_strides.items())},
            "seconds": 1.0,
        })
    return history


def build_test_models(out: Path, variants=VARIANTS) -> Path:
    """``exports.export.export_fresh`` of ``variants`` into ``out`` (``checkpoints/``,
    ``models/`` with manifest), each card with a synthetic history ending at ``TEST_ACC``."""
    from exports.export import export_fresh
    from hybrid_model import build_model, learned_strides

    fields = {}
    for seed, variant in enumerate(variants):
        start = learned_strides(build_model(variant, STRIDES, width=WIDTH))  # the fresh model's DiffStride layers
        history = _synthetic_history(start, TEST_ACC[variant], seed)
        fields[variant] = {"options": {"width": WIDTH}, "test_acc": history[-1]["test_acc"], "history": history,
                           "epoch": len(history), "epochs": len(history),
                           "data": {"source": "synthetic test card (untrained weights)", "n_train": 0, "n_test": 0}}
    export_fresh(out, variants, STRIDES, calibration_images=calibration_images(), card_fields=fields,
                 parity_images=PARITY_IMAGES, log=lambda _: None)
    return out


def _drop_stale_caches(keep: Path, max_age_s: float = 3600.0) -> None:
    """Remove other cached model folders (~30 MB each: models and checkpoints) unused for an hour."""
    now = time.time()
    for folder in keep.parent.iterdir():
        if folder.name.startswith(keep.name) or not folder.is_dir():
            continue
        if now - folder.stat().st_mtime > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def mixed_models_dir(models_dir: Path) -> Path:
    """Two datasets in one folder: ``resnet18`` (CIFAR-10, copied from ``models_dir``) and a
    fresh CIFAR-100 ``resnet18-c100`` (exported once, cached beside ``models_dir``)."""
    from exports.export import export_checkpoint
    from training.checkpoint import fresh_checkpoint

    target = models_dir.parent / f"{models_dir.name}-c100"
    if not (target / ".complete").is_file():
        staging = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _, card_path = fresh_checkpoint("resnet18", staging / "_ck" / "c100", dataset="cifar100", num_classes=100,
                                        options={"width": WIDTH},
                                        test_acc=0.2, data={"source": "synthetic test card", "n_train": 0, "n_test": 0})
        export_checkpoint(card_path, staging / "resnet18-c100.onnx", parity_images=4, log=lambda line: None)
        shutil.rmtree(staging / "_ck", ignore_errors=True)
        shutil.copy(models_dir / "resnet18.onnx", staging / "resnet18.onnx")  # unlisted: picked up by scanning
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        (target / ".complete").write_text("ok\n")
    return target


@pytest.fixture(scope="session")
def broken_models_dir(models_dir: Path, tmp_path_factory) -> Path:
    """One valid model, plus a corrupt .onnx, an ONNX file without a card, and an empty file."""
    folder = tmp_path_factory.mktemp("broken-models")
    shutil.copy(models_dir / "resnet18.onnx", folder / "resnet18.onnx")
    (folder / "corrupt.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 100)
    (folder / "empty.onnx").write_bytes(b"")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
              folder / "nocard.onnx")
    return folder


# --------------------------------------------------------------------------------------
# The app server
# --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AppServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


def _wait_until_serving(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"app did not serve {url} within {timeout:.0f}s:\n{log_path.read_text(errors='replace')[-4000:]}")


@contextmanager
def run_app(models: Path, log_dir: Path, timeout: float = 120.0, extra_args: tuple[str, ...] = ()) -> Iterator[AppServer]:
    """``python app.py --port P --models-dir models [extra_args]`` until the block ends."""
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    for attempt in range(3):
        port = free_port()
        log_path = log_dir / f"app-{port}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "app.py"), "--port", str(port), "--models-dir", str(models), *extra_args],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        url = f"http://127.0.0.1:{port}/"
        try:
            _wait_until_serving(url, process, log_path, timeout)
        except RuntimeError:
            process.kill()
            process.wait()
            if attempt == 2 or "address already in use" not in log_path.read_text(errors="replace").lower():
                raise
            continue
        break
    try:
        yield AppServer(url, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def app_server(models_dir: Path, tmp_path_factory) -> Iterator[AppServer]:
    with run_app(models_dir, tmp_path_factory.mktemp("app-logs")) as server:
        yield server


@pytest.fixture(scope="session")
def client(app_server: AppServer):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


# --------------------------------------------------------------------------------------
# Raw HTTP helpers (the app's /gradio_api/call route, as any HTTP client sees it)
# --------------------------------------------------------------------------------------
def files_in(folder: Path) -> set[Path]:
    return {f for f in folder.rglob("*") if f.is_file()}


def raw_call(url: str, api: str, data: list, timeout: float = 120) -> tuple[str, object]:
    """POST ``/gradio_api/call/{api}`` then read its event stream: ``(last event, its data)``."""
    request = urllib.request.Request(url + f"gradio_api/call/{api}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(url + f"gradio_api/call/{api}/{event_id}", timeout=timeout) as response:
        lines = response.read().decode().splitlines()
    events = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    payloads = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    return events[-1], json.loads(payloads[-1])


def data_url(payload: bytes) -> dict:
    """An image as the inline base64 data URL a client may send instead of an upload."""
    import base64

    return {"url": "data:image/png;base64," + base64.b64encode(payload).decode(), "meta": {"_type": "gradio.FileData"}}
