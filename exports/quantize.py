"""Static int8 quantisation of an exported float model, gated on CIFAR-10 test accuracy.

    python -m exports.quantize exports/models/hybrid.onnx --out exports/models/hybrid.int8.onnx
        [--calibration-images 256] [--test-images 10000] [--max-acc-drop 0.5]
        [--min-agreement 0.9] [--quantize-spectral] [--quantize-ends] [--data-dir D] [--no-manifest]

The input is a model written by ``exports.export`` (float32 or fp16-stored weights; the
fp16 kernels are widened back to float32 first). onnxruntime's static quantiser writes
QDQ nodes with per-channel int8 weights and uint8 activations, calibrated (MinMax) on
CIFAR-10 *training* images; onnxruntime fuses them into integer kernels at load time
(VNNI on CPUs that have it). Float by default, chosen by measurement (docs/export.md):
the frozen spectral operators (``MatMul`` with a constant matrix; ``--quantize-spectral``
quantises them too), the stem convolution and the classifier (``--quantize-ends``), and the
few batch norms after spectral layers (nothing to fold them into).

There is no PyTorch reference to be bit-close to, so the fp32 parity gate is replaced by
an **accuracy gate** on CIFAR-10 test images (JPEG copy): the int8 model must agree with
the float model's top-1 on at least ``--min-agreement`` of them and lose at most
``--max-acc-drop`` points of accuracy. The card keeps the training card and records
``export.precision = "int8"``, the quantisation settings and the gate's figures.

``--reference-acc A`` (``exports.ingest`` passes the training card's
``compression.test_acc_float32``, measured on the GPU on the same test split) replaces the
float model's pass over the test images: the int8 model then runs once over all of them
(the accuracy the drop is measured from), and the float model only on the first
``--agreement-images`` (top-1 agreement, a check of the graph rather than an accuracy
figure). Without it both models run over all test images (two passes).

Exit status: 0 written; 1 accuracy gate failed (nothing written); 2 bad input.
Part of the training/export install (``requirements-train.txt``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from serving.cards import CardError, RunCard, embed_card, read_onnx_card
from serving.cifar_data import first_test_images, training_images
from serving.cli import DefaultsHelpFormatter
from serving.files import file_sha256
from serving.manifest import write_model
from serving.runtime import CPU, ModelError, card_problems, graph_io, normalization_for, normalize_uint8

from .parity import DEFAULT_DATA_DIR

__all__ = [
    "AccuracyReport",
    "QuantizeResult",
    "evaluate",
    "float_weights",
    "load_cifar10_jpeg",
    "main",
    "predictions",
    "quantize_model",
    "spectral_matmuls",
]

DEFAULT_CALIBRATION = 256
DEFAULT_TEST_IMAGES = 10_000
MAX_ACC_DROP = 0.5  # points of top-1 accuracy
# Top-1 agreement with the float model. A guard against a broken graph (which agrees at
# chance level) more than a quality bar: low-confidence models flip many near-ties (the
# bundled 30 %-accuracy smoke models agreed on ~96 %; see docs/export.md).
MIN_AGREEMENT = 0.90
#: With a reference accuracy, the float model runs on this many test images only (agreement).
DEFAULT_AGREEMENT_IMAGES = 500
_EVAL_BATCH = 256


# --------------------------------------------------------------------------------------
# Data: the CIFAR-10 JPEG copy (training images calibrate, test images gate)
# --------------------------------------------------------------------------------------
#: Calibration images are drawn from the first 25,000 training images (the JPEG copy's
#: first part: all classes, and only that part is decoded).
CALIBRATION_POOL = 25_000


def load_cifar10_jpeg(split: str, n: int, data_dir: str | os.PathLike | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``(uint8 (n, 32, 32, 3), labels, description)`` from the CIFAR-10 JPEG copy, read by
    :mod:`serving.cifar_data` (``data_dir``, else ``$HYBRID_DATA_DIR``, else the defaults).

    ``split="test"``: the first ``n`` test images. ``split="train"``: ``n`` images drawn
    without replacement (seeded) from the first :data:`CALIBRATION_POOL` training images.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    if split == "train":
        return training_images(n, data_dir, CALIBRATION_POOL, seed)
    if n < 1:
        raise ValueError(f"need at least 1 CIFAR-10 test image, got {n}")
    images, labels, _ = first_test_images(n, data_dir, sources=("jpeg",))
    return images, labels, f"CIFAR-10 test (JPEG copy), first {n}"


# --------------------------------------------------------------------------------------
# Graph preparation
# --------------------------------------------------------------------------------------
def float_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo ``exports.export.fp16_weights``: every ``Cast(fp16 initializer) -> float``
    becomes a float32 initializer again (the quantiser reads float weights)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    half = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT16}
    widened, kept_nodes = [], []
    for node in graph.node:
        if node.op_type == "Cast" and len(node.input) == 1 and node.input[0] in half:
            array = numpy_helper.to_array(half[node.input[0]]).astype(np.float32)
            widened.append(numpy_helper.from_array(array, name=node.output[0]))
        else:
            kept_nodes.append(node)
    used = {name for node in kept_nodes for name in node.input}
    initializers = [i for i in graph.initializer if i.data_type != TensorProto.FLOAT16 or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers + widened)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    return out


def spectral_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the ``MatMul`` nodes with a constant operand: the frozen spectral operators
    (``hybrid_model.freeze``); the network's only other matrix product is the ``Gemm`` head."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in constants for i in n.input)]


class _Calibration:
    """onnxruntime ``CalibrationDataReader``: normalised training images in batches."""

    def __init__(self, images: np.ndarray, batch: int = 32) -> None:
        self._batches = [images[s : s + batch] for s in range(0, len(images), batch)]
        self._iter: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {"input": batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def end_layers(model: onnx.ModelProto) -> list[str]:
    """The stem convolution (reads the image) and the classifier (``Gemm``): the first and
    last layers, usually kept float (little compute, most sensitive to rounding)."""
    stem = [n.name for n in model.graph.node if n.op_type == "Conv" and "input" in n.input]
    return stem + [n.name for n in model.graph.node if n.op_type == "Gemm"]


def _quantize_proto(float_model: onnx.ModelProto, calibration: np.ndarray, keep_spectral_float: bool,
                    keep_ends_float: bool = True) -> onnx.ModelProto:
    # Only when quantising: importing onnxruntime.quantization appends onnxruntime/transformers to sys.path
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_Calibration, CalibrationDataReader):
        pass

    exclude = spectral_matmuls(float_model) if keep_spectral_float else []
    # Batch norms left after the spectral layers (nothing to fold them into) stay float.
    exclude += [n.name for n in float_model.graph.node if n.op_type == "BatchNormalization"]
    exclude += end_layers(float_model) if keep_ends_float else []
    with tempfile.TemporaryDirectory() as tmp:
        # A file, not the proto: quantize_static rewrites a ModelProto argument in place
        # (its initializers become external-data references into a folder it deletes).
        source, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(float_model, str(source))
        logging.disable(logging.WARNING)  # the quantiser's advice (pre-processing, BN axes) on the root logger
        try:
            quantize_static(
                source,
                out,
                Reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,  # u8 activations x s8 weights: the VNNI fast path
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        finally:
            logging.disable(logging.NOTSET)
        return onnx.load(str(out))


# --------------------------------------------------------------------------------------
# Accuracy gate
# --------------------------------------------------------------------------------------
@dataclass
class AccuracyReport:
    """int8 vs float on the same test images (accuracies are fractions)."""

    n_images: int
    source: str
    float_acc: float
    int8_acc: float
    top1_agreement: float
    max_acc_drop: float  # points
    min_agreement: float
    passed: bool
    #: where ``float_acc`` comes from: this gate's own pass over the same images, or a
    #: reference measured elsewhere (the training card's GPU figure)
    float_source: str = "onnxruntime CPU, same images"
    #: images the top-1 agreement was measured on (the first ones; ``n_images`` when None)
    agreement_images: int | None = None
    #: the float model's own accuracy on those images, when they are a sample
    float_sample_acc: float | None = None

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.float_acc - self.int8_acc)

    def to_dict(self) -> dict:
        return {**asdict(self), "drop_points": round(self.drop_points, 4)}

    def lines(self) -> list[str]:
        return [
            f"accuracy gate on {self.n_images} images ({self.source}), onnxruntime CPU",
            f"  float {100 * self.float_acc:.2f} % ({self.float_source})   int8 {100 * self.int8_acc:.2f} %   "
            f"drop {self.drop_points:+.2f} points (limit {self.max_acc_drop:g})",
            f"  top-1 agreement {self.top1_agreement:.4f} on {self.agreement_images or self.n_images} images "
            f"(limit {self.min_agreement:g})",
            f"  {'PASSED' if self.passed else 'FAILED'}",
        ]


def _session(model: onnx.ModelProto | str | Path, threads: int | None = None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: on a shared machine (the 2-core VM
    # ingest runs on) spinning burnt ~10 % more CPU per image for the same throughput.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=[CPU])
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"not a loadable ONNX model ({reason[:200]})") from None


def predictions(model: onnx.ModelProto | str | Path, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Top-1 class of every row of the normalised batch ``x`` (onnxruntime CPU)."""
    session = _session(model, threads)
    return np.concatenate([
        session.run(["logits"], {"input": x[s : s + _EVAL_BATCH]})[0].argmax(1) for s in range(0, len(x), _EVAL_BATCH)
    ])


def evaluate(
    float_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    x: np.ndarray,
    labels: np.ndarray,
    source: str,
    max_acc_drop: float = MAX_ACC_DROP,
    min_agreement: float = MIN_AGREEMENT,
    *,
    reference_acc: float | None = None,
    reference_source: str = "reference",
    agreement_images: int = DEFAULT_AGREEMENT_IMAGES,
    threads: int | None = None,
) -> AccuracyReport:
    """The accuracy gate on the same normalised test batch ``x``.

    Without ``reference_acc``: both models over all of ``x`` (two passes). With it (the
    float model's accuracy on the same images, measured elsewhere): the int8 model over all
    of ``x`` (one pass) and the float model over the first ``agreement_images`` only.
    """
    if reference_acc is None:
        pf, pq = predictions(float_model, x, threads), predictions(int8_model, x, threads)
        float_acc, float_source, sample, sample_acc = float(np.mean(pf == labels)), "onnxruntime CPU, same images", len(x), None
    else:
        if agreement_images < 1:
            raise ValueError(f"agreement_images must be >= 1, got {agreement_images}")
        sample = min(agreement_images, len(x))
        pq = predictions(int8_model, x, threads)
        pf = predictions(float_model, x[:sample], threads)
        float_acc, float_source = float(reference_acc), reference_source
        sample_acc = float(np.mean(pf == labels[:sample]))
    report = AccuracyReport(
        n_images=len(x),
        source=source,
        float_acc=float_acc,
        int8_acc=float(np.mean(pq == labels)),
        top1_agreement=float(np.mean(pf == pq[: len(pf)])),
        max_acc_drop=max_acc_drop,
        min_agreement=min_agreement,
        passed=False,
        float_source=float_source,
        agreement_images=sample,
        float_sample_acc=sample_acc,
    )
    report.passed = bool(report.drop_points <= max_acc_drop and report.top1_agreement >= min_agreement)
    return report


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------
@dataclass
class QuantizeResult:
    """What :func:`quantize_model` produced (``path`` is None when the gate failed)."""

    path: Path | None
    card: dict
    accuracy: AccuracyReport
    size_bytes: int
    sha256: str | None


def _read_card(model: onnx.ModelProto, path: Path) -> RunCard:
    try:
        card = read_onnx_card(model)
    except CardError as error:
        raise ModelError(f"{path.name}: {error}") from None
    if card.precision == "int8":
        raise ModelError(f"{path.name} is already int8: quantise the float model")
    return card


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    try:
        return onnx.load(str(path))
    except Exception as error:
        raise ModelError(f"{path.name}: not an ONNX model ({type(error).__name__})") from None


def _int8_card(card: RunCard, *, name: str, source: Path, source_sha: str, settings: dict, report: AccuracyReport) -> RunCard:
    out = RunCard.from_dict(card.to_dict())  # a copy
    out.name = name
    out.parity = None  # no bit-level reference for int8: the accuracy gate replaces parity
    out.float_parity = card.parity  # the float export's parity with PyTorch
    out.accuracy_gate = report.to_dict()
    out.export = {
        **(out.export or {}),
        "precision": "int8",
        "fp16_weights": False,
        "quantization": {**settings, "source_file": source.name, "source_sha256": source_sha},
        "quantized": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return out


def quantize_model(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    calibration_images: int = DEFAULT_CALIBRATION,
    test_images: int = DEFAULT_TEST_IMAGES,
    max_acc_drop: float = MAX_ACC_DROP,
    min_agreement: float = MIN_AGREEMENT,
    keep_spectral_float: bool = True,
    keep_ends_float: bool = True,
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
    manifest: bool = True,
    reference_acc: float | None = None,
    reference_source: str = "reference accuracy given by the caller",
    agreement_images: int = DEFAULT_AGREEMENT_IMAGES,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> QuantizeResult:
    """Quantise ``source`` (a float model from ``exports.export``) to int8 and gate it.

    ``reference_acc``: the float model's accuracy on the same ``test_images`` measured
    elsewhere (see :func:`evaluate`): the gate then makes one pass over the test images.

    Raises ``ModelError``/``FileNotFoundError``/``ValueError`` on bad input; when the gate
    fails nothing is written and ``result.path`` is None.
    """
    source, out = Path(source), Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {out}")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"--min-agreement must be between 0 and 1, got {min_agreement}")
    if out.resolve() == source.resolve():
        raise ValueError("--out must differ from the float model")
    if reference_acc is not None and not 0.0 <= reference_acc <= 1.0:
        raise ValueError(f"--reference-acc must be a fraction between 0 and 1, got {reference_acc}")
    float_model = float_weights(_load(source))
    card = _read_card(float_model, source)
    mean, std = normalization_for(card)
    started = time.perf_counter()
    calib, _, calib_source = load_cifar10_jpeg("train", calibration_images, data_dir)
    quantized = _quantize_proto(float_model, normalize_uint8(calib, mean, std), keep_spectral_float, keep_ends_float)
    log(f"quantised {source.name} to int8 (calibration: {calib_source}) in {time.perf_counter() - started:.1f}s")
    images, labels, test_source = load_cifar10_jpeg("test", test_images, data_dir)
    started = time.perf_counter()
    report = evaluate(float_model, quantized, normalize_uint8(images, mean, std), labels, test_source, max_acc_drop, min_agreement,
                      reference_acc=reference_acc, reference_source=reference_source, agreement_images=agreement_images,
                      threads=threads)
    log(f"accuracy gate: {time.perf_counter() - started:.1f}s")
    for line in report.lines():
        log(line)
    settings = {
        "tool": "onnxruntime.quantization.quantize_static",
        "onnxruntime": __import__("onnxruntime").__version__,
        "format": "QDQ",
        "weights": "int8, per channel, symmetric",
        "activations": "uint8, per tensor, MinMax calibration",
        "calibration": calib_source,
        "spectral_matmuls": "float" if keep_spectral_float else "int8",
        "stem_and_classifier": "float" if keep_ends_float else "int8",
        "float_ops": "BatchNormalization (after spectral layers)",
    }
    int8_card = _int8_card(card, name=name or card.name or source.stem, source=source, source_sha=file_sha256(source),
                           settings=settings, report=report)
    problems = card_problems(int8_card, *graph_io(quantized))
    if problems:  # would be a bug here: never ship a model the registry rejects
        raise ModelError(f"quantised card does not match the graph: {problems[0]}")
    del quantized.metadata_props[:]  # the float model's card
    embed_card(quantized, int8_card, f"{int8_card.name}: {int8_card.variant} ResNet-18, int8 (see metadata 'card')")
    full_card = int8_card.to_dict()
    data = quantized.SerializeToString()
    if not report.passed:
        return QuantizeResult(None, full_card, report, len(data), None)
    sha = write_model(out, data, full_card, manifest=manifest)
    log(f"wrote {out} ({len(data) / 1e6:.1f} MB, {source.stat().st_size / len(data):.1f}x smaller than {source.name})")
    return QuantizeResult(out, full_card, report, len(data), sha)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exports.quantize", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("model", type=Path, help="float .onnx model written by exports.export")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx path (manifest.json is updated beside it)")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION, help="CIFAR-10 training images for calibration")
    parser.add_argument("--test-images", type=int, default=DEFAULT_TEST_IMAGES, help="CIFAR-10 test images for the accuracy gate")
    parser.add_argument("--max-acc-drop", type=float, default=MAX_ACC_DROP, help="largest accepted accuracy loss, in points")
    parser.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT, help="smallest accepted top-1 agreement with the float model")
    parser.add_argument("--reference-acc", type=float, default=None,
                        help="the float model's accuracy on the same test images, measured elsewhere (e.g. the training card's "
                             "compression.test_acc_float32): the float model then runs only on --agreement-images")
    parser.add_argument("--agreement-images", type=int, default=DEFAULT_AGREEMENT_IMAGES,
                        help="with --reference-acc: test images the top-1 agreement is measured on")
    parser.add_argument("--quantize-spectral", action="store_true", help="also quantise the spectral MatMuls (default: keep them float)")
    parser.add_argument("--quantize-ends", action="store_true", help="also quantise the stem conv and the classifier (default: float)")
    parser.add_argument("--data-dir", type=Path, default=None, help=f"CIFAR data folder (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--name", default=None, help="model name in the card and manifest (default: the float model's)")
    parser.add_argument("--no-manifest", action="store_true", help="do not touch manifest.json")
    args = parser.parse_args(argv)
    try:
        result = quantize_model(
            args.model, args.out,
            calibration_images=args.calibration_images, test_images=args.test_images,
            max_acc_drop=args.max_acc_drop, min_agreement=args.min_agreement,
            keep_spectral_float=not args.quantize_spectral, keep_ends_float=not args.quantize_ends,
            data_dir=args.data_dir,
            name=args.name, manifest=not args.no_manifest,
            reference_acc=args.reference_acc, reference_source="--reference-acc", agreement_images=args.agreement_images,
        )
    except (ModelError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.path is None:
        r = result.accuracy
        print(f"error: accuracy gate failed: int8 {100 * r.int8_acc:.2f} % vs float {100 * r.float_acc:.2f} % "
              f"(drop {r.drop_points:.2f} points, limit {r.max_acc_drop:g}), top-1 agreement {r.top1_agreement:.4f} "
              f"(limit {r.min_agreement:g}); {args.out} not written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
