"""Bring a GPU window's results into the repository: ``python -m exports.ingest DIR [DIR ...]``.

Each ``DIR`` is what one device call of ``gpu_window`` returned (its
``window.json``, ``window.log`` and, from the ``models`` call, one ``NAME.int8.safetensors``
per model; see ``exports.compact``). In order:

1. every finished training card goes to the Table 1 results folder (``results/table1/``,
   the protocol's ``out``), where ``training.sweep --report-only`` reads it;
2. every returned model is rebuilt from its int8 file, exported to ONNX (fp16 weights,
   parity against the rebuilt PyTorch model on 64 test images, checked by
   ``exports.export``) into a staging folder and quantised to int8 (``exports.quantize``);
   the **bundled file itself** is evaluated with onnxruntime on the whole test split (all
   10,000 images of the JPEG copy unless ``--limit-test``): **one pass per model**. The
   int8 gate's float accuracy is the training card's ``compression.test_acc_float32``
   (measured on the GPU on the same split), and its top-1 agreement is measured on the first
   ``--agreement-images``; only when the card has no such figure (or counted other images)
   does the fp16 file get a pass of its own, and only when the gate fails is the fp16 file
   bundled (and then evaluated). The result goes into the card (``test_acc``,
   ``bundled_accuracy``) and the manifest; then the staging folder replaces
   ``--models-dir`` (two renames; the old folder is deleted last);
3. the robustness lab measures the new models (``robustness.json`` beside them, which the
   dashboard's Robustness tab reads; ``--robustness-scale`` shrinks its plan, 0 skips it);
4. README's bundled-model table, robustness table, the Table 1 block and
   ``benchmarks/RESULTS.md`` are rewritten from those numbers (``--no-docs`` skips this;
   tests use it).

Run it after ``python -m gpu_window restore``. Exit status: 0 done; 1 a parity
check failed (nothing replaced); 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from robustness.report import Plan, default_jobs, last_results, markdown_table, measure_folder, plan_for
from serving.cards import RunCard, embed_card, read_onnx_card
from serving.cifar_data import SOURCE_NAMES, first_test_images, resolve_data_dir
from serving.files import atomic_write_json, atomic_write_text, update_marked_block
from serving.manifest import drop_from_manifest, read_manifest, write_model
from serving.paths import BUNDLED_MODELS_DIR, REPO_ROOT
from serving.runtime import ModelError, normalize_uint8
from serving.variants import variant_rank
from training.tables import layer_table, throughput_table

# Module, not names: tests count evaluations by patching quantize.predictions.
from . import quantize

PROTOCOL = REPO_ROOT / "training" / "sweeps" / "short_cifar10.json"
#: The targets of issue 10, checked and reported (never enforced: an honest miss is recorded).
TARGET_DEFAULT, TARGET_EVERY, TARGET_DELTA_POINTS = 0.92, 0.90, 0.3
MODELS_BLOCK, RESULTS_BLOCK, BENCH_BLOCK = "bundled-models", "gpu-window-models", "gpu-window-bench"
ROBUSTNESS_BLOCK = "robustness"


class IngestError(ValueError):
    """Bad input, reported in one line."""


def read_windows(dirs: Sequence[Path]) -> list[dict]:
    windows = []
    for directory in dirs:
        path = directory / "window.json"
        if not path.is_file():
            raise IngestError(f"{directory}: no window.json (is this a files_at folder of a gpu_window call?)")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise IngestError(f"{path}: not valid JSON ({error})") from None
        record["_dir"] = str(directory)
        windows.append(record)
    return windows


def collect_cards(windows: Sequence[dict], results_dir: Path, log: Callable[[str], None] = print) -> list[RunCard]:
    """Write every finished card into ``results_dir`` (atomically); unfinished ones are skipped
    (a point interrupted by the end of a window is re-run later)."""
    written = []
    for window in windows:
        if window.get("mode") == "probe":  # settings under test, not Table 1 points: window.json is their record
            log(f"{window.get('_dir')}: a probe's cards are not kept as results (commit its window.json)")
            continue
        for entry in window.get("runs", []):
            card = RunCard.from_dict(entry.get("card") or {})
            if not card.is_finished:
                log(f"card {entry.get('name')}: {entry.get('status', 'missing')}, not kept (re-run later)")
                continue
            card.extra["window"] = {"device": window.get("device"), "torch": window.get("torch"), "mode": window.get("mode"),
                                    "started": window.get("started")}
            atomic_write_json(results_dir / f"{card.name}.json", card.to_dict())
            written.append(card)
    log(f"{len(written)} finished cards -> {results_dir}")
    return written


def _test_split(data_dir: str | None, limit_test: int | None):
    """The test images the bundled files are evaluated on: official files, else the JPEG copy."""
    images, labels, source = first_test_images(limit_test or 10_000, data_dir, sources=("torchvision", "jpeg"))
    return images, labels, f"{SOURCE_NAMES[source]} from {resolve_data_dir(data_dir)}"


def onnx_accuracy(path: Path, images: np.ndarray, labels: np.ndarray, normalize: dict,
                  threads: int | None = None) -> float:
    """Top-1 accuracy of an exported ``.onnx`` file with onnxruntime (CPU) on uint8 NHWC images."""
    return float(np.mean(quantize.predictions(path, normalize_uint8(images, normalize["mean"], normalize["std"]), threads) == labels))


def gate_reference(compression: dict | None, n_images: int) -> tuple[float | None, str]:
    """The int8 gate's float accuracy from the training card: ``compression.test_acc_float32``
    (the float32 model on the training device, right after training) when it was measured
    on as many test images as ingest evaluates (the whole split; the window measures all of
    it), else ``None``: the gate then measures the fp16 file on the same images itself."""
    comp = compression or {}
    acc, counted = comp.get("test_acc_float32"), comp.get("test_images")
    if acc is None or counted != n_images:
        return None, "onnxruntime CPU, same images"
    return float(acc), f"training card: compression.test_acc_float32 (float32 on {comp.get('measured_on')}, {counted} test images)"


def _bundle_file(fp16_path: Path, variant: str, int8: bool, images: np.ndarray, labels: np.ndarray, card: RunCard, data_dir: str | None,
                 threads: int | None, log: Callable[[str], None] = print, reference: float | None = None,
                 reference_source: str = "", agreement_images: int | None = None) -> tuple[Path, float, dict]:
    """The file the dashboard will serve, and its accuracy on ``images``: one onnxruntime pass
    over them, that of the bundled file.

    ``int8``: ``exports.quantize`` turns the fp16 export into ``VARIANT.int8.onnx`` beside it,
    gated on the same test images: its int8 pass *is* the bundled file's accuracy (the card
    embedded afterwards changes no weight). ``reference`` (see :func:`gate_reference`) is the
    float accuracy the gate's drop is measured from; the fp16 file then runs only on the
    first ``agreement_images`` (top-1 agreement). Without it, the gate measures the fp16 file
    on all images (a second pass). On success the fp16 file is dropped; when the gate fails,
    the fp16 file is bundled instead (logged) and evaluated (unless the gate already did).
    Not ``int8``: the fp16 file is evaluated.
    """
    if not int8:
        return fp16_path, onnx_accuracy(fp16_path, images, labels, card.normalize, threads), {}
    quantized = quantize.quantize_model(fp16_path, fp16_path.with_name(f"{variant}.int8.onnx"), test_images=len(labels),
                                        data_dir=data_dir, name=variant, log=log, reference_acc=reference,
                                        reference_source=reference_source,
                                        agreement_images=agreement_images or quantize.DEFAULT_AGREEMENT_IMAGES,
                                        threads=threads)
    gate = quantized.accuracy.to_dict()
    fp16_measured = reference is None  # the gate ran the fp16 file over all images
    extra = {"fp16_file_test_acc": gate["float_acc"] if fp16_measured else None,
             "int8_top1_agreement_with_fp16": gate["top1_agreement"], "agreement_images": gate["agreement_images"],
             "gate_float_source": gate["float_source"]}
    if quantized.path is None:
        log(f"{variant}: the int8 accuracy gate failed (drop {gate['drop_points']:.2f} pt, agreement "
            f"{gate['top1_agreement']:.4f}); the fp16 file is bundled")
        if fp16_measured:
            return fp16_path, gate["float_acc"], extra
        acc = onnx_accuracy(fp16_path, images, labels, card.normalize, threads)
        extra["fp16_file_test_acc"] = acc
        return fp16_path, acc, extra
    drop_from_manifest(fp16_path)
    fp16_path.unlink()
    return quantized.path, gate["int8_acc"], extra


def bundle_models(windows: Sequence[dict], models_dir: Path, data_dir: str | None, limit_test: int | None,
                  allow_unfinished: bool, threads: int | None, log: Callable[[str], None] = print, int8: bool = True,
                  agreement_images: int | None = None) -> list[dict]:
    """Export, evaluate and install the returned models; returns one row per model
    (``int8``: the bundled files are int8, as the dashboard serves; see :func:`_bundle_file`)."""
    # start-up: these import torch (several seconds), needed only once models are rebuilt;
    # `--help` and input errors answer without it
    from hybrid_model import learned_strides  # start-up: torch
    from training.checkpoint import load_model, save_checkpoint  # start-up: torch

    from .compact import read_compact  # start-up: torch
    from .export import export_checkpoint  # start-up: torch

    files = [Path(w["_dir"]) / e["file"] for w in windows for e in w.get("runs", []) if e.get("file")]
    if not files:
        return []
    staging = models_dir.parent / f".{models_dir.name}.ingest-{os.getpid()}"
    checkpoints = staging.parent / f".{models_dir.name}.checkpoints-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rows = []
    try:
        images, labels, source = _test_split(data_dir, limit_test)
        ingest_started = time.perf_counter()
        for path in files:
            if not path.is_file():
                raise IngestError(f"{path}: listed in window.json but not there (copy every file of the call)")
            state, raw = read_compact(path)
            card = RunCard.from_dict(raw)
            if not card.is_finished and not allow_unfinished:
                log(f"{path.name}: trained {card.epoch}/{card.epochs} epochs; skipped (--allow-unfinished bundles it)")
                continue
            model = load_model(card, state, str(path))
            variant = card.variant
            save_checkpoint(model, card, checkpoints / variant)
            export_started = time.perf_counter()
            result = export_checkpoint(checkpoints / f"{variant}.json", staging / f"{variant}.onnx", fp16=True,
                                       data_dir=data_dir, name=variant, log=log)
            if result.path is None:
                raise RuntimeError(f"{variant}: ONNX parity check failed (logits differ by {result.parity.logits_max_abs:.3e})")
            comp = card.compression or {}
            reference = comp.get("test_acc_float32", card.test_acc)
            gate_float, gate_source = gate_reference(comp, len(labels))
            started = time.perf_counter()
            export_seconds = started - export_started
            bundled_path, acc, extra = _bundle_file(result.path, variant, int8, images, labels,
                                                    RunCard.from_dict(result.card), data_dir, threads, log,
                                                    reference=gate_float, reference_source=gate_source,
                                                    agreement_images=agreement_images)
            seconds = time.perf_counter() - started
            delta = None if reference is None else 100 * (acc - reference)
            full = read_onnx_card(bundled_path)
            full.training_test_acc = card.test_acc
            full.test_acc = acc
            full.bundled_accuracy = {
                "test_acc": acc, "test_images": int(len(labels)), "data": source, "engine": f"onnxruntime {_ort_version()} CPU",
                "precision": full.precision, **extra,
                "reference_float32_test_acc": reference, "delta_points": delta,
                "within_target": None if delta is None else abs(delta) <= TARGET_DELTA_POINTS, "seconds": round(seconds, 1),
                "export_seconds": round(export_seconds, 1),
            }
            proto = onnx.load(str(bundled_path))
            embed_card(proto, full)  # the doc string the exporter / quantiser wrote stays
            write_model(bundled_path, proto.SerializeToString(), full)
            rows.append({"variant": variant, "test_acc": acc, "reference": reference, "delta_points": delta,
                         "int8_acc": comp.get("test_acc_int8"), "epochs": card.epochs, "epoch": card.epoch,
                         "hardware": card.hardware, "torch": card.torch,
                         "seconds_per_epoch": card.seconds_per_epoch, "train_wall_seconds": card.train_wall_seconds,
                         "learned_strides": learned_strides(model), "parity": (full.parity or full.float_parity or {}).get("logits_max_abs"),
                         "test_images": int(len(labels)), "size_bytes": bundled_path.stat().st_size,
                         "precision": full.precision, "fp16_file_acc": extra.get("fp16_file_test_acc"),
                         "off_protocol": card.off_protocol, "n_train": (card.data or {}).get("n_train"),
                         "measured_on": comp.get("measured_on")})
            log(f"{variant}: bundled file {acc:.4f} on {len(labels)} test images (export + parity {export_seconds:.0f} s, "
                f"quantise + evaluate {seconds:.0f} s); "
                f"float32 on the training device {reference if reference is not None else float('nan'):.4f}")
        if not rows:
            shutil.rmtree(staging, ignore_errors=True)
            return rows
        _swap(staging, models_dir, keep=[r["variant"] for r in rows])
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{len(rows)} models installed in {models_dir} ({time.perf_counter() - ingest_started:.0f} s after the data load)")
    return rows


def _ort_version() -> str:
    return onnxruntime.__version__


def _swap(staging: Path, models_dir: Path, keep: Sequence[str]) -> None:
    """``staging`` becomes ``models_dir``; models of the old folder that were not replaced are
    carried over (with their manifest rows), so ingesting fewer models never drops one."""
    if models_dir.is_dir():
        new_rows = {m["file"] for m in read_manifest(staging)["models"]}
        old = read_manifest(models_dir)
        carried = [m for m in old["models"] if m.get("file") not in new_rows and (models_dir / m["file"]).is_file()]
        for row in carried:
            shutil.copy2(models_dir / row["file"], staging / row["file"])
        if carried:
            manifest = read_manifest(staging)
            manifest["models"] = sorted(manifest["models"] + carried, key=lambda m: str(m.get("name")))
            atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        old_dir = models_dir.parent / f".{models_dir.name}.old-{os.getpid()}"
        os.replace(models_dir, old_dir)
        os.replace(staging, models_dir)
        shutil.rmtree(old_dir, ignore_errors=True)
    else:
        os.replace(staging, models_dir)


# --------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------
def models_markdown(rows: Sequence[dict], window: dict) -> str:
    """The bundled-model table (README and RESULTS.md) with the targets' verdicts."""
    rows = sorted(rows, key=lambda r: variant_rank(r["variant"]))
    hardware = sorted({str(r.get("hardware")) for r in rows})
    epochs = sorted({f"{r['epoch']}/{r['epochs']}" for r in rows})
    n_train = sorted({f"{r['n_train']:,}" for r in rows if r.get("n_train")})
    lines = [
        f"`exports/models/` holds {len(rows)} CIFAR-10 models trained on {' / '.join(n_train) or '?'} training images (JPEG copy) "
        f"under the short protocol (`training/sweeps/short_cifar10.json`; epochs {', '.join(epochs)}"
        + ("; shortened: off protocol" if any(r["off_protocol"] for r in rows) else "")
        + f") on {', '.join(hardware)} (torch {rows[0].get('torch')}), returned as int8 weights (`exports.compact`), "
        f"exported to ONNX with fp16 weights (parity checked against the rebuilt PyTorch model) and "
        + ("quantised to int8 by `exports.quantize` (its accuracy gate on the same images). " if any(r.get("precision") == "int8" for r in rows) else "bundled as fp16. ")
        + f"Accuracy of each bundled file with onnxruntime (CPU) on {rows[0]['test_images']:,} CIFAR-10 (JPEG copy) "
        f"test images; “float32” and “int8 weights” are the uncompressed and the returned PyTorch model, measured on the training device "
        f"({', '.join(sorted({str(r.get('measured_on')) for r in rows}))}) right after training (`python -m exports.ingest`)"
        + ("; the int8 gate measures its drop from that float32 figure, so the fp16 file is not evaluated (–)."
           if any(r.get("precision") == "int8" and r.get("fp16_file_acc") is None for r in rows) else "."),
        "",
        "| model | bundled file | precision | fp16 file | float32 | int8 weights | Δ bundled − float32 | s/epoch | training s | fp16 parity |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pct = lambda v: "–" if v is None else f"{100 * v:.2f} %"  # noqa: E731
        delta = "–" if r["delta_points"] is None else f"{r['delta_points']:+.2f} pt"
        spe = "–" if r.get("seconds_per_epoch") is None else f"{r['seconds_per_epoch']:.1f}"
        total = "–" if r.get("train_wall_seconds") is None else f"{r['train_wall_seconds']:.0f}"
        parity = "–" if r.get("parity") is None else f"{r['parity']:.1e}"
        lines.append(f"| {r['variant']} | {pct(r['test_acc'])} | {r.get('precision', '–')} | {pct(r.get('fp16_file_acc'))} | "
                     f"{pct(r['reference'])} | {pct(r['int8_acc'])} | {delta} | "
                     f"{spe} | {total} | {parity} |")
    best = max(rows, key=lambda r: r["test_acc"])
    lines += ["", f"Targets (issue 10): default model ≥ 92 %: {'met' if best['test_acc'] >= TARGET_DEFAULT else 'NOT met'} "
              f"({best['variant']} {100 * best['test_acc']:.2f} %); every model ≥ 90 %: "
              f"{'met' if all(r['test_acc'] >= TARGET_EVERY for r in rows) else 'NOT met'}; bundled file within "
              f"0.3 pt of its float32 model: "
              f"{'met' if all(r['delta_points'] is not None and abs(r['delta_points']) <= TARGET_DELTA_POINTS for r in rows) else 'NOT met'}."]
    if window.get("elapsed_s") is not None:
        lines.append(f"Window: call `{window.get('mode')}` took {window['elapsed_s']:.0f} s of its {window.get('budget_s', 0):.0f} s "
                     f"budget on {window.get('device')}.")
    return "\n".join(lines) + "\n"


def bench_markdown(windows: Sequence[dict]) -> str | None:
    """The GPU benchmarks of an ``extra`` call (tables as the scripts print them)."""
    parts = []
    for window in windows:
        for step in window.get("steps", []):
            result = step["result"]
            if step["name"].startswith("throughput"):
                parts.append(f"**{step['name']}** ({result.get('device')}, torch {result.get('torch')}, batch {result.get('batch')}, "
                             f"compile={result.get('compile')}):\n\n{throughput_table(result['results'])}\n")
            else:
                parts.append(f"**{step['name']}** ({window.get('device')}, torch {result.get('torch')}; fwd+bwd, fast "
                             f"separable path vs torch.fft reference):\n\n{layer_table(result.get('layers', []))}\n")
    return "\n".join(parts) if parts else None


def update_block(path: Path, name: str, body: str, log: Callable[[str], None] = print) -> None:
    try:
        update_marked_block(path, name, body)
    except (OSError, ValueError) as error:  # unreadable, or the markers are missing
        log(f"{path}: {error}; block {name} not updated")
        return
    log(f"updated block {name} of {path}")


def robustness_plan(models_dir: Path, scale: float, half_width: float | None) -> Plan | None:
    """The robustness lab's plan for the new models: sized for ``±half_width`` points from the
    folder's last results (the earlier models' rates: same variants), else the default plan
    scaled by ``scale``; ``None`` (skip the lab) when ``scale`` is 0 and no half-width is asked."""
    if half_width is not None:
        return plan_for(half_width / 100, last_results(models_dir, current_only=False))
    return Plan().scaled(scale) if scale > 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m exports.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="files_at folders of the window's device calls")
    p.add_argument("--models-dir", type=Path, default=BUNDLED_MODELS_DIR)
    p.add_argument("--protocol", type=Path, default=PROTOCOL, help="Table 1 protocol (its 'out' is the results folder)")
    p.add_argument("--results-dir", type=Path, default=None, help="default: the protocol's out (results/table1)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 JPEG copy (default: ../shared/data, ./data)")
    p.add_argument("--limit-test", type=int, default=None, help="evaluate on the first N test images (default: all 10,000)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    p.add_argument("--agreement-images", type=int, default=None,
                   help="int8 gate: test images its top-1 agreement with the fp16 export is measured on, when the card's "
                        "GPU float32 accuracy stands in for an fp16 pass (default 500)")
    p.add_argument("--precision", choices=("int8", "fp16"), default="int8",
                   help="bundled files: int8 (exports.quantize, gated; the dashboard's default) or the fp16 export")
    p.add_argument("--robustness-scale", type=float, default=1.0,
                   help="the robustness lab's plan, scaled (1: python -m robustness's defaults, ~30 min for five models "
                        "on a 2-core CPU; 0: skip it)")
    p.add_argument("--robustness-half-width", type=float, metavar="POINTS",
                   help="instead of the scaled default plan, the robustness plan that gives every summary figure a 95 %% "
                        "interval of +-POINTS (python -m robustness --half-width; 1.5: about an hour on a 2-core CPU)")
    p.add_argument("--allow-unfinished", action="store_true", help="also bundle models whose training was cut short")
    p.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    p.add_argument("--results-md", type=Path, default=REPO_ROOT / "benchmarks" / "RESULTS.md")
    p.add_argument("--no-docs", action="store_true", help="do not touch README / RESULTS.md / the Table 1 report")
    args = p.parse_args(argv)
    if args.limit_test is not None and args.limit_test < 1:
        p.error(f"--limit-test must be >= 1, got {args.limit_test}")
    if not args.robustness_scale >= 0:
        p.error(f"--robustness-scale must be >= 0, got {args.robustness_scale}")
    if args.robustness_half_width is not None and not 0 < args.robustness_half_width < 50:
        p.error(f"--robustness-half-width is in points, between 0 and 50, got {args.robustness_half_width:g}")
    if args.agreement_images is not None and args.agreement_images < 1:
        p.error(f"--agreement-images must be >= 1, got {args.agreement_images}")
    # start-up: these import torch (several seconds); --help and argument errors answer without it
    from training.checkpoint import CheckpointError
    from training.sweep import ConfigError, load_config  # start-up: torch


    if args.models_dir.resolve() == (BUNDLED_MODELS_DIR).resolve() and (REPO_ROOT / ".git" / "gpu-window.json").exists():
        print("error: the repository is still on the GPU-window scratch branch: run "
              "`python -m gpu_window restore` first", file=sys.stderr)
        return 2
    try:
        protocol = load_config(args.protocol)
        results_dir = args.results_dir or (REPO_ROOT / protocol.out)
        windows = read_windows(args.dirs)
        collect_cards(windows, results_dir)
        rows = bundle_models(windows, args.models_dir, args.data_dir, args.limit_test, args.allow_unfinished, args.threads,
                             int8=args.precision == "int8", agreement_images=args.agreement_images)
    except (IngestError, ConfigError, CheckpointError, ModelError, FileNotFoundError, ValueError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: {error}; {args.models_dir} not replaced", file=sys.stderr)
        return 1
    robustness = None
    if rows:
        print(models_markdown(rows, next(w for w in windows if w.get("mode") == "models")))
        plan = robustness_plan(args.models_dir, args.robustness_scale, args.robustness_half_width)
        if plan is not None:
            robustness = markdown_table(measure_folder(args.models_dir, plan, data_dir=args.data_dir, jobs=default_jobs()))
            print(robustness)
    if not args.no_docs:
        if rows:
            table = models_markdown(rows, next(w for w in windows if w.get("mode") == "models"))
            update_block(args.readme, MODELS_BLOCK, table)
            update_block(args.results_md, RESULTS_BLOCK, table)
        if robustness:
            update_block(args.readme, ROBUSTNESS_BLOCK, robustness)
        bench = bench_markdown(windows)
        if bench:
            update_block(args.results_md, BENCH_BLOCK, bench)
        from training import sweep  # start-up: imports torch (see above)

        sweep.main(["--config", str(args.protocol), "--out", str(results_dir), "--report-only", "--readme", str(args.readme)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
