"""What the JPEG copy costs: every bundled model on exact test images and on their JPEG copies.

    python -m benchmarks.jpeg_offset [--models-dir exports/models] [--data-dir ../shared/data] [--markdown OUT]

The data folder holds the first 517 official CIFAR-10 test images bit for bit
(``cifar10_partial_test.npz``) and the JPEG copy of the whole test set, in the official
order (``cifar10_test_jpeg.npz``; quality 75, 4:2:0), so its first 517 images are the same
photographs after JPEG. Each bundled ONNX file (onnxruntime, CPU, the normalisation of its
card) classifies both; the table gives the two accuracies with their binomial standard
errors, the paired difference exact − JPEG with its paired standard error (from the
discordant pairs), and how often the two inputs get the same top-1 class. Torch-free.
"""
from __future__ import annotations

import argparse
import io
import math
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from exports.serving.cards import read_onnx_card
from exports.serving.manifest import read_manifest
from exports.serving.runtime import normalization_for, normalize_uint8

from . import emit_report

REPO = Path(__file__).resolve().parents[1]
EXACT_FILE, JPEG_FILE = "cifar10_partial_test.npz", "cifar10_test_jpeg.npz"
BATCH = 128


class OffsetError(ValueError):
    """Bad input: one sentence."""


def load_pairs(data_dir: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(exact, jpeg, labels)``: the bit-exact test images and the JPEG copies of the same
    images, uint8 ``(N, 32, 32, 3)`` each, and their labels (checked to agree)."""
    paths = [data_dir / EXACT_FILE, data_dir / JPEG_FILE]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise OffsetError(f"{data_dir} lacks {', '.join(missing)} (the CIFAR-10 copies described in its README)")
    with np.load(paths[0], allow_pickle=False) as exact_file:
        exact, labels = exact_file["x"], exact_file["y"]
    n = len(labels) if limit is None else min(limit, len(labels))
    with np.load(paths[1], allow_pickle=False) as jpeg_file:
        offsets, blob, jpeg_labels = jpeg_file["offsets"], jpeg_file["jpeg"], jpeg_file["y"]
        jpeg = np.stack([np.asarray(Image.open(io.BytesIO(blob[offsets[k]:offsets[k + 1]].tobytes())).convert("RGB"))
                         for k in range(n)])
    if not np.array_equal(labels[:n], jpeg_labels[:n]):
        raise OffsetError("the exact and the JPEG test images have different labels: not the same images")
    return exact[:n], jpeg, labels[:n].astype(np.int64)


def top1(path: Path, images: np.ndarray, threads: int = 2) -> np.ndarray:
    """Top-1 class of every image with the bundled file ``path`` (its card's normalisation)."""
    mean, std = normalization_for(read_onnx_card(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = normalize_uint8(images, mean, std)
    return np.concatenate([session.run(None, {name: x[s:s + BATCH]})[0].argmax(1) for s in range(0, len(x), BATCH)])


def compare(exact_pred: np.ndarray, jpeg_pred: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracies, their binomial standard errors, the paired difference and its standard error."""
    n = len(labels)
    right_exact, right_jpeg = exact_pred == labels, jpeg_pred == labels
    b, c = int(np.sum(right_exact & ~right_jpeg)), int(np.sum(~right_exact & right_jpeg))  # discordant pairs
    acc_e, acc_j = float(right_exact.mean()), float(right_jpeg.mean())
    return {
        "images": n, "exact_acc": acc_e, "jpeg_acc": acc_j,
        "exact_se": math.sqrt(acc_e * (1 - acc_e) / n), "jpeg_se": math.sqrt(acc_j * (1 - acc_j) / n),
        "difference": acc_e - acc_j, "difference_se": math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n,
        "exact_only": b, "jpeg_only": c, "agreement": float(np.mean(exact_pred == jpeg_pred)),
    }


def markdown(rows: dict[str, dict]) -> str:
    lines = ["| model | exact images | their JPEG copies | exact − JPEG | right on exact only / JPEG only | same top-1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['exact_acc']:.1f} ± {100 * r['exact_se']:.1f} % | "
                     f"{100 * r['jpeg_acc']:.1f} ± {100 * r['jpeg_se']:.1f} % | "
                     f"{100 * r['difference']:+.1f} ± {100 * r['difference_se']:.1f} pt | {r['exact_only']} / {r['jpeg_only']} | "
                     f"{100 * r['agreement']:.1f} % |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.jpeg_offset", description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=REPO / "exports" / "models")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--models", default=None, help="comma-separated names (default: every model of the manifest)")
    p.add_argument("--limit", type=int, default=None, help="the first N image pairs (default: all 517)")
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        if not (args.models_dir / "manifest.json").is_file():
            raise OffsetError(f"{args.models_dir} has no manifest.json: not a models folder")
        entries = {e["name"]: args.models_dir / e["file"] for e in read_manifest(args.models_dir)["models"]}
        wanted = [m for m in (args.models.split(",") if args.models else entries) if m]
        unknown = [m for m in wanted if m not in entries]
        if unknown or not wanted:
            raise OffsetError(f"unknown models {unknown}; the folder has {sorted(entries)}")
        exact, jpeg, labels = load_pairs(args.data_dir, args.limit)
    except (OffsetError, OSError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = {name: compare(top1(entries[name], exact), top1(entries[name], jpeg), labels) for name in wanted}
    report = (f"{markdown(rows)}\n\n{len(labels)} image pairs; onnxruntime {ort.__version__} (CPU), "
              f"{platform.machine()}; `python -m benchmarks.jpeg_offset`.\n")
    return emit_report(report, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
