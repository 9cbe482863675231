"""serving.runtime with real onnxruntime sessions: provider probing, OnnxModel, Prediction,
agreement with PyTorch through the full image path, thread safety, bad model files."""
from __future__ import annotations

import io
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from conftest import WIDTH
from exports.parity import DEFAULT_DATA_DIR, load_parity_images
from serving.cifar import CIFAR_MEAN_STD
from serving.images import ImageError
from serving.paths import REPO_ROOT
from serving.runtime import (
    CPU,
    ModelError,
    OnnxModel,
    card_problems,
    normalization_for,
    normalize_uint8,
    select_providers,
)
from training.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(
    not (DEFAULT_DATA_DIR / "cifar10_partial_test.npz").is_file(), reason=f"CIFAR-10 test images not in {DEFAULT_DATA_DIR}"
)


@pytest.fixture(scope="module")
def hybrid(onnx_bundle) -> OnnxModel:
    return OnnxModel(onnx_bundle / "models" / "hybrid.onnx")


def cuda_really_available() -> bool:
    return torch.cuda.is_available()


# --------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------
@pytest.mark.skipif(cuda_really_available(), reason="this check is about CPU-only machines")
def test_provider_probe_on_a_cpu_machine_is_cpu_only_and_silent(onnx_bundle):
    """onnxruntime-gpu lists CUDA here but cannot create it; the probe must not log that."""
    code = (
        "import onnxruntime as ort; from serving.runtime import select_providers, OnnxModel; "
        "assert 'CUDAExecutionProvider' in ort.get_available_providers(); "
        "print(select_providers()); "
        f"m = OnnxModel({str(onnx_bundle / 'models' / 'resnet18.onnx')!r}); print(m.providers); "
        "m.run(__import__('numpy').zeros((1, 3, 32, 32), 'float32'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['CPUExecutionProvider']", "['CPUExecutionProvider']"]
    assert result.stderr == ""  # no "[E:onnxruntime...] Failed to load library" noise


@pytest.mark.skipif(cuda_really_available(), reason="this check is about CPU-only machines")
def test_provider_probe_without_torch_loaded_is_silent_too():
    """The probe path that asks the CUDA driver directly (torch not imported)."""
    code = "import sys; from serving.runtime import select_providers; print(select_providers(), 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['CPUExecutionProvider'] False" and result.stderr == ""


def test_select_providers_always_ends_with_cpu():
    assert select_providers()[-1] == CPU
    assert select_providers(prefer_gpu=False) == [CPU]


# --------------------------------------------------------------------------------------
# OnnxModel
# --------------------------------------------------------------------------------------
def test_attributes(hybrid):
    assert hybrid.name == "hybrid"
    assert hybrid.card.variant == "hybrid" and hybrid.card.layers and "parity" in hybrid.card.to_dict()
    assert hybrid.class_names[:2] == ["airplane", "automobile"] and hybrid.num_classes == 10
    assert hybrid.feature_names == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert hybrid.providers == [CPU]
    assert hybrid.input_size == (32, 32)
    assert "hybrid" in repr(hybrid)


def test_run_any_batch_size(hybrid):
    for batch in (1, 5):
        logits, features = hybrid.run(np.zeros((batch, 3, 32, 32), np.float32))
        assert logits.shape == (batch, 10)
        assert features["layer2"].shape[:2] == (batch, 2 * WIDTH) and list(features) == hybrid.feature_names
    with pytest.raises(ValueError, match="expected a batch of shape"):
        hybrid.run(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="expected a batch of shape"):
        hybrid.run(np.zeros((1, 3, 64, 64), np.float32))


def test_predict_matches_pytorch_through_the_image_path(onnx_bundle, hybrid):
    """An encoded CIFAR test image -> predict() agrees with the PyTorch checkpoint."""
    images, _, _ = load_parity_images(4)
    model, card = load_checkpoint(onnx_bundle / "checkpoints" / "hybrid.json")
    with torch.no_grad():
        ref = model(torch.from_numpy(normalize_uint8(images, *normalization_for(card)))).numpy()
    for k, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        pred = hybrid.predict(buffer.getvalue(), top_k=3)
        np.testing.assert_allclose(pred.logits, ref[k], atol=1e-4, rtol=0)
        assert np.array_equal(pred.model_input, image)
        assert pred.top_k[0][0] == card.class_names[int(ref[k].argmax())]


def test_prediction_fields(hybrid):
    started = time.perf_counter()
    pred = hybrid.predict(np.full((48, 64, 3), 90, np.uint8))
    wall_ms = (time.perf_counter() - started) * 1000.0
    assert pred.probs.shape == (10,) and pred.probs.dtype == np.float32
    assert pred.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(pred.top_k) == 5 and [p for _, p in pred.top_k] == sorted((p for _, p in pred.top_k), reverse=True)
    assert pred.label == pred.top_k[0][0] and pred.confidence == pytest.approx(pred.probs.max())
    shapes = {o["name"]: tuple(o["shape"][1:]) for o in hybrid.card.outputs[1:]}
    assert {name: f.shape for name, f in pred.features.items()} == shapes
    assert pred.model_input.shape == (32, 32, 3) and pred.model_input.dtype == np.uint8
    # both timings measured (a 48x64 image is cropped and resized), and within the call's wall time
    assert 0 < pred.latency_ms and 0 < pred.preprocess_ms and pred.latency_ms + pred.preprocess_ms <= wall_ms


def test_predict_rejects_bad_images(hybrid):
    with pytest.raises(ImageError, match="not an image"):
        hybrid.predict(b"<html>not an image</html>")


def test_concurrent_predictions_match_sequential_ones(onnx_bundle):
    model = OnnxModel(onnx_bundle / "models" / "resnet18.onnx")
    images, _, _ = load_parity_images(16)
    sequential = [model.predict(image).logits for image in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda image: model.predict(image).logits, list(images) * 2))
    for k, logits in enumerate(concurrent):
        np.testing.assert_allclose(logits, sequential[k % 16], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------
# Normalisation and bad model files
# --------------------------------------------------------------------------------------
def test_normalization_prefers_the_card_then_the_dataset_constants():
    card = {"dataset": "cifar10", "normalize": {"mean": [0.1, 0.2, 0.3], "std": [1, 2, 3]}}
    assert normalization_for(card) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    # No card normalisation: the serving package's constants (the ones training uses).
    assert normalization_for({"dataset": "cifar10"}) == CIFAR_MEAN_STD["cifar10"]
    assert normalization_for({"dataset": "cifar100"}) == CIFAR_MEAN_STD["cifar100"]
    assert normalization_for({}) == CIFAR_MEAN_STD["cifar10"]
    with pytest.raises(ModelError, match="no input normalisation"):
        normalization_for({"dataset": "imagenet"})


def test_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError, match="junk.onnx: not a loadable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), tmp_path / "bare.onnx")
    with pytest.raises(ModelError, match="no model card"):
        OnnxModel(tmp_path / "bare.onnx")


def test_card_problems_spots_mismatches(hybrid):
    inputs = [(i.name, list(i.shape)) for i in hybrid.session.get_inputs()]
    outputs = [(o.name, list(o.shape)) for o in hybrid.session.get_outputs()]
    assert card_problems(hybrid.card, inputs, outputs) == []
    wrong_shape = hybrid.card.to_dict()  # a copy
    wrong_shape["outputs"][3]["shape"][2] = 16
    assert "layer2" in card_problems(wrong_shape, inputs, outputs)[0]
    dropped = dict(hybrid.card.to_dict(), outputs=hybrid.card.outputs[:-1])
    assert "card outputs" in card_problems(dropped, inputs, outputs)[0]
    classes = dict(hybrid.card.to_dict(), num_classes=100)
    assert "num_classes" in card_problems(classes, inputs, outputs)[0]
    assert card_problems([], inputs, outputs) == ["card is not a JSON object"]


# --------------------------------------------------------------------------------------
# Serving path: prepared pixels and session options (bundled model: no export needed)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundled_resnet18() -> OnnxModel:
    # The bundle serves int8 files (exports.quantize); a float bundle is NAME.onnx.
    paths = [REPO_ROOT / "exports" / "models" / name for name in ("resnet18.int8.onnx", "resnet18.onnx")]
    path = next((p for p in paths if p.is_file()), None)
    assert path is not None, "the bundled resnet18 is missing from exports/models"
    return OnnxModel(path)


def test_predict_pixels_of_prepare_is_predict(bundled_resnet18):
    image = next((REPO_ROOT / "dashboard" / "examples").glob("*.png"))
    seen = bundled_resnet18.prepare(str(image))
    assert seen.shape == (32, 32, 3) and seen.dtype == np.uint8
    whole, split = bundled_resnet18.predict(str(image)), bundled_resnet18.predict_pixels(seen)
    assert np.array_equal(whole.logits, split.logits) and whole.top_k == split.top_k
    assert whole.preprocess_ms > 0 and split.preprocess_ms == 0.0
    with pytest.raises(ValueError, match="prepared"):
        bundled_resnet18.predict_pixels(seen.astype(np.float32))


def test_sessions_do_not_spin(bundled_resnet18):
    """Idle onnxruntime threads must not busy-wait: on a 2-core server they slowed the
    requests that ran next."""
    options = bundled_resnet18.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
