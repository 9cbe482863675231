"""The run card: one typed, torch-free schema for the JSON a training run writes beside its
checkpoint (``NAME.json``) and every export embeds in its ONNX metadata (key ``"card"``).

Who writes which fields (each group is a stage of the same flat JSON object):

* the trainer (``training.train``): name ... updated (:data:`RUN_FIELDS`);
* the exporter (``exports.export``): ``format``, ``layers``, ``cost``,
  ``source_checkpoint_sha256``, ``outputs``, ``parity``, ``export`` (and it rewrites
  ``name`` and ``input_size``);
* the int8 quantiser (``exports.quantize``): ``float_parity``, ``accuracy_gate`` (and
  ``export.precision = "int8"``);
* the bundler and the GPU window (``exports.ingest``, the ``gpu_window`` package):
  ``compression``, ``off_protocol``, ``training_test_acc``, ``bundled_accuracy``.

Build a card (the trainer)::

    card = RunCard(name="hybrid", variant="hybrid", dataset="cifar10", num_classes=10,
                   class_names=list(CIFAR10_CLASSES), strides=[1, 1, 2, 2, 2], ...)
    atomic_write_json(path, card.to_dict())

Read one (anything)::

    card = RunCard.from_dict(json.loads(text))      # a card file, legacy cards included
    card = read_onnx_card("exports/models/hybrid.int8.onnx")   # an exported model
    embed_card(proto, card, doc_string="...")       # the one writer of the ONNX metadata
    card.variant, card.test_acc, card.precision, card.mean_std(), card.labels()
    card.validate("runs/hybrid.json")               # CardError: one sentence, or nothing
    card.is_finished

Round trips are lossless: :meth:`RunCard.from_dict` keeps keys it does not know in
``extra`` and remembers the source's key order, so ``RunCard.from_dict(d).to_dict() == d``
(same keys, same order, same values) for every card this project ever wrote; a card built
with ``RunCard(...)`` serialises to exactly the keys the trainer writes (plus the export's
and the quantiser's once those stages are set); a field assigned on a loaded card is
written like a key set on its JSON object, even at its default (after the source's keys,
in field order). Values are stored as given (a card's
``strides`` stay ``[1, 1, 2, 2, 2]``, not ``[1.0, ...]``): the type hints say what a valid
card holds, :meth:`RunCard.problems` says what is wrong with one that does not.

Imports only the standard library (and ``onnx`` lazily, to read a model file's metadata).
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from numbers import Real
from typing import Any

from .cifar import CIFAR_MEAN_STD, CLASS_NAMES

__all__ = [
    "CARD_KEY",
    "CardError",
    "RunCard",
    "RUN_FIELDS",
    "as_card",
    "card_from_json",
    "default_class_names",
    "embed_card",
    "is_finished",
    "read_onnx_card",
]

#: The ONNX metadata key that holds the card (JSON text).
CARD_KEY = "card"


class CardError(ValueError):
    """A card is missing, unreadable or describes no usable model; the message is one sentence."""


def _stage(stage: str, default: Any = None, factory: Any = MISSING) -> Any:
    """A card field written at ``stage`` ("run", "export", "int8" or "bundle")."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"stage": stage})
    return field(default=default, metadata={"stage": stage})


@dataclass(kw_only=True)
class RunCard:
    """One run's card. Field order is the JSON key order the writers use.

    Every field has a default so that legacy cards load; :meth:`problems` reports what a
    usable card must have (``variant``, five ``strides``, ...).
    """

    # --- written by the trainer -------------------------------------------------------
    name: str | None = _stage("run")
    variant: str = _stage("run", "")
    dataset: str | None = _stage("run", "cifar10")
    num_classes: int = _stage("run", 10)
    class_names: list[str] = _stage("run", factory=list)
    strides: list[float] = _stage("run", factory=list)  # requested per stage: stem, layer1..4
    options: dict[str, Any] = _stage("run", factory=dict)  # build_model keyword arguments
    learned_strides: dict[str, list[float]] = _stage("run", factory=dict)  # layer -> (sh, sw)
    transforms: dict[str, str] | None = _stage("run")  # spectral layer -> "fourier"/"hartley"/...
    head: dict[str, Any] | None = _stage("run")  # hybrid_model.introspect.describe_head
    epoch: int | None = _stage("run")  # epochs completed
    epochs: int | None = _stage("run")  # epochs planned
    test_acc: float | None = _stage("run")
    test_loss: float | None = _stage("run")
    history: list[dict[str, Any]] = _stage("run", factory=list)  # one row per epoch
    data: dict[str, Any] = _stage("run", factory=dict)  # source, n_train, n_test, exact
    normalize: dict[str, list[float]] = _stage("run", factory=dict)  # {"mean": [3], "std": [3]}
    input_size: list[int] = _stage("run", factory=list)  # [3, H, W] (trainer) or [H, W] (export)
    config: dict[str, Any] = _stage("run", factory=dict)  # the settings compared on --resume
    command: list[str] | None = _stage("run")
    code_version: str | None = _stage("run")
    seed: int | None = _stage("run")
    world_size: int = _stage("run", 1)
    hardware: str | None = _stage("run")
    torch: str | None = _stage("run")
    seconds_per_epoch: float | None = _stage("run")
    train_wall_seconds: float | None = _stage("run")
    created: str | None = _stage("run")
    updated: str | None = _stage("run")
    # --- added by the exporter (exports.export) -----------------------------------------
    format: int | None = _stage("export")  # card format version; set => an exported card
    layers: list[dict[str, Any]] = _stage("export", factory=list)  # describe_downsampling rows (crops)
    cost: dict[str, Any] = _stage("export", factory=dict)  # flops, activation_bytes, params
    source_checkpoint_sha256: str | None = _stage("export")
    outputs: list[dict[str, Any]] = _stage("export", factory=list)  # [{"name", "shape"}], graph order
    parity: dict[str, Any] | None = _stage("export")  # ParityReport.to_dict(), None if skipped
    export: dict[str, Any] = _stage("export", factory=dict)  # opset, fp16_weights, precision, ...
    # --- added by the int8 quantiser (exports.quantize) --------------------------------
    float_parity: dict[str, Any] | None = _stage("int8")
    accuracy_gate: dict[str, Any] | None = _stage("int8")  # set => an int8 card
    # --- added when bundling (exports.ingest, gpu_window) ----------------
    compression: dict[str, Any] | None = _stage("bundle")
    off_protocol: bool = _stage("bundle", False)
    training_test_acc: float | None = _stage("bundle")
    bundled_accuracy: dict[str, Any] | None = _stage("bundle")
    # --- bookkeeping (not card fields) --------------------------------------------------
    extra: dict[str, Any] = field(default_factory=dict, metadata={"stage": None})  # unknown keys, kept
    source_keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False, metadata={"stage": None})
    # Fields assigned after construction; last, so that __init__'s own assignments are not counted.
    assigned: set[str] = field(default_factory=set, init=False, repr=False, compare=False, metadata={"stage": None})

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _STAGE and "assigned" in self.__dict__:
            self.assigned.add(name)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunCard:
        """A card from its JSON object; tolerant: missing keys take defaults, unknown keys
        go to ``extra``, nothing is converted. Raises :class:`CardError` for a non-object."""
        if isinstance(data, RunCard):
            return copy.deepcopy(data)
        if not isinstance(data, Mapping):
            raise CardError(f"a card must be a JSON object, got {type(data).__name__}")
        names = set(_CARD_FIELDS)
        known = {k: copy.deepcopy(v) for k, v in data.items() if k in names}
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in names}
        return cls(**known, extra=extra, source_keys=tuple(data))

    def to_dict(self) -> dict[str, Any]:
        """The card's JSON object (a deep copy): the source's keys in their order, then the
        fields this card set since (see :func:`_emits`), then new ``extra`` keys."""
        values = {name: getattr(self, name) for name in _CARD_FIELDS}
        source = self.source_keys or ()
        out: dict[str, Any] = {}
        for key in source:
            if key in values:
                out[key] = values[key]
            elif key in self.extra:
                out[key] = self.extra[key]
        for key, value in values.items():
            if key not in out and self._emits(key, value):
                out[key] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return copy.deepcopy(out)

    def to_json(self) -> str:
        """Compact JSON, as embedded in ONNX metadata."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def _emits(self, key: str, value: Any) -> bool:
        """Whether a field absent from the source is written: the trainer's fields always
        on a card built with ``RunCard(...)``; a later stage's fields once that stage was
        entered after the source was written (``format`` / ``accuracy_gate`` set); any
        field whose value differs from its default, or that was assigned (as a key set on
        the JSON object is written: ``card.off_protocol = False``)."""
        if value != _CARD_FIELDS[key] or key in self.assigned:
            return True
        source = set(self.source_keys or ())
        stage = _STAGE[key]
        if stage == "run":
            return self.source_keys is None
        if stage == "export":
            return self.format is not None and "format" not in source
        if stage == "int8":
            return self.accuracy_gate is not None and "accuracy_gate" not in source
        return False

    # ------------------------------------------------------------------ derived values
    @property
    def is_finished(self) -> bool:
        """A completed run: ``epoch == epochs`` (and ``epochs`` known)."""
        return self.epochs is not None and self.epoch == self.epochs

    @property
    def precision(self) -> str:
        """What the exported weights are stored as: ``"int8"``, ``"fp16"`` or ``"fp32"``
        (cards from before ``export.precision``: from ``export.fp16_weights``)."""
        export = self.export if isinstance(self.export, Mapping) else {}
        return str(export.get("precision") or ("fp16" if export.get("fp16_weights") else "fp32"))

    @property
    def fp16_weights(self) -> bool:
        """Whether the float export stores fp16 weights (its parity tolerance is wider)."""
        export = self.export if isinstance(self.export, Mapping) else {}
        return bool(export.get("fp16_weights", False))

    @property
    def head_transform(self) -> str | None:
        """The head's transform as recorded: ``options["head_transform"]``, else the
        described head's. ``None`` on a card that names none (cards from before the Hartley
        default: ``hybrid_model.build_from_card`` rebuilds those heads as Fourier)."""
        options = self.options if isinstance(self.options, Mapping) else {}
        head = self.head if isinstance(self.head, Mapping) else {}
        return options.get("head_transform") or head.get("transform")

    def labels(self) -> list[str]:
        """The class names: the card's, else the dataset's (see :func:`default_class_names`)."""
        if self.class_names:
            return list(self.class_names)
        return default_class_names(self.dataset, self.num_classes)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` of the input normalisation: the card's ``normalize`` (what the
        model was trained with), else the standard constants of its dataset.

        Raises :class:`CardError` when neither is known.
        """
        norm = self.normalize if isinstance(self.normalize, Mapping) else {}
        if norm.get("mean") and norm.get("std"):
            return tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
        if self.dataset in CIFAR_MEAN_STD:
            mean, std = CIFAR_MEAN_STD[self.dataset]
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
        raise CardError(f"no input normalisation known for dataset {self.dataset!r}: the card has no 'normalize'")

    def downsampling_layers(self) -> list[dict[str, Any]]:
        """An exported card's ``layers`` rows (one per downsampling layer: ``name``, ``stage``,
        ``kind``, ``stride``, sizes, ``crop``), named as ``model.named_modules()`` names the
        layers (``stem_pool``, ``layerN.0.spectral_pool``, ``head_pool``).

        Copies: the stored ``layers`` stay as written. Rows that are not JSON objects are
        skipped; empty for a card without ``layers``.
        """
        return [copy.deepcopy(dict(row)) for row in self.layers or [] if isinstance(row, Mapping)]

    def crops(self) -> dict[str, list[dict[str, Any]]]:
        """``{layer: [height crop, width crop]}`` from :meth:`downsampling_layers` (each
        crop: ``size``, ``pass_to``, ``cut_at``, ``kept``, ``out_size``). Spectral layers
        only: a strided convolution crops nothing."""
        return {row["name"]: list(row["crop"]) for row in self.downsampling_layers() if "name" in row and row.get("crop")}

    def output_names(self) -> list[str]:
        """The declared graph outputs (``logits`` then the stages), in order."""
        return [o["name"] for o in self.outputs if isinstance(o, Mapping) and "name" in o]

    # ------------------------------------------------------------------ validation
    def output_problems(self) -> list[str]:
        """What is wrong with the ``outputs`` list an exported card must declare."""
        declared = self.outputs
        if not isinstance(declared, list) or not all(isinstance(o, Mapping) and "name" in o for o in declared):
            return ["card has no valid 'outputs' list"]
        return []

    def problems(self) -> list[str]:
        """Why this card cannot describe a usable model, one sentence each (empty: it can).

        Checks what rebuilding or serving needs: a ``variant``, five numeric ``strides``,
        a positive integer ``num_classes``, ``options`` an object, as many ``class_names``
        as classes (when it names any), and on an exported card (``format`` set) a valid
        ``outputs`` list: the card's shape. What the model accepts (a known ``variant``,
        strides in ``[1, 64)``, integers for strided convolutions) is ``hybrid_model``'s to
        say (``VARIANTS``, ``validate_strides``): the serving side never builds a model, and
        it cannot import ``hybrid_model`` (torch).
        """
        problems = []
        if not isinstance(self.variant, str) or not self.variant:
            problems.append("card has no 'variant'")
        strides = self.strides
        if not isinstance(strides, (list, tuple)) or len(strides) != 5 or not all(_is_number(s) for s in strides):
            problems.append(f"'strides' must be a list of 5 numbers, got {strides!r}")
        num_classes = self.num_classes
        counted = isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1
        if not counted:
            problems.append(f"'num_classes' must be a positive integer, got {num_classes!r}")
        if not isinstance(self.options, Mapping):
            problems.append("'options' must be an object of build_model keyword arguments")
        names = self.class_names
        if names and counted and (not isinstance(names, list) or len(names) != num_classes):
            count = len(names) if isinstance(names, (list, tuple)) else names
            problems.append(f"{count} class_names for num_classes={num_classes}")
        if self.format is not None and (not self.outputs or self.output_problems()):
            problems.append("card has no valid 'outputs' list")
        return problems

    def validate(self, where: str = "card") -> RunCard:
        """``self`` if :meth:`problems` finds nothing, else :class:`CardError` with the first
        problem, prefixed by ``where`` (a file name)."""
        problems = self.problems()
        if problems:
            raise CardError(f"{where}: {problems[0]}")
        return self


_CARD_FIELDS: dict[str, Any] = {
    f.name: (f.default_factory() if f.default is MISSING else f.default)  # type: ignore[misc]
    for f in fields(RunCard)
    if f.metadata.get("stage")
}
_STAGE: dict[str, str] = {f.name: f.metadata["stage"] for f in fields(RunCard) if f.metadata.get("stage")}
#: The fields the trainer writes, in its key order.
RUN_FIELDS: tuple[str, ...] = tuple(name for name, stage in _STAGE.items() if stage == "run")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def default_class_names(dataset: str | None, num_classes: int) -> list[str]:
    """The dataset's class names when their count fits, else ``class_0 ... class_{K-1}``."""
    names = CLASS_NAMES.get(dataset or "", ())
    if len(names) == num_classes:
        return list(names)
    return [f"class_{i}" for i in range(num_classes)]


def as_card(card: RunCard | Mapping[str, Any]) -> RunCard:
    """``card`` itself if it is a :class:`RunCard`, else :meth:`RunCard.from_dict` of it
    (for functions that take either while their callers move to the typed card)."""
    return card if isinstance(card, RunCard) else RunCard.from_dict(card)


def is_finished(card: RunCard | Mapping[str, Any] | None) -> bool:
    """A card (typed or its JSON object) of a completed run; ``False`` for ``None``/empty."""
    return bool(card) and as_card(card).is_finished


def card_from_json(text: str | bytes) -> RunCard:
    """A card from its JSON text; :class:`CardError` if it is not a JSON object."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CardError(f"model card is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CardError("model card is not a JSON object")
    return RunCard.from_dict(data)


def _metadata(source: Any) -> Mapping[str, str]:
    """The metadata map of an ONNX model given as a path, bytes, a ``ModelProto`` or an
    onnxruntime ``InferenceSession``."""
    if hasattr(source, "get_modelmeta"):  # onnxruntime session: no second parse of the file
        return source.get_modelmeta().custom_metadata_map
    if hasattr(source, "metadata_props"):  # onnx.ModelProto
        return {p.key: p.value for p in source.metadata_props}
    import onnx  # torch-free; imported here so reading a card file needs no onnx

    try:
        if isinstance(source, (bytes, bytearray)):
            proto = onnx.load_from_string(bytes(source))
        else:
            proto = onnx.load(os.fspath(source), load_external_data=False)
    except FileNotFoundError:
        raise CardError(f"{os.fspath(source)}: model file not found") from None
    except Exception as error:  # protobuf DecodeError and friends
        raise CardError(f"not an ONNX model ({type(error).__name__})") from None
    return {p.key: p.value for p in proto.metadata_props}


def read_onnx_card(source: str | os.PathLike | bytes | Any, *, missing_ok: bool = False) -> RunCard:
    """The card embedded in an exported model (path, bytes, ``onnx.ModelProto`` or
    onnxruntime session). Raises :class:`CardError` when the file is not ONNX, has no card
    (unless ``missing_ok``: an empty ``RunCard()``) or its card is not a JSON object; the
    message does not name the file (callers prefix it)."""
    text = _metadata(source).get(CARD_KEY)
    if text is None:
        if missing_ok:
            return RunCard()
        raise CardError("no model card in the ONNX metadata (not written by exports.export?)")
    return card_from_json(text)


def embed_card(proto: Any, card: RunCard | Mapping[str, Any], doc_string: str | None = None) -> None:
    """Write ``card`` (compact JSON) into an ``onnx.ModelProto``'s metadata under
    :data:`CARD_KEY`, replacing an earlier card (other metadata is kept); set the model's
    ``doc_string`` when given."""
    text = json.dumps(card.to_dict() if isinstance(card, RunCard) else card, separators=(",", ":"))
    for prop in [p for p in proto.metadata_props if p.key == CARD_KEY]:
        proto.metadata_props.remove(prop)
    prop = proto.metadata_props.add()
    prop.key, prop.value = CARD_KEY, text
    if doc_string is not None:
        proto.doc_string = doc_string
