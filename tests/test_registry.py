"""serving.registry: discovery from manifest.json and *.onnx, validation with reasons,
lazy cached loading, default model choice — never crashing on a bad file."""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest

from exports.parity import DEFAULT_DATA_DIR
from serving.registry import ModelRegistry
from serving.runtime import OnnxModel

pytestmark = pytest.mark.skipif(
    not (DEFAULT_DATA_DIR / "cifar10_partial_test.npz").is_file(), reason=f"CIFAR-10 test images not in {DEFAULT_DATA_DIR}"
)


@pytest.fixture
def models_dir(onnx_bundle, tmp_path) -> Path:
    """A models folder with two good models and their manifest entries."""
    folder = tmp_path / "models"
    folder.mkdir()
    manifest = json.loads((onnx_bundle / "models" / "manifest.json").read_text())
    manifest["models"] = [m for m in manifest["models"] if m["name"] in ("resnet18", "hybrid")]
    for entry in manifest["models"]:
        shutil.copy(onnx_bundle / "models" / entry["file"], folder / entry["file"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def set_card(src: Path, dst: Path, **changes) -> None:
    model = onnx.load(str(src))
    prop = next(p for p in model.metadata_props if p.key == "card")
    card = json.loads(prop.value)
    card.update(changes)
    prop.value = json.dumps(card)
    onnx.save(model, str(dst))


def test_valid_models_are_listed(models_dir):
    registry = ModelRegistry(models_dir)
    assert registry.names() == ["hybrid", "resnet18"] and registry.skipped == []
    entry = registry.entry("hybrid")
    assert (entry.variant, entry.dataset, entry.file) == ("hybrid", "cifar10", "hybrid.onnx")
    assert entry.size_bytes == (models_dir / "hybrid.onnx").stat().st_size
    assert set(entry.to_dict()) == {"name", "file", "variant", "dataset", "test_acc", "size_bytes", "path", "precision"}
    assert entry.precision == "fp32"
    assert "hybrid" in registry and len(registry) == 2
    assert registry.summary()[0]["name"] == "hybrid"


def test_default_is_the_most_accurate(models_dir):
    registry = ModelRegistry(models_dir)
    accuracies = {e.name: e.test_acc for e in registry.entries}
    assert registry.default_name() == max(accuracies, key=accuracies.get)
    assert ModelRegistry(models_dir.parent / "nowhere").default_name() is None


def test_get_is_lazy_cached_and_thread_safe(models_dir):
    registry = ModelRegistry(models_dir)
    assert registry._loaded == {}  # nothing loaded at start-up
    with ThreadPoolExecutor(max_workers=8) as pool:
        models = list(pool.map(lambda _: registry.get("resnet18"), range(8)))
    assert all(m is models[0] for m in models) and isinstance(models[0], OnnxModel)
    with pytest.raises(KeyError, match="unknown model 'nope'.*hybrid, resnet18"):
        registry.get("nope")


def test_bad_files_are_skipped_with_reasons(models_dir):
    (models_dir / "corrupt.onnx").write_bytes(b"\x08\x07\x12\x05junk!" + b"\xff" * 200)
    (models_dir / "empty.onnx").write_bytes(b"")
    (models_dir / "text.onnx").write_text("I am a README, not a model.\n")
    set_card(models_dir / "resnet18.onnx", models_dir / "mismatch.onnx", name="mismatch", num_classes=100,
             class_names=[f"c{i}" for i in range(100)])
    set_card(models_dir / "resnet18.onnx", models_dir / "wrong_outputs.onnx", name="wrong_outputs",
             outputs=[{"name": "logits", "shape": ["batch", 10]}])
    graph_only = onnx.load(str(models_dir / "resnet18.onnx"))
    del graph_only.metadata_props[:]
    onnx.save(graph_only, str(models_dir / "no_card.onnx"))
    manifest = json.loads((models_dir / "manifest.json").read_text())
    manifest["models"].append(dict(manifest["models"][0], name="ghost", file="ghost.onnx"))
    (models_dir / "manifest.json").write_text(json.dumps(manifest))

    registry = ModelRegistry(models_dir)
    assert registry.names() == ["hybrid", "resnet18"]
    reasons = dict(registry.skipped)
    assert "file not found" in reasons["ghost.onnx"]
    assert "not an ONNX model" in reasons["corrupt.onnx"]
    assert "empty" in reasons["empty.onnx"]
    assert "not an ONNX model" in reasons["text.onnx"]
    assert "num_classes 100" in reasons["mismatch.onnx"]
    assert "card outputs" in reasons["wrong_outputs.onnx"]
    assert "no model card" in reasons["no_card.onnx"]


def test_a_file_changed_after_export_is_skipped(models_dir):
    data = bytearray((models_dir / "hybrid.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte inside a weight: still parses, but not what was exported
    (models_dir / "hybrid.onnx").write_bytes(bytes(data))
    registry = ModelRegistry(models_dir)
    assert registry.names() == ["resnet18"]
    assert "sha256 differs" in dict(registry.skipped)["hybrid.onnx"]
    assert ModelRegistry(models_dir, verify_sha256=False).names() == ["hybrid", "resnet18"]


def test_without_or_with_a_broken_manifest_files_are_scanned(models_dir):
    (models_dir / "manifest.json").unlink()
    assert ModelRegistry(models_dir).names() == ["hybrid", "resnet18"]
    (models_dir / "manifest.json").write_text("{broken")
    registry = ModelRegistry(models_dir)
    assert registry.names() == ["hybrid", "resnet18"]
    assert registry.skipped[0][0] == "manifest.json"


def test_refresh_picks_up_new_and_removed_models(models_dir):
    registry = ModelRegistry(models_dir)
    first = registry.get("hybrid")
    (models_dir / "resnet18.onnx").unlink()
    registry.refresh()
    assert registry.names() == ["hybrid"] and registry.get("hybrid") is first
    assert "file not found" in dict(registry.skipped)["resnet18.onnx"]
