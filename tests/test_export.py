"""ONNX export of every variant: checker, named outputs, dynamic batch, embedded card,
parity with PyTorch on real CIFAR-10 test images (fp32 and fp16 weights), manifest, and
the command line's failure modes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from conftest import PARITY_IMAGES, calibration_images
from exports import export as E
from exports.parity import DEFAULT_DATA_DIR, FP16_TOLERANCE, FP32_TOLERANCE, check_parity, load_parity_images
from exports.parity import main as parity_main
from hybrid_model import PAPER_VARIANTS, build_model, describe_downsampling
from serving.paths import REPO_ROOT
from serving.runtime import normalization_for, normalize_uint8
from training.checkpoint import CheckpointError, fresh_checkpoint, load_checkpoint, make_card, save_checkpoint

VARIANTS = PAPER_VARIANTS

pytestmark = pytest.mark.skipif(
    not (DEFAULT_DATA_DIR / "cifar10_partial_test.npz").is_file(), reason=f"CIFAR-10 test images not in {DEFAULT_DATA_DIR}"
)


@pytest.fixture(scope="session")
def bundle(onnx_bundle) -> Path:
    """Every variant, exported once for the suite (``conftest.onnx_bundle``)."""
    return onnx_bundle


def onnx_card(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return json.loads({p.key: p.value for p in model.metadata_props}["card"])


def session(path_or_bytes) -> ort.InferenceSession:
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------
# Every variant
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_graph_checks_and_named_outputs(bundle, variant):
    path = bundle / "models" / f"{variant}.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    names = [o.name for o in model.graph.output]
    head = ["head"] if variant in ("hybrid", "diffstride2") else []
    assert names == ["logits", "stem", "layer1", "layer2", "layer3", "layer4", *head]
    for value in [*model.graph.input, *model.graph.output]:  # batch axis symbolic everywhere
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.HasField("dim_value")


@pytest.mark.parametrize("variant", VARIANTS)
def test_card_round_trips(bundle, variant):
    card = onnx_card(bundle / "models" / f"{variant}.onnx")
    model, training_card = load_checkpoint(bundle / "checkpoints" / f"{variant}.json")
    for key, value in training_card.to_dict().items():  # every training field survives as written
        assert card[key] == json.loads(json.dumps(value)), key
    assert card["name"] == variant
    assert card["layers"] == json.loads(json.dumps([i.to_dict() for i in describe_downsampling(model)]))
    assert {"flops", "params", "activation_bytes"} <= set(card["cost"])
    from serving.files import file_sha256

    assert card["source_checkpoint_sha256"] == file_sha256(bundle / "checkpoints" / f"{variant}.safetensors")
    graph = onnx.load(str(bundle / "models" / f"{variant}.onnx"), load_external_data=False)
    assert [o["name"] for o in card["outputs"]] == [o.name for o in graph.graph.output]
    assert card["parity"]["passed"] and card["parity"]["n_images"] == PARITY_IMAGES
    assert card["export"]["fp16_weights"] is False and card["export"]["opset"] >= 17


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_fp32_on_real_images(bundle, variant):
    card = onnx_card(bundle / "models" / f"{variant}.onnx")
    parity = card["parity"]
    assert parity["logits_scale"] < 20  # BN-calibrated: CIFAR-scale logits, so the limit is ~1e-4
    assert parity["logits_max_abs"] <= parity["limit"] <= FP32_TOLERANCE + 2e-5
    assert parity["top1_agreement"] == 1.0
    assert set(parity["features_max_abs"]) == {o["name"] for o in card["outputs"][1:]}
    assert "bit-exact" in parity["source"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_dynamic_batch(bundle, variant):
    sess = session(bundle / "models" / f"{variant}.onnx")
    model, card = load_checkpoint(bundle / "checkpoints" / f"{variant}.json")
    images, _, _ = load_parity_images(5)
    x = normalize_uint8(images, *normalization_for(card))
    one = sess.run(None, {"input": x[:1]})
    five = sess.run(None, {"input": x})
    with torch.no_grad():
        ref_logits, ref_features = model.forward_features(torch.from_numpy(x))
    assert one[0].shape == (1, 10) and five[0].shape == (5, 10)
    np.testing.assert_allclose(five[0], ref_logits.numpy(), atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(one[0][0], five[0][0], atol=FP32_TOLERANCE, rtol=0)
    for out, name in zip(five[1:], [o.name for o in sess.get_outputs()][1:]):
        assert out.shape == tuple(ref_features[name].shape)


def _kernel_bytes(model: onnx.ModelProto) -> tuple[int, int]:
    """(bytes, count) of the float32 4-D initializers ``fp16_weights`` converts."""
    kernels = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    kernels = [k for k in kernels if k.ndim == 4 and k.size >= 1024]
    return sum(k.nbytes for k in kernels), len(kernels)


def test_conv_kernels_are_the_bulk_of_a_resnet18():
    """Why fp16 kernels halve a full-width model's file: they are > 99.8% of its parameters."""
    model = build_model("hybrid")
    kernels = sum(p.numel() for p in model.parameters() if p.dim() == 4)
    assert kernels > 0.998 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_fp16_weights_halve_the_file_within_tolerance(bundle, variant):
    path = bundle / "models" / f"{variant}.onnx"
    original = onnx.load(str(path))
    half = E.fp16_weights(original)
    onnx.checker.check_model(half, full_check=True)
    data = half.SerializeToString()
    # Every kernel's bytes are halved; each costs a Cast node and a renamed initializer.
    kernel_bytes, kernels = _kernel_bytes(original)
    saved = path.stat().st_size - len(data)
    assert kernel_bytes / 2 - 200 * kernels < saved <= kernel_bytes / 2
    model, card = load_checkpoint(bundle / "checkpoints" / f"{variant}.json")
    report = check_parity(model, data, card, n_images=8, fp16_weights=True)
    assert report.passed and report.limit == FP16_TOLERANCE * max(1.0, report.logits_scale)
    assert report.logits_max_abs <= report.limit
    assert report.logits_max_abs > 0  # really rounded


def test_manifest_lists_every_export(bundle):
    manifest = json.loads((bundle / "models" / "manifest.json").read_text())
    entries = {m["name"]: m for m in manifest["models"]}
    assert set(entries) >= set(VARIANTS)
    from serving.files import file_sha256

    for variant in VARIANTS:
        entry, path = entries[variant], bundle / "models" / f"{variant}.onnx"
        assert entry["file"] == path.name and entry["variant"] == variant and entry["dataset"] == "cifar10"
        assert entry["size_bytes"] == path.stat().st_size and entry["sha256"] == file_sha256(path)
        assert entry["test_acc"] == pytest.approx(onnx_card(path)["test_acc"])
        assert entry["precision"] == onnx_card(path)["export"]["precision"] == "fp32"
    assert not list((bundle / "models").glob("*.tmp")) and not list((bundle / "models").glob(".*"))


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    """A resnet18 checkpoint (the fastest variant to export) for the CLI tests."""
    base = tmp_path_factory.mktemp("cli") / "small"
    fresh_checkpoint("resnet18", base, calibration_images=calibration_images(), test_acc=0.1)
    return base.with_suffix(".json")


def test_cli_fp16_export_updates_manifest(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "models" / "tiny.onnx"
    code = E.main([str(small_checkpoint.with_suffix(".safetensors")), "--out", str(out), "--fp16-weights",
                   "--parity-images", "8", "--name", "tiny-fp16"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "PASSED" in printed and "top-1 agreement" in printed and "layer4" in printed
    card = onnx_card(out)
    assert card["name"] == "tiny-fp16" and card["export"]["fp16_weights"] is True
    assert "fp16" in card["parity"]["tolerance_rule"] and card["parity"]["limit"] >= FP16_TOLERANCE
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(out)).graph.initializer)
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["tiny-fp16"] and manifest["models"][0]["fp16_weights"]
    assert card["export"]["precision"] == manifest["models"][0]["precision"] == "fp16"


def _one_line_error(capsys, code: int, expected_code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expected_code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, err
    return err


def test_cli_parity_failure_writes_nothing(small_checkpoint, tmp_path, capsys, monkeypatch):
    real_freeze = E.freeze

    def broken_freeze(model, size):  # an export bug: the frozen copy drifts from the model
        frozen = real_freeze(model, size)
        with torch.no_grad():
            frozen.fc.bias += 1e-3
        return frozen

    monkeypatch.setattr(E, "freeze", broken_freeze)
    out = tmp_path / "bad.onnx"
    code = E.main([str(small_checkpoint), "--out", str(out), "--parity-images", "8"])
    _one_line_error(capsys, code, 1, "parity check failed", "not written")
    assert not out.exists() and not (tmp_path / "manifest.json").exists()
    assert not list(tmp_path.iterdir())


def test_parity_cli_detects_a_tampered_weight(bundle, tmp_path, capsys):
    model = onnx.load(str(bundle / "models" / "resnet18.onnx"))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    tampered = numpy_helper.to_array(init).copy()
    tampered.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(tampered, init.name))
    path = tmp_path / "tampered.onnx"
    onnx.save(model, str(path))
    checkpoint = str(bundle / "checkpoints" / "resnet18.json")
    assert parity_main([str(bundle / "models" / "resnet18.onnx"), checkpoint, "--images", "8"]) == 0
    capsys.readouterr()
    assert parity_main([str(path), checkpoint, "--images", "8"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_cli_missing_checkpoint_in_a_fresh_process(tmp_path):
    """Real subprocess: exit 2 and exactly one line on stderr (no traceback)."""
    result = subprocess.run(
        [sys.executable, "-m", "exports.export", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x.onnx")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.json'}: card file not found"]


def test_cli_corrupt_checkpoint(small_checkpoint, tmp_path, capsys):
    card = json.loads(small_checkpoint.read_text())
    (tmp_path / "c.json").write_text(json.dumps(card))
    (tmp_path / "c.safetensors").write_bytes(b"\x00\x01 definitely not safetensors " * 10)
    code = E.main([str(tmp_path / "c.json"), "--out", str(tmp_path / "c.onnx")])
    _one_line_error(capsys, code, 2, "c.safetensors", "not a readable safetensors checkpoint")


def test_cli_truncated_checkpoint(small_checkpoint, tmp_path, capsys):
    data = small_checkpoint.with_suffix(".safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "t.json").write_text(small_checkpoint.read_text())
    code = E.main([str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "t.onnx")])
    _one_line_error(capsys, code, 2, "not a readable safetensors checkpoint")


@pytest.mark.parametrize("variant, messages", [
    ("resnet50", ("unknown variant 'resnet50'",)),  # not a variant at all
    ("hybrid", ("weights do not match the card", "missing")),  # resnet18 weights, hybrid card
])
def test_cli_card_names_the_wrong_variant(small_checkpoint, tmp_path, capsys, variant, messages):
    card = json.loads(small_checkpoint.read_text()) | {"variant": variant}
    (tmp_path / "m.json").write_text(json.dumps(card))
    (tmp_path / "m.safetensors").write_bytes(small_checkpoint.with_suffix(".safetensors").read_bytes())
    code = E.main([str(tmp_path / "m.json"), "--out", str(tmp_path / "m.onnx")])
    _one_line_error(capsys, code, 2, *messages)


def test_cli_bad_card_json_and_suffix(small_checkpoint, tmp_path, capsys):
    (tmp_path / "j.json").write_text("{not json")
    (tmp_path / "j.safetensors").write_bytes(small_checkpoint.with_suffix(".safetensors").read_bytes())
    _one_line_error(capsys, E.main([str(tmp_path / "j.json"), "--out", str(tmp_path / "j.onnx")]), 2, "not valid JSON")
    _one_line_error(capsys, E.main([str(small_checkpoint), "--out", str(tmp_path / "j.pt")]), 2, "must end in .onnx")
    _one_line_error(capsys, E.main([str(tmp_path / "j.txt"), "--out", str(tmp_path / "j.onnx")]), 2, ".safetensors")


def test_parity_cli_rejects_a_non_onnx_file(small_checkpoint, tmp_path, capsys):
    fake = tmp_path / "fake.onnx"
    fake.write_text("this is not a protobuf\n" * 20)
    _one_line_error(capsys, parity_main([str(fake), str(small_checkpoint)]), 2, "fake.onnx")
    _one_line_error(capsys, parity_main([str(tmp_path / "none.onnx"), str(small_checkpoint)]), 2, "not found")


# --------------------------------------------------------------------------------------
# training.checkpoint on its own
# --------------------------------------------------------------------------------------
def test_checkpoint_round_trip_keeps_learned_strides(tmp_path):
    model = build_model("diffstride", (1, 1, 2, 2, 2))
    with torch.no_grad():
        model.layer2[0].spectral_pool.stride.fill_(2.7)
    card = make_card(model, "diffstride", (1, 1, 2, 2, 2), test_acc=0.5)
    save_checkpoint(model, card, tmp_path / "d")
    loaded, loaded_card = load_checkpoint(tmp_path / "d.safetensors")
    assert loaded.layer2[0].spectral_pool.stride.tolist() == pytest.approx([2.7, 2.7])
    assert loaded_card.learned_strides["layer2.0.spectral_pool"] == pytest.approx([2.7, 2.7])
    assert set(loaded_card.to_dict()) >= {"variant", "dataset", "num_classes", "class_names", "strides", "options", "history",
                                "test_acc", "data", "normalize", "command", "code_version", "seed", "created"}


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        (tmp_path / "a.json").write_text("{}")
        load_checkpoint(tmp_path / "a.json")
    (tmp_path / "a.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="lacks required key"):
        load_checkpoint(tmp_path / "a.json")
    (tmp_path / "a.json").write_text(json.dumps({"variant": "resnet18", "strides": [1, 1, 2, 2, 2]}))
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "a.json")


def test_fresh_models_never_go_into_the_bundled_folder():
    manifest = REPO_ROOT / "exports" / "models" / "manifest.json"
    before = manifest.read_bytes()
    with pytest.raises(ValueError, match="never write them into exports/models"):
        E.export_fresh(REPO_ROOT / "exports", ["resnet18"])
    assert manifest.read_bytes() == before  # refused before anything was written
    assert not (REPO_ROOT / "exports" / "checkpoints").exists()
