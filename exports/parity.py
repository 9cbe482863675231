"""Numerical parity of an exported ONNX model with its PyTorch checkpoint, on real CIFAR images.

The PyTorch side is the *unfrozen* model (DiffStride/spectral layers as trained), so the
check covers ``freeze`` and the export together. Inputs go through the same
normalisation the runtime uses (:func:`serving.runtime.normalize_uint8`).

Tolerances on ``max|d logits|`` over the batch, with ``s = max|reference logits|``:

* float32 weights: ``1e-4 + 1e-6 * s`` (``FP32_TOLERANCE``, ``FP32_RELATIVE``). For
  CIFAR-scale logits (s <= 10) that is the required 1e-4 absolute (+1e-5 at most); the relative term
  only matters for models with huge logits (a diverged run had s = 1e4, where float32
  itself resolves only ~1e-3 and the export differed by 1.4e-7 * s);
* fp16-stored weights: ``FP16_TOLERANCE * max(1, s)`` with ``FP16_TOLERANCE = 2e-2``
  (relative to the logit scale). Rounding every conv
  kernel to 11 significant bits perturbs each layer by ~2^-12 relative; across 20
  layers it measured 0.5e-3..1.6e-3 of the logit scale on all five variants (fresh
  weights, 64 CIFAR-10 test images, top-1 agreement 1.0), so 2e-2 leaves ~10x headroom
  while still catching a wrong graph (off by O(1)).

Command line (exit 1 when the tolerance is exceeded, 2 on bad input)::

    python -m exports.parity MODEL.onnx CHECKPOINT_OR_CARD [--images N] [--data-dir D]
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from serving.cards import CardError, RunCard, read_onnx_card
from serving.cifar_data import SHARED_DATA_DIR, first_test_images
from serving.files import file_sha256
from serving.runtime import CPU, ModelError, normalization_for, normalize_uint8

if TYPE_CHECKING:  # torch is imported where the comparison runs
    from torch import nn

__all__ = [
    "DEFAULT_DATA_DIR",
    "FP16_TOLERANCE",
    "FP32_RELATIVE",
    "FP32_TOLERANCE",
    "ParityReport",
    "check_parity",
    "load_parity_images",
    "main",
]

FP32_TOLERANCE = 1e-4
FP32_RELATIVE = 1e-6
FP16_TOLERANCE = 2e-2
DEFAULT_IMAGES = 64
#: ``shared/data`` next to the repository checkout (read-only CIFAR copies).
DEFAULT_DATA_DIR = SHARED_DATA_DIR  # the default data folder (after --data-dir and $HYBRID_DATA_DIR)
_CHUNK = 64


@dataclass
class ParityReport:
    """Differences between onnxruntime and PyTorch on the same ``n_images`` inputs."""

    n_images: int
    source: str
    logits_max_abs: float
    logits_scale: float
    features_max_abs: dict[str, float]
    features_max_rel: dict[str, float]
    top1_agreement: float
    limit: float  # the bound max|d logits| had to meet
    tolerance_rule: str  # how ``limit`` was derived
    fp16_weights: bool
    passed: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable summary, one figure per line."""
        out = [
            f"parity on {self.n_images} images ({self.source}), "
            f"{'fp16' if self.fp16_weights else 'fp32'} weights, onnxruntime CPU vs PyTorch eager",
            f"  logits   max|diff| = {self.logits_max_abs:.3e}  (|logits| up to {self.logits_scale:.3g}; "
            f"limit {self.limit:.3g} = {self.tolerance_rule})",
        ]
        for name, diff in self.features_max_abs.items():
            out.append(f"  {name:<8} max|diff| = {diff:.3e}  (relative {self.features_max_rel[name]:.2e})")
        out.append(f"  top-1 agreement = {self.top1_agreement:.4f}")
        out.append(f"  {'PASSED' if self.passed else 'FAILED'}")
        return out


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------
#: How each source of :func:`serving.cifar_data.first_test_images` is described in a report.
_SOURCE_WORDS = {"partial": ", bit-exact", "jpeg": " (JPEG copy)", "torchvision": " (torchvision files)"}


def load_parity_images(n: int = DEFAULT_IMAGES, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The first ``n`` CIFAR-10 test images as ``(uint8 (n, 32, 32, 3), labels, description)``.

    Read by :func:`serving.cifar_data.first_test_images` from ``data_dir`` (else
    ``$HYBRID_DATA_DIR``, else ``../shared/data`` or ``./data``, as training reads it),
    bit-exact copies first: the partial arrays, then the JPEG copy, then torchvision's files.
    """
    if n < 1:
        raise ValueError(f"need at least one parity image, got {n}")
    try:
        images, labels, source = first_test_images(n, data_dir)
    except FileNotFoundError:
        where = data_dir or os.environ.get("HYBRID_DATA_DIR") or f"{DEFAULT_DATA_DIR} or ./data"
        raise FileNotFoundError(
            f"no CIFAR-10 test images (at least {n}) in {where}: expected cifar10_partial_test.npz, "
            "cifar10_test_jpeg.npz or cifar-10-batches-py/test_batch (use --data-dir)"
        ) from None
    return images, labels, f"CIFAR-10 test{_SOURCE_WORDS[source]}, first {n}"


# --------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------
def _torch_outputs(model: nn.Module, x: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
    import torch  # torch-free at import: exports.quantize (ONNX only) imports this module

    chunks: list[list[np.ndarray]] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x), _CHUNK):
            logits, features = model.forward_features(torch.from_numpy(x[start : start + _CHUNK]))
            missing = [n for n in names[1:] if n not in features]
            if missing:
                raise ModelError(f"the ONNX model has outputs {missing} that the checkpoint's model lacks")
            chunks.append([logits.float().numpy()] + [features[n].float().numpy() for n in names[1:]])
    return [np.concatenate(parts) for parts in zip(*chunks)]


def _ort_outputs(onnx_model: str | Path | bytes, x: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    try:
        session = ort.InferenceSession(source, options, providers=[CPU])
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"not a loadable ONNX model ({reason[:200]})") from None
    names = [o.name for o in session.get_outputs()]
    chunks = [session.run(names, {"input": x[s : s + _CHUNK]}) for s in range(0, len(x), _CHUNK)]
    return names, [np.concatenate(parts) for parts in zip(*chunks)]


def _limit(scale: float, fp16: bool, override: float | None) -> tuple[float, str]:
    """The bound on ``max|d logits|`` and a description of the rule that gave it."""
    if override is not None:
        return float(override), f"{override:g} absolute (override)"
    if fp16:
        return FP16_TOLERANCE * max(1.0, scale), f"{FP16_TOLERANCE:g} * max(1, max|logits|) (fp16 weights)"
    return FP32_TOLERANCE + FP32_RELATIVE * scale, f"{FP32_TOLERANCE:g} + {FP32_RELATIVE:g} * max|logits|"


def check_parity(
    torch_model: nn.Module,
    onnx_model: str | Path | bytes,
    card: RunCard | Mapping[str, Any],
    n_images: int = DEFAULT_IMAGES,
    data_dir: str | Path | None = None,
    fp16_weights: bool = False,
    tolerance: float | None = None,
) -> ParityReport:
    """Run both models on ``n_images`` real test images and compare every output.

    ``onnx_model``: a path or the serialised model. Passes when the logits differ by at
    most the limit described in the module docstring; ``tolerance`` replaces it with a
    plain absolute bound.
    """
    images, _, source = load_parity_images(n_images, data_dir)
    mean, std = normalization_for(card)
    x = normalize_uint8(images, mean, std)
    names, ort_out = _ort_outputs(onnx_model, x)
    ref = _torch_outputs(torch_model, x, names)
    for name, a, b in zip(names, ort_out, ref):
        if a.shape != b.shape:
            raise ModelError(f"output {name!r}: onnxruntime shape {a.shape} != PyTorch shape {b.shape}")
    diffs = [float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(ort_out, ref)]
    scales = [float(np.max(np.abs(b))) for b in ref]
    limit, rule = _limit(scales[0], fp16_weights, tolerance)
    finite = all(np.isfinite(a).all() for a in ort_out)
    return ParityReport(
        n_images=len(x),
        source=source,
        logits_max_abs=diffs[0],
        logits_scale=scales[0],
        features_max_abs=dict(zip(names[1:], diffs[1:])),
        features_max_rel={n: d / max(s, 1e-12) for n, d, s in zip(names[1:], diffs[1:], scales[1:])},
        top1_agreement=float(np.mean(ort_out[0].argmax(1) == ref[0].argmax(1))),
        limit=limit,
        tolerance_rule=rule,
        fp16_weights=fp16_weights,
        passed=bool(finite and diffs[0] <= limit),
    )


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exports.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", type=Path, help="exported .onnx model")
    parser.add_argument("checkpoint", type=Path, help="the checkpoint it came from (.safetensors or .json card)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="number of CIFAR-10 test images (default 64)")
    parser.add_argument("--data-dir", type=Path, default=None, help=f"CIFAR data folder (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--tolerance", type=float, default=None, help="override the logits tolerance")
    args = parser.parse_args(argv)
    # torch-free at import (exports.quantize imports this module); --help stays fast
    from training.checkpoint import CheckpointError, load_checkpoint, resolve_pair

    try:
        if not args.onnx.is_file():
            raise ModelError(f"{args.onnx}: model file not found")
        try:  # a file without a card is checked as fp32 weights
            onnx_card = read_onnx_card(args.onnx, missing_ok=True)
        except CardError as error:
            raise ModelError(f"{args.onnx.name}: {error}") from None
        model, card = load_checkpoint(args.checkpoint)
        report = check_parity(model, args.onnx, card, args.images, args.data_dir, onnx_card.fp16_weights, args.tolerance)
    except (CheckpointError, ModelError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    source_sha = onnx_card.source_checkpoint_sha256
    if source_sha and source_sha != file_sha256(resolve_pair(args.checkpoint)[0]):
        print("note: the ONNX card names a different source checkpoint (sha256 differs)")
    print("\n".join(report.lines()))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
