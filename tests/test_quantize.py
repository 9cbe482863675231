"""int8 quantisation (``exports.quantize``): QDQ graph with per-channel int8 weights, the
spectral MatMuls kept float, the accuracy gate on real CIFAR-10 test images, the card and
manifest, the registry preferring the int8 twin, and the command line's failure modes.

Models are the session's freshly initialised exports (``conftest.onnx_bundle``), so the
gate runs on few images with loose limits here; the bundled models' figures are checked in
``test_bundled_models.py``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from exports import quantize as Q
from exports.parity import DEFAULT_DATA_DIR
from serving.paths import REPO_ROOT
from serving.registry import ModelRegistry

FAST = dict(calibration_images=32, test_images=64, max_acc_drop=100.0, min_agreement=0.0, log=lambda _: None)

pytestmark = pytest.mark.skipif(
    not (DEFAULT_DATA_DIR / "cifar10_test_jpeg.npz").is_file(), reason=f"CIFAR-10 JPEG copy not in {DEFAULT_DATA_DIR}"
)


def card_of(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return json.loads({p.key: p.value for p in model.metadata_props}["card"])


@pytest.fixture(scope="module")
def int8_hybrid(onnx_bundle, tmp_path_factory) -> tuple[Path, Q.QuantizeResult]:
    folder = tmp_path_factory.mktemp("int8")
    shutil.copy(onnx_bundle / "models" / "hybrid.onnx", folder / "hybrid.onnx")
    return folder, Q.quantize_model(folder / "hybrid.onnx", folder / "hybrid.int8.onnx", **FAST)


def test_graph_is_qdq_int8_with_float_spectral_matmuls(int8_hybrid):
    folder, result = int8_hybrid
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    weights = {i.name: i for i in model.graph.initializer}
    produced_by = {o: n for n in model.graph.node for o in n.output}
    float_model = Q.float_weights(onnx.load(str(folder / "hybrid.onnx")))
    ends = set(Q.end_layers(float_model))
    assert len(ends) == 2  # the stem conv and the classifier stay float
    for node in model.graph.node:
        if node.name in ends:
            assert weights[node.input[1]].data_type == onnx.TensorProto.FLOAT
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in ends]
    assert len(convs) >= 19
    for conv in convs:  # every other conv reads an int8 per-channel kernel through DequantizeLinear
        dq = produced_by[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert weights[dq.input[0]].data_type == onnx.TensorProto.INT8
        assert len(weights[dq.input[1]].dims) == 1 and weights[dq.input[1]].dims[0] > 1  # one scale per channel
    spectral = [n for n in model.graph.node if n.name in set(Q.spectral_matmuls(float_model))]
    assert spectral, "the hybrid model has frozen spectral MatMuls"
    for node in spectral:  # kept float: the constant operand is a float initializer, not a DequantizeLinear
        constant = [i for i in node.input if i in weights]
        assert constant and weights[constant[0]].data_type == onnx.TensorProto.FLOAT
    # the outputs keep their names and shapes: the runtime and registry accept the file
    assert [o.name for o in model.graph.output] == [o["name"] for o in result.card["outputs"]]
    assert result.size_bytes < 0.4 * (folder / "hybrid.onnx").stat().st_size


def test_card_manifest_and_gate_figures(int8_hybrid):
    folder, result = int8_hybrid
    card = card_of(result.path)
    float_card = card_of(folder / "hybrid.onnx")
    assert card["name"] == "hybrid" and card["export"]["precision"] == "int8"
    assert float_card["export"]["precision"] == "fp32"
    assert card["parity"] is None and card["float_parity"] == float_card["parity"]
    gate = card["accuracy_gate"]
    assert gate["n_images"] == 64 and gate["source"].startswith("CIFAR-10 test (JPEG copy)")
    assert 0.0 <= gate["top1_agreement"] <= 1.0 and gate["passed"]
    assert card["export"]["quantization"]["spectral_matmuls"] == "float"
    assert "CIFAR-10 train" in card["export"]["quantization"]["calibration"]
    for key in ("variant", "strides", "learned_strides", "history", "test_acc", "normalize", "layers"):
        assert card[key] == float_card[key], key
    rows = {m["file"]: m for m in json.loads((folder / "manifest.json").read_text())["models"]}
    assert rows["hybrid.int8.onnx"]["precision"] == "int8" and rows["hybrid.int8.onnx"]["name"] == "hybrid"


def test_int8_agrees_with_float_on_real_images(int8_hybrid, onnx_bundle):
    """Even untrained, int8 must track the float model's logits closely on real images."""
    folder, result = int8_hybrid
    images, _, _ = Q.load_cifar10_jpeg("test", 32)
    from serving.runtime import normalization_for, normalize_uint8

    x = normalize_uint8(images, *normalization_for(result.card))
    f = Q._session(folder / "hybrid.onnx").run(["logits"], {"input": x})[0]
    q = Q._session(result.path).run(["logits"], {"input": x})[0]
    scale = np.abs(f).max()
    assert np.abs(f - q).max() < 0.25 * scale and not np.allclose(f, q, atol=1e-6 * scale)


def test_registry_serves_the_int8_twin_and_keeps_the_float_one(int8_hybrid):
    folder, _ = int8_hybrid
    registry = ModelRegistry(folder)
    assert registry.skipped == []
    assert sorted(registry.names()) == ["hybrid", "hybrid-fp32"]
    assert registry.entry("hybrid").precision == "int8" and registry.entry("hybrid").file == "hybrid.int8.onnx"
    assert registry.entry("hybrid-fp32").file == "hybrid.onnx"
    assert registry.default_name() == "hybrid"
    image = sorted((REPO_ROOT / "dashboard" / "examples").glob("*.png"))[0]
    a, b = registry.get("hybrid").predict(str(image)), registry.get("hybrid-fp32").predict(str(image))
    assert abs(float(a.probs.sum()) - 1) < 1e-4 and set(a.features) == set(b.features)


def test_evaluate_fails_a_model_that_disagrees(onnx_bundle):
    images, labels, source = Q.load_cifar10_jpeg("test", 64)
    from serving.runtime import normalize_uint8

    x = normalize_uint8(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    a = onnx.load(str(onnx_bundle / "models" / "resnet18.onnx"))
    b = onnx.load(str(onnx_bundle / "models" / "hybrid.onnx"))  # a different network: low agreement
    assert Q.evaluate(a, a, x, labels, source).passed
    report = Q.evaluate(a, b, x, labels, source, max_acc_drop=100.0, min_agreement=0.95)
    assert report.top1_agreement < 0.95 and not report.passed


def test_cli_gate_failure_writes_nothing(onnx_bundle, tmp_path, capsys):
    out = tmp_path / "r.int8.onnx"
    code = Q.main([str(onnx_bundle / "models" / "resnet18.onnx"), "--out", str(out), "--calibration-images", "16",
                   "--test-images", "32", "--max-acc-drop", "-100"])
    err = capsys.readouterr().err
    assert code == 1 and "accuracy gate failed" in err and "not written" in err
    assert not out.exists() and not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.onnx", "--out", "x.onnx"], "not found"),
        (["README.md", "--out", "x.onnx"], "not an ONNX model"),
        (["{model}", "--out", "x.txt"], "must end in .onnx"),
        (["{model}", "--out", "x.onnx", "--calibration-images", "0"], "need 1.."),
        (["{model}", "--out", "x.onnx", "--min-agreement", "2"], "--min-agreement"),
        (["{int8}", "--out", "x.onnx"], "already int8"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(int8_hybrid, onnx_bundle, tmp_path, args, message):
    folder, result = int8_hybrid
    args = [a.format(model=onnx_bundle / "models" / "resnet18.onnx", int8=result.path) for a in args]
    args = [str(tmp_path / a) if a in ("x.onnx", "x.txt") else a for a in args]
    done = subprocess.run([sys.executable, "-m", "exports.quantize", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr
    assert not list(tmp_path.iterdir())


def test_calibration_and_gate_images_are_the_trainers_images():
    """Read through training.data: the gate's first N test images and the seeded calibration
    draw from the first CALIBRATION_POOL training images (same seed, same images)."""
    from training.data import load_cifar

    data = load_cifar("cifar10", DEFAULT_DATA_DIR, source="jpeg", limit_train=Q.CALIBRATION_POOL)
    x, y, what = Q.load_cifar10_jpeg("train", 8, seed=1)
    drawn = np.sort(np.random.default_rng(1).choice(Q.CALIBRATION_POOL, 8, replace=False))
    assert np.array_equal(x, data.x_train.numpy()[drawn]) and np.array_equal(y, data.y_train.numpy()[drawn])
    assert what == f"CIFAR-10 train (JPEG copy), 8 drawn from the first {Q.CALIBRATION_POOL} (seed 1)"
    assert not np.array_equal(x, Q.load_cifar10_jpeg("train", 8, seed=2)[0])
    x, y, what = Q.load_cifar10_jpeg("test", 8)
    assert np.array_equal(x, data.x_test.numpy()[:8]) and what == "CIFAR-10 test (JPEG copy), first 8"


@pytest.mark.parametrize("module, expected", [
    ("exports.quantize", ["--test-images TEST_IMAGES CIFAR-10 test images for the accuracy gate (default:",
                          "--max-acc-drop MAX_ACC_DROP largest accepted accuracy loss, in points (default:"]),
    ("exports.export", ["--parity-images PARITY_IMAGES CIFAR-10 test images for parity (0 skips) (default:"]),
])
def test_help_shows_the_defaults(module, expected):
    """Every option with a value says its default; switches and 'default ...' helps are not repeated."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    text = " ".join(result.stdout.split())
    assert result.returncode == 0 and all(e in text for e in expected), text
    assert "(default: None)" not in text and "(default: False)" not in text
