"""The models shipped in exports/models/: they load, are honestly labelled, and classify.

Each is int8 (``exports.quantize``) where the int8 model passed the accuracy gate, float
otherwise; the card records which (``export.precision``), and int8 cards carry the
quantisation settings, the float export's parity with PyTorch and the gate's figures.
"""

import pytest

from conftest import ASSETS, reference_prediction, top1
from serving.paths import BUNDLED_MODELS_DIR
from serving.registry import ModelRegistry

MODELS = BUNDLED_MODELS_DIR
VARIANTS = {"resnet18", "spectral", "diffstride", "hybrid", "diffstride2"}


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry(MODELS)


def test_every_bundled_model_is_valid(registry):
    assert registry.skipped == []
    assert set(registry.names()) == VARIANTS


def test_bundled_cards_name_the_layers_as_the_model_does(registry):
    """The registry loads all five with the current layer name, ``layerN.0.spectral_pool``
    (no rename map: the old name ``downsample`` appears in no card)."""
    import hybrid_model

    for entry in registry.entries:
        card = entry.card
        assert "downsample" not in card.to_json(), entry.name
        modules = dict(hybrid_model.build_from_card(card.to_dict()).named_modules())
        named = [row["name"] for row in card.downsampling_layers()] + list(card.learned_strides or {})
        assert all(name in modules for name in named), entry.name
        # what downsamples in a stage's first block: resnet18's strided convolutions, else its spectral layer
        in_blocks = {name.split(".", 2)[2] for name in named if name.startswith("layer")}
        assert in_blocks == ({"conv1", "shortcut.0"} if entry.variant == "resnet18" else {"spectral_pool"}), entry.name


def test_cards_carry_their_measured_accuracy_and_data(registry):
    for entry in registry.entries:
        card = entry.card.to_dict()
        assert card["dataset"] == "cifar10" and card["data"]["source"].startswith("CIFAR-10")
        assert card["data"]["n_test"] > 0 and card["history"], entry.name
        # exports.ingest: test_acc is the bundled file's own accuracy on all 10,000 test images,
        # training_test_acc the trainer's last evaluation; within 0.3 pt of the float32 model
        bundled = card["bundled_accuracy"]
        assert card["training_test_acc"] == card["history"][-1]["test_acc"], entry.name
        assert card["test_acc"] == bundled["test_acc"] == entry.test_acc and bundled["test_images"] == 10_000
        assert abs(100 * (bundled["test_acc"] - bundled["reference_float32_test_acc"])) <= 0.3
        parity = card["float_parity"] if entry.precision == "int8" else card["parity"]
        assert parity["top1_agreement"] == 1.0  # the float export matched PyTorch


def test_int8_models_passed_the_accuracy_gate(registry):
    int8 = [e for e in registry.entries if e.precision == "int8"]
    assert int8, "the bundle serves int8 models"
    for entry in int8:
        card = entry.card.to_dict()
        assert card["export"]["precision"] == "int8" and entry.file == f"{entry.name}.int8.onnx"
        gate = card["accuracy_gate"]
        assert gate["passed"] and gate["n_images"] >= 1000 and gate["source"].startswith("CIFAR-10 test (JPEG copy)")
        assert gate["drop_points"] <= gate["max_acc_drop"] and gate["top1_agreement"] >= gate["min_agreement"]
        assert "CIFAR-10 train" in card["export"]["quantization"]["calibration"]
        assert entry.size_bytes < 13_000_000  # int8: about a quarter of the float32 file (~45 MB)
    for entry in registry.entries:
        assert entry.precision in ("int8", "fp16", "fp32") and entry.card.export.get("precision", "fp16") == entry.precision


def test_bundled_models_classify_a_real_cifar_image(registry):
    """Each model's answer is its own argmax, computed without the serving code."""
    image = sorted(ASSETS.glob("*.png"))[0]
    for entry in registry.entries:
        prediction = registry.get(entry.name).predict(str(image))
        expected = reference_prediction(MODELS / entry.file, image)
        assert prediction.top_k[0][0] == top1(expected), entry.name
        for label, prob in prediction.top_k:
            assert prob == pytest.approx(expected[label], abs=1e-5), (entry.name, label)
        assert abs(float(prediction.probs.sum()) - 1.0) < 1e-4
