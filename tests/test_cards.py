"""serving.cards: the one typed run-card schema (round trips, legacy cards, checks)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from serving.cards import (
    RUN_FIELDS,
    CardError,
    RunCard,
    card_from_json,
    default_class_names,
    embed_card,
    is_finished,
    read_onnx_card,
)
from serving.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR_MEAN_STD
from serving.paths import REPO_ROOT

BUNDLED = sorted((REPO_ROOT / "exports" / "models").glob("*.onnx"))

#: A card as the exporter wrote them before transforms/head/hardware existed (test_acc etc.
#: from an early run; every newer field absent).
LEGACY = {
    "variant": "hybrid", "dataset": "cifar10", "num_classes": 10, "class_names": list(CIFAR10_CLASSES),
    "strides": [1, 1, 2, 2, 2], "options": {}, "learned_strides": {"stem_pool": [1.5, 1.5]},
    "epoch": 3, "epochs": 3, "history": [{"epoch": 3, "test_acc": 0.5}], "test_acc": 0.5,
    "data": {"source": "x", "n_train": 10, "n_test": 10}, "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3},
    "command": None, "code_version": None, "seed": None, "created": "2026-01-01T00:00:00+00:00",
    "_path": "runs/old.json",  # added by a reader: unknown to the schema, kept
}


def _raw_card(path: Path) -> dict:
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(meta["card"])


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_every_bundled_card_round_trips_byte_for_byte(path):
    raw = _raw_card(path)
    card = read_onnx_card(path)
    assert json.dumps(card.to_dict()) == json.dumps(raw)  # same keys, same order, same values
    assert card.problems() == [] and card.output_names()[0] == "logits"
    assert card.variant == raw["variant"] and card.test_acc == raw["test_acc"]
    assert card.precision == raw["export"]["precision"] == "int8"
    assert card.mean_std() == (tuple(raw["normalize"]["mean"]), tuple(raw["normalize"]["std"]))
    assert card.labels() == raw["class_names"] and card.is_finished
    crops = card.crops()
    assert len(crops) == len([row for row in raw["layers"] if row.get("crop")])
    assert all(len(c) == 2 and "kept" in c[0] for c in crops.values())
    assert bool(crops) == (raw["variant"] != "resnet18")  # only spectral layers crop


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_layer_rows_name_the_models_modules(path):
    """The bundled cards name their layers as the model they describe, rebuilt from the card
    by the current code, names its modules (``layerN.0.spectral_pool``; no rename map)."""
    from hybrid_model import build_from_card, describe_downsampling

    card = read_onnx_card(path)
    model = build_from_card(card.to_dict())
    modules = dict(model.named_modules())
    rows = card.downsampling_layers()
    assert [row["name"] for row in rows] == [info.name for info in describe_downsampling(model, (32, 32))]
    assert all(row["name"] in modules for row in rows)
    assert [{k: v for k, v in row.items() if k != "name"} for row in rows] == [
        {k: v for k, v in row.items() if k != "name"} for row in _raw_card(path)["layers"]]
    # The stride trajectories (Training tab, sweep reports) are labelled with the same names.
    from training.report import stride_figure

    labels = {trace.name.rsplit(" ", 1)[0] for trace in stride_figure(card).data}
    assert labels == set(card.learned_strides or {})
    assert labels <= set(modules) and (labels != set()) == (card.variant not in ("resnet18", "spectral"))


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_cards_use_the_current_layer_name_only(path):
    """The block's spectral layer is ``layerN.0.spectral_pool`` everywhere a bundled card names
    it (layers, learned strides, transforms, history): the old name ``downsample`` is gone."""
    raw = _raw_card(path)
    text = json.dumps(raw)
    assert "downsample" not in text
    assert ("spectral_pool" in text) == (raw["variant"] != "resnet18")


def test_layer_rows_are_returned_as_written():
    rows = [{"name": "stem_pool", "stage": "stem", "crop": [{"kept": 32}, {"kept": 17}]},
            {"name": "layer2.0.spectral_pool", "stage": "layer2", "crop": [{"kept": 28}, {"kept": 15}]},
            {"name": "layer3.0.spectral_pool", "stage": "layer3"}, "not a row"]
    card = RunCard.from_dict({**LEGACY, "format": 1, "layers": rows})
    assert card.downsampling_layers() == rows[:3]
    assert list(card.crops()) == ["stem_pool", "layer2.0.spectral_pool"]
    card.downsampling_layers()[1]["stage"] = "changed"  # a copy: the card is not touched
    assert card.to_dict()["layers"] == rows


def test_read_onnx_card_takes_a_path_bytes_a_proto_or_a_session():
    import onnxruntime as ort

    path = next(p for p in BUNDLED if p.name.startswith("resnet18"))
    expected = read_onnx_card(path).to_dict()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for source in (str(path), path.read_bytes(), onnx.load(str(path), load_external_data=False), session):
        assert read_onnx_card(source).to_dict() == expected


def test_embed_card_replaces_the_card_and_keeps_other_metadata():
    proto = onnx.load(str(BUNDLED[0]), load_external_data=False)
    onnx.helper.set_model_props(proto, {"other": "kept", "card": "{}"})  # now two cards and one other key
    card = read_onnx_card(BUNDLED[0])
    card.name = "renamed"
    embed_card(proto, card, doc_string="renamed: a test")
    assert [p.key for p in proto.metadata_props].count("card") == 1
    assert {p.key: p.value for p in proto.metadata_props}["other"] == "kept"
    assert read_onnx_card(proto).to_dict() == card.to_dict() and proto.doc_string == "renamed: a test"
    embed_card(proto, {"variant": "resnet18"})  # a plain JSON object works too; doc string unchanged
    assert read_onnx_card(proto).variant == "resnet18" and proto.doc_string == "renamed: a test"


def test_legacy_card_without_newer_fields_loads_and_round_trips():
    card = RunCard.from_dict(LEGACY)
    assert card.to_dict() == LEGACY and list(card.to_dict()) == list(LEGACY)  # no key added, none lost
    assert card.extra == {"_path": "runs/old.json"}
    assert card.name is None and card.transforms is None and card.head_transform is None
    assert card.world_size == 1 and card.format is None and card.precision == "fp32"
    assert card.problems() == []
    # Exporting it adds the export stage's fields after the training ones, as dict.update did.
    card.name, card.format, card.parity, card.export = "old", 1, None, {"fp16_weights": True}
    out = card.to_dict()
    assert list(out)[-9:] == ["_path", "name", "format", "layers", "cost", "source_checkpoint_sha256",
                              "outputs", "parity", "export"]
    assert out["parity"] is None and card.precision == "fp16" and card.fp16_weights
    assert card.problems() == ["card has no valid 'outputs' list"]


def test_a_new_card_has_exactly_the_trainers_keys():
    card = RunCard(name="r", variant="resnet18", strides=[1, 1, 2, 2, 2], epoch=1, epochs=2)
    assert tuple(card.to_dict()) == RUN_FIELDS
    assert RunCard.from_dict(card.to_dict()) == card
    # The export stage starts when `format` is set, the int8 stage with `accuracy_gate`.
    card.format = 1
    assert list(card.to_dict())[len(RUN_FIELDS):] == ["format", "layers", "cost", "source_checkpoint_sha256",
                                                       "outputs", "parity", "export"]
    card.accuracy_gate = {"passed": True}
    assert list(card.to_dict())[-2:] == ["float_parity", "accuracy_gate"]
    assert "off_protocol" not in card.to_dict()  # bundling fields appear only when set
    card.off_protocol = True
    assert card.to_dict()["off_protocol"] is True


def test_to_dict_is_a_copy():
    card = RunCard.from_dict(LEGACY)
    card.to_dict()["history"].append({"epoch": 4})
    assert len(card.history) == 1
    source = json.loads(json.dumps(LEGACY))
    RunCard.from_dict(source).history.append({})
    assert source == LEGACY


def test_a_fresh_training_card_round_trips(tmp_path):
    """One tiny real run (CPU, a few seconds): the trainer's card loads and serialises unchanged."""
    pytest.importorskip("torch")
    from training.train import main

    args = ["--variant", "resnet18", "--epochs", "1", "--limit-train", "64", "--limit-test", "32",
            "--batch-size", "32", "--no-progress", "--out", str(tmp_path), "--name", "tiny"]
    assert main(args) == 0
    raw = json.loads((tmp_path / "tiny.json").read_text())
    card = RunCard.from_dict(raw)
    assert json.dumps(card.to_dict()) == json.dumps(raw)
    assert tuple(raw) == RUN_FIELDS  # every key the trainer writes is a typed field, in order
    assert card.extra == {} and card.problems() == [] and card.is_finished
    assert card.labels() == list(CIFAR10_CLASSES) and card.mean_std() == CIFAR_MEAN_STD["cifar10"]


# --------------------------------------------------------------------------------------
# Derived values
# --------------------------------------------------------------------------------------
def test_is_finished():
    assert RunCard(epoch=3, epochs=3).is_finished
    assert not RunCard(epoch=2, epochs=3).is_finished
    assert not RunCard().is_finished  # epochs unknown: never finished
    assert is_finished({"epoch": 5, "epochs": 5}) and not is_finished({"epoch": 4, "epochs": 5})
    assert not is_finished(None) and not is_finished({}) and not is_finished({"epoch": None, "epochs": None})
    assert is_finished(RunCard(epoch=0, epochs=0))  # a zero-epoch card (training.checkpoint.make_card)


def test_normalisation_and_class_name_defaults():
    assert RunCard(normalize={"mean": [0.1, 0.2, 0.3], "std": [1, 2, 3]}).mean_std() == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    assert RunCard().mean_std() == CIFAR_MEAN_STD["cifar10"]
    assert RunCard(dataset="cifar100", normalize={"mean": [], "std": []}).mean_std() == CIFAR_MEAN_STD["cifar100"]
    with pytest.raises(CardError, match="no input normalisation known for dataset 'imagenet'"):
        RunCard(dataset="imagenet").mean_std()
    assert RunCard(dataset="cifar100", num_classes=100).labels() == list(CIFAR100_CLASSES)
    assert RunCard(class_names=["a", "b"], num_classes=2).labels() == ["a", "b"]
    assert default_class_names("cifar10", 3) == ["class_0", "class_1", "class_2"]
    assert default_class_names(None, 2) == ["class_0", "class_1"]


def test_head_transform_from_options_or_the_described_head():
    assert RunCard(options={"head_transform": "hartley"}).head_transform == "hartley"
    assert RunCard(head={"kind": "spectral", "transform": "fourier"}).head_transform == "fourier"
    assert RunCard().head_transform is None


# --------------------------------------------------------------------------------------
# Validation: one sentence per problem
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"variant": ""}, "card has no 'variant'"),
        ({"strides": [1, 2]}, "'strides' must be a list of 5 numbers, got [1, 2]"),
        ({"strides": [1, 1, "2", 2, 2]}, "'strides' must be a list of 5 numbers, got [1, 1, '2', 2, 2]"),
        ({"num_classes": 0}, "'num_classes' must be a positive integer, got 0"),
        ({"num_classes": True}, "'num_classes' must be a positive integer, got True"),
        ({"options": []}, "'options' must be an object of build_model keyword arguments"),
        ({"class_names": ["a"]}, "1 class_names for num_classes=10"),
        ({"format": 1, "outputs": [{"shape": [1]}]}, "card has no valid 'outputs' list"),
    ],
)
def test_validation_errors_are_one_sentence(changes, message):
    card = RunCard.from_dict({**LEGACY, **changes})
    assert card.problems() == [message]
    with pytest.raises(CardError) as error:
        card.validate("runs/bad.json")
    assert str(error.value) == f"runs/bad.json: {message}" and "\n" not in str(error.value)


def test_a_valid_card_validates_to_itself():
    card = RunCard.from_dict(LEGACY)
    assert card.validate() is card


def test_unreadable_cards_raise_card_error(tmp_path):
    with pytest.raises(CardError, match="must be a JSON object, got list"):
        RunCard.from_dict([])
    with pytest.raises(CardError, match="model card is not valid JSON"):
        card_from_json("{nope")
    with pytest.raises(CardError, match="model card is not a JSON object"):
        card_from_json("[1, 2]")
    graph_only = onnx.load(str(BUNDLED[0]), load_external_data=False)
    del graph_only.metadata_props[:]
    with pytest.raises(CardError, match="no model card in the ONNX metadata"):
        read_onnx_card(graph_only)
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CardError, match="not an ONNX model"):
        read_onnx_card(tmp_path / "junk.onnx")
    with pytest.raises(CardError, match="model file not found"):
        read_onnx_card(tmp_path / "missing.onnx")


def test_cards_import_no_torch():
    code = "import sys, serving.cards; assert 'torch' not in sys.modules and 'hybrid_model' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, env={"PYTHONPATH": str(REPO_ROOT)})
