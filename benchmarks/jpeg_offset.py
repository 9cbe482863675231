"""What the JPEG copy costs: every bundled model on exact test images and on their JPEG copies.

    python -m benchmarks.jpeg_offset [--models-dir exports/models] [--data-dir ../shared/data]
        [--models a,b] [--limit N] [--json OUT] [--markdown OUT]

The data folder holds the first 517 official CIFAR-10 test images bit for bit
(``cifar10_partial_test.npz``) and the JPEG copy of the whole test set, in the official
order (``cifar10_test_jpeg.npz``; quality 75, 4:2:0), so its first 517 images are the same
photographs after JPEG (the labels are checked to agree). Each bundled ONNX file
(onnxruntime, CPU, the normalisation of its card, batches of 128) classifies both; the table
gives the two accuracies with their binomial standard errors, the paired difference
exact − JPEG with its paired standard error (from the discordant pairs), and how often the
two inputs get the same top-1 class. Torch-free: numpy, Pillow and onnxruntime.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from serving.files import atomic_write_json
from serving.manifest import read_manifest
from serving.paths import BUNDLED_MODELS_DIR, REPO_ROOT
from serving.runtime import CPU, ModelError, OnnxModel, normalize_uint8

from . import emit_report

EXACT_FILE, JPEG_FILE = "cifar10_partial_test.npz", "cifar10_test_jpeg.npz"
BATCH = 128
PROG = "python -m benchmarks.jpeg_offset"


class OffsetError(ValueError):
    """Bad input: one sentence."""


def _decode(blob: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob[offsets[k]:offsets[k + 1]].tobytes())).convert("RGB"))


def load_pairs(data_dir: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(exact, jpeg, labels)``: the bit-exact test images and the JPEG copies of the same
    images, uint8 ``(N, 32, 32, 3)`` each, and their labels (checked to agree)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise OffsetError(f"{data_dir} is not a folder (the data folder with {EXACT_FILE} and {JPEG_FILE})")
    paths = [data_dir / EXACT_FILE, data_dir / JPEG_FILE]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise OffsetError(f"{data_dir} lacks {', '.join(missing)} (the CIFAR-10 copies described in its README)")
    try:
        with np.load(paths[0], allow_pickle=False) as exact_file:
            exact, labels = exact_file["x"], exact_file["y"]
        n = len(labels) if limit is None else min(limit, len(labels))
        with np.load(paths[1], allow_pickle=False) as jpeg_file:
            offsets, blob, jpeg_labels = jpeg_file["offsets"], jpeg_file["jpeg"], jpeg_file["y"]
            if len(jpeg_labels) < n:
                raise OffsetError(f"{paths[1].name} has {len(jpeg_labels)} images, fewer than the {n} exact ones")
            jpeg = np.stack([_decode(blob, offsets, k) for k in range(n)]) if n else np.zeros((0, 32, 32, 3), np.uint8)
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as error:
        if isinstance(error, OffsetError):
            raise
        raise OffsetError(f"cannot read the test images in {data_dir}: {error}") from None
    if n == 0:
        raise OffsetError(f"{paths[0].name} holds no images")
    if exact.dtype != np.uint8 or exact.shape[1:] != (32, 32, 3) or jpeg.shape != (n, 32, 32, 3):
        raise OffsetError(f"unexpected image arrays: exact {exact.shape} {exact.dtype}, JPEG {jpeg.shape}")
    if not np.array_equal(labels[:n], jpeg_labels[:n]):
        raise OffsetError("the exact and the JPEG test images have different labels: not the same images")
    return exact[:n], jpeg, labels[:n].astype(np.int64)


def top1(model: OnnxModel, images: np.ndarray) -> np.ndarray:
    """Top-1 class of every image, in batches of :data:`BATCH` (the model's own normalisation)."""
    x = normalize_uint8(images, model.mean, model.std)
    return np.concatenate([model.run(x[s:s + BATCH])[0].argmax(1) for s in range(0, len(x), BATCH)])


def compare(exact_pred: np.ndarray, jpeg_pred: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracies with binomial standard errors, the paired difference exact − JPEG with its
    standard error from the discordant pairs (``sqrt(b + c - (b - c)^2 / n) / n``), the
    counts behind them and the top-1 agreement of the two inputs."""
    n = len(labels)
    right_exact, right_jpeg = exact_pred == labels, jpeg_pred == labels
    b, c = int(np.sum(right_exact & ~right_jpeg)), int(np.sum(~right_exact & right_jpeg))  # discordant pairs
    acc_e, acc_j = float(right_exact.mean()), float(right_jpeg.mean())
    same = int(np.sum(exact_pred == jpeg_pred))
    return {
        "images": n, "right_exact": int(right_exact.sum()), "right_jpeg": int(right_jpeg.sum()),
        "exact_acc": acc_e, "jpeg_acc": acc_j,
        "exact_se": math.sqrt(acc_e * (1 - acc_e) / n), "jpeg_se": math.sqrt(acc_j * (1 - acc_j) / n),
        "difference": (b - c) / n, "difference_se": math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n,
        "exact_only": b, "jpeg_only": c, "same_top1": same, "agreement": same / n,
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


def cpu_name() -> str:
    """The CPU as ``lscpu`` names it ("Model name"); /proc/cpuinfo or ``platform`` where it cannot."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name" and value.strip():
            return value.strip()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _models(models_dir: Path, names: str | None) -> dict[str, Path]:
    if not models_dir.is_dir():
        raise OffsetError(f"{models_dir} is not a folder (--models-dir: the bundled models, e.g. exports/models)")
    if not (models_dir / "manifest.json").is_file():
        raise OffsetError(f"{models_dir} has no manifest.json: not a models folder")
    try:
        rows = read_manifest(models_dir)["models"]
        entries = {str(e["name"]): models_dir / str(e["file"]) for e in rows}
    except (KeyError, TypeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise OffsetError(f"{models_dir / 'manifest.json'} is unreadable: {error}") from None
    if not entries:
        raise OffsetError(f"{models_dir / 'manifest.json'} lists no models")
    wanted = list(dict.fromkeys(m.strip() for m in names.split(",") if m.strip())) if names else list(entries)
    unknown = [m for m in wanted if m not in entries]
    if unknown or not wanted:
        raise OffsetError(f"unknown models {unknown}; the folder has {sorted(entries)}")
    return {m: entries[m] for m in wanted}


def measure(models: dict[str, Path], exact: np.ndarray, jpeg: np.ndarray, labels: np.ndarray,
            threads: int | None = None) -> dict[str, dict]:
    """:func:`compare` of every model (name -> ONNX path) on the exact images and their JPEG copies."""
    rows = {}
    for name, path in models.items():
        model = OnnxModel(path, providers=[CPU], intra_op_threads=threads)
        if model.num_classes <= int(labels.max()):
            raise OffsetError(f"{name}: {model.num_classes} classes, but the CIFAR-10 labels reach {int(labels.max())}")
        rows[name] = compare(top1(model, exact), top1(model, jpeg), labels)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=BUNDLED_MODELS_DIR)
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--models", default=None, help="comma-separated names (default: every model of the manifest)")
    p.add_argument("--limit", type=int, default=None, help="the first N image pairs (default: all 517)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: cores up to 4)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON (atomically)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the report (atomically)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.limit is not None and args.limit < 1:
            raise OffsetError(f"--limit must be at least 1, got {args.limit}")
        if args.threads is not None and args.threads < 1:
            raise OffsetError(f"--threads must be at least 1, got {args.threads}")
        models = _models(args.models_dir, args.models)
        exact, jpeg, labels = load_pairs(args.data_dir, args.limit)
        rows = measure(models, exact, jpeg, labels, args.threads)
    except (OffsetError, ModelError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    command, cpu = " ".join([PROG, *map(shlex.quote, argv)]), cpu_name()
    report = (f"{markdown(rows)}\n\n{len(labels)} image pairs (CIFAR-10 test, official indices 0–{len(labels) - 1}: "
              f"bit-exact vs the JPEG copy); onnxruntime {ort.__version__} (CPU), {cpu}, {os.cpu_count()} logical cores; "
              f"{seconds:.0f} s; `{command}`.\n")
    if args.json is not None:
        atomic_write_json(args.json, {
            "command": command, "cpu": cpu, "cpu_cores": os.cpu_count(), "onnxruntime": ort.__version__,
            "images": len(labels), "exact_file": EXACT_FILE, "jpeg_file": JPEG_FILE, "seconds": round(seconds, 1),
            "models": rows,
        })
    return emit_report(report, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
