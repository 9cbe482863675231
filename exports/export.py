"""Export a trained checkpoint to ONNX with its model card, check parity, update the manifest.

    python -m exports.export runs/hybrid.json --out exports/models/hybrid.onnx
        [--fp16-weights] [--parity-images N] [--data-dir D] [--name NAME]

Steps: load the checkpoint pair (card ``.json`` or ``.safetensors``; the other is found by
stem), rebuild the model, ``hybrid_model.freeze`` it for 32x32 inputs (spectral layers
become constant matrix products, so the graph is static), export with the
``torch.export``-based exporter (opset 18, dynamic batch axis, outputs ``logits`` and one
feature map per stage), ``onnx.checker``, parity against the unfrozen PyTorch model on
real CIFAR-10 test images, embed the card (JSON, metadata key ``card``), write atomically
and record the model in ``manifest.json`` beside it.

Exit status: 0 written; 1 parity failed (nothing written); 2 bad input (one-line message).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hybrid_model import PAPER_VARIANTS, describe_downsampling, freeze, model_cost
from serving.cards import RunCard, as_card, embed_card
from serving.cli import DefaultsHelpFormatter
from serving.files import file_sha256
from serving.manifest import write_model
from serving.runtime import INPUT_NAME, LOGITS, STAGES, ModelError, card_problems, graph_io
from training.checkpoint import CheckpointError, fresh_checkpoint, load_checkpoint, resolve_pair

from .parity import DEFAULT_IMAGES, ParityReport, check_parity

__all__ = ["ExportResult", "OPSET", "export_checkpoint", "export_fresh", "fp16_weights", "main"]

OPSET = 18
INPUT_SIZE = (32, 32)
BUNDLED_MODELS = Path(__file__).resolve().parent / "models"
CARD_FORMAT = 1


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` produced (``path`` is None when parity failed)."""

    path: Path | None
    card: dict
    parity: ParityReport | None
    size_bytes: int
    sha256: str | None


class _Outputs(nn.Module):
    """Returns ``(logits, *feature maps)`` so every stage becomes a named graph output."""

    def __init__(self, model: nn.Module, feature_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.feature_names = tuple(feature_names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, features = self.model.forward_features(x)
        return (logits, *(features[name] for name in self.feature_names))


def _feature_names(model: nn.Module) -> list[str]:
    with torch.no_grad():
        _, features = model.forward_features(torch.zeros(1, 3, *INPUT_SIZE))
    return [name for name in STAGES if name in features]


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and deprecation chatter (errors still raise)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _export_proto(frozen: nn.Module, feature_names: Sequence[str]) -> onnx.ModelProto:
    """ONNX graph of the frozen model; batch axis dynamic (traced with batch 2 so it is not
    specialised to 1)."""
    wrapper = _Outputs(frozen, feature_names).eval()
    example = torch.zeros(2, 3, *INPUT_SIZE)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[LOGITS, *feature_names],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            optimize=True,
            verbose=False,
        )
    return program.model_proto


def fp16_weights(model: onnx.ModelProto, min_elements: int = 1024) -> onnx.ModelProto:
    """Store the convolution kernels (4-D float initializers) as float16 behind ``Cast`` nodes.

    Halves the file; compute stays float32 (onnxruntime folds the Casts at load time, so
    speed is unchanged). Batch-norm, FC and the frozen spectral operators stay float32:
    they are a negligible share of the bytes and the most precision-sensitive.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept, casts = [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if init.data_type != TensorProto.FLOAT or array.ndim != 4 or array.size < min_elements:
            kept.append(init)
            continue
        half = numpy_helper.from_array(array.astype(np.float16), name=f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # Casts first keeps the graph topologically sorted
    return out


def _json_safe(value: Any) -> Any:
    """Tuples/NumPy scalars/dataclass dicts -> plain JSON types."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def build_card(
    card: RunCard | Mapping[str, Any],
    model: nn.Module,
    proto: onnx.ModelProto,
    *,
    name: str,
    checkpoint_sha256: str,
    fp16: bool,
    parity: ParityReport | None,
) -> dict:
    """The training card plus what the export knows: layers, cost, outputs, parity, provenance
    (the card's export stage, :class:`~serving.cards.RunCard`), as its JSON object."""
    _, outputs = graph_io(proto)
    full = RunCard.from_dict(card)  # a copy
    full.name = name
    full.format = CARD_FORMAT
    full.input_size = list(INPUT_SIZE)
    full.layers = [info.to_dict() for info in describe_downsampling(model, INPUT_SIZE)]
    full.cost = model_cost(model, INPUT_SIZE)
    full.source_checkpoint_sha256 = checkpoint_sha256
    full.outputs = [{"name": n, "shape": shape} for n, shape in outputs]
    full.parity = None if parity is None else parity.to_dict()
    full.export = {
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=True)",
        "fp16_weights": fp16,
        # what the weights are stored as: "fp32", "fp16" (computed in float32) or "int8"
        # (exports.quantize); the registry and the dashboard read it from here.
        "precision": "fp16" if fp16 else "fp32",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return _json_safe(full.to_dict())


def _set_card(proto: onnx.ModelProto, card: RunCard | Mapping[str, Any]) -> None:
    typed = as_card(card)
    embed_card(proto, card, f"{typed.name}: {typed.variant} ResNet-18 on {typed.dataset} (see metadata 'card')")


# --------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------
def export_checkpoint(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fp16: bool = False,
    parity_images: int = DEFAULT_IMAGES,
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
    tolerance: float | None = None,
    manifest: bool = True,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export one checkpoint (see the module docstring). Returns an :class:`ExportResult`.

    Raises ``CheckpointError``/``ModelError``/``FileNotFoundError`` on bad input. When
    parity fails nothing is written and ``result.path`` is None.
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {out}")
    if parity_images < 0:
        raise ValueError(f"--parity-images must be >= 0, got {parity_images}")
    weights, _ = resolve_pair(source)
    model, card = load_checkpoint(source)
    name = name or out.stem
    started = time.perf_counter()
    features = _feature_names(model)
    proto = _export_proto(freeze(model, INPUT_SIZE), features)
    if fp16:
        proto = fp16_weights(proto)
    onnx.checker.check_model(proto, full_check=True)
    log(f"exported {card.variant} ({len(features)} feature outputs, opset {OPSET}) in {time.perf_counter() - started:.1f}s")
    report = None
    if parity_images > 0:
        report = check_parity(model, proto.SerializeToString(), card, parity_images, data_dir, fp16, tolerance)
        for line in report.lines():
            log(line)
    else:
        log("parity check skipped (--parity-images 0): the card records parity as null")
    full_card = build_card(card, model, proto, name=name, checkpoint_sha256=file_sha256(weights), fp16=fp16, parity=report)
    problems = card_problems(full_card, *graph_io(proto))
    if problems:  # would be a bug in this module: never ship a model the registry rejects
        raise ModelError(f"exported card does not match the graph: {problems[0]}")
    _set_card(proto, full_card)
    data = proto.SerializeToString()
    if report is not None and not report.passed:
        return ExportResult(None, full_card, report, len(data), None)
    sha = write_model(out, data, full_card, manifest=manifest)
    log(f"wrote {out} ({len(data) / 1e6:.1f} MB, sha256 {sha[:12]}...)")
    return ExportResult(out, full_card, report, len(data), sha)


def export_fresh(
    directory: str | os.PathLike,
    variants: Sequence[str] = PAPER_VARIANTS,
    strides: Sequence[float] = (1, 1, 2, 2, 2),
    *,
    calibration_images: np.ndarray | None = None,
    card_fields: Mapping[str, Mapping[str, Any]] | None = None,
    **export_kwargs: Any,
) -> dict[str, ExportResult]:
    """Freshly initialised checkpoints for ``variants`` exported into ``directory/models``.

    Checkpoints go to ``directory/checkpoints``. For pipeline checks, tests and size or
    latency measurements: the models are untrained (do not ship them).
    ``card_fields[variant]`` adds card keys (e.g. a placeholder ``test_acc``).
    """
    directory = Path(directory)
    if (directory / "models").resolve() == BUNDLED_MODELS.resolve():
        raise ValueError("export_fresh makes untrained models: never write them into exports/models")
    results = {}
    for seed, variant in enumerate(variants):
        base = directory / "checkpoints" / variant
        fields = dict((card_fields or {}).get(variant, {}))
        fresh_checkpoint(variant, base, tuple(strides), seed=seed, calibration_images=calibration_images, **fields)
        out = directory / "models" / f"{variant}.onnx"
        results[variant] = export_checkpoint(base.with_suffix(".json"), out, **export_kwargs)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exports.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="training checkpoint: NAME.safetensors or its NAME.json card")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx path (manifest.json is updated beside it)")
    parser.add_argument("--fp16-weights", action="store_true", help="store conv kernels as float16 (half the size)")
    parser.add_argument("--parity-images", type=int, default=DEFAULT_IMAGES, help="CIFAR-10 test images for parity (0 skips)")
    parser.add_argument("--data-dir", type=Path, default=None, help="CIFAR data folder (default ../shared/data)")
    parser.add_argument("--name", default=None, help="model name in the card and manifest (default: --out stem)")
    parser.add_argument("--tolerance", type=float, default=None, help="override the parity tolerance on logits")
    parser.add_argument("--no-manifest", action="store_true", help="do not touch manifest.json")
    args = parser.parse_args(argv)
    try:
        result = export_checkpoint(
            args.checkpoint,
            args.out,
            fp16=args.fp16_weights,
            parity_images=args.parity_images,
            data_dir=args.data_dir,
            name=args.name,
            tolerance=args.tolerance,
            manifest=not args.no_manifest,
        )
    except (CheckpointError, ModelError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.path is None:
        print(f"error: parity check failed: logits differ by {result.parity.logits_max_abs:.3e} "
              f"(limit {result.parity.limit:.3g}); {args.out} not written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
