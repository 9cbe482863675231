"""The models shipped in exports/models/: they load, are honestly labelled, and classify."""
from pathlib import Path

import pytest

from exports.registry import ModelRegistry

MODELS = Path(__file__).resolve().parents[1] / "exports" / "models"
CIFAR10 = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry(MODELS)


def test_every_bundled_model_is_valid(registry):
    assert registry.skipped == []
    assert "resnet18" in registry.names()


def test_cards_carry_their_measured_accuracy_and_data(registry):
    for entry in registry.entries:
        card = entry.card
        assert card["dataset"] == "cifar10" and card["data"]["source"].startswith("CIFAR-10")
        assert card["data"]["n_test"] > 0 and card["history"], entry.name
        assert card["test_acc"] == card["history"][-1]["test_acc"]
        assert card["parity"]["top1_agreement"] == 1.0


def test_bundled_models_classify_a_real_cifar_image(registry):
    image = sorted((Path(__file__).parent / "assets").glob("*.png"))[0]
    for name in registry.names():
        prediction = registry.get(name).predict(str(image))
        assert prediction.top_k[0][0] in CIFAR10
        assert abs(float(prediction.probs.sum()) - 1.0) < 1e-4
