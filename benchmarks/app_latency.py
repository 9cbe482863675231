"""Latency of the dashboard per upload: /classify then /spectra for the same image.

    python app.py --port 7860 --models-dir exports/models &          # a running app
    python benchmarks/app_latency.py --url http://127.0.0.1:7860/ [--models hybrid,resnet18]
        [--uploads 40] [--warmup 3] [--models-dir exports/models] [--markdown OUT.md]

For every model, ``--uploads`` distinct images (real CIFAR-10 test images, flipped and
shifted so none hits the dashboard's (image, model) cache) are sent one at a time through
gradio_client: ``/classify`` (upload + forward pass + top-5), then ``/spectra`` for the
same image (upload + spectra grid from the cached forward pass). Reported per model:
p50/p95 of classify, of spectra, and of the two together ("per upload"), client side
(uploads, HTTP, Gradio queue and JSON included; all times in ms). With ``--models-dir``
(the folder the app serves) it also runs the same handlers in this process, without
Gradio: "server-side" is classify + bar/view + spectra per upload, "ORT forward" the bare
onnxruntime run inside it.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "tests" / "assets"


def distinct_images(folder: Path, count: int) -> list[Path]:
    """``count`` distinct PNGs in ``folder`` made from the real CIFAR-10 images in
    ``tests/assets``: each shifted (by one more row every second round) and every other round
    flipped, so none shares the dashboard's (image content, model) cache key with another or
    with an original example."""
    sources = sorted(ASSETS.glob("*.png"))
    if not sources:
        raise SystemExit(f"no images in {ASSETS}")
    paths = []
    for k in range(count):
        image = np.asarray(Image.open(sources[k % len(sources)]).convert("RGB"))
        variant = k // len(sources)
        if variant % 2:
            image = image[:, ::-1]
        image = np.roll(image, 1 + variant // 2, axis=0)  # never the original: examples may be cached
        path = folder / f"image_{k:04d}.png"
        Image.fromarray(np.ascontiguousarray(image)).save(path)
        paths.append(path)
    return paths


def percentiles(values: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(values, [50, 95])
    return float(p50), float(p95)


def bench_model(client, model: str, images: list[Path], warmup: int) -> dict[str, list[float]]:
    from gradio_client import handle_file

    times: dict[str, list[float]] = {"classify": [], "spectra": [], "upload": []}
    for index, path in enumerate(images):
        start = time.perf_counter()
        label = client.predict(handle_file(str(path)), model, api_name="/classify")
        middle = time.perf_counter()
        client.predict(handle_file(str(path)), model, False, 3, api_name="/spectra")
        end = time.perf_counter()
        assert label["label"], label
        if index < warmup:
            continue
        times["classify"].append((middle - start) * 1000)
        times["spectra"].append((end - middle) * 1000)
        times["upload"].append((end - start) * 1000)
    return times


def in_process(models_dir: Path, model: str, images: list[Path], warmup: int) -> dict[str, list[float]]:
    """The same handlers without Gradio/HTTP: what the server itself spends per upload
    (classify incl. the forward pass, then the bar chart/view and the spectra grid from
    the cached forward pass), and the bare onnxruntime run inside it."""
    from dashboard.handlers import Handlers
    from dashboard.service import DashboardService

    service = DashboardService(models_dir)
    service.preload()
    handlers = Handlers(service)
    times: dict[str, list[float]] = {"server": [], "ort": []}
    for index, path in enumerate(images):
        start = time.perf_counter()
        handlers.classify(str(path), model)
        handlers.views(str(path), model)
        handlers.spectra(str(path), model, False, 3)
        elapsed = (time.perf_counter() - start) * 1000
        if index >= warmup:
            times["server"].append(elapsed)
            times["ort"].append(float(service.analyse(str(path), model).prediction.latency_ms))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--models", default="all", help="comma-separated model names (default: all served)")
    parser.add_argument("--uploads", type=int, default=40, help="timed uploads per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed uploads per model first")
    parser.add_argument("--models-dir", type=Path, default=None, help="also time bare onnxruntime on these files")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    args = parser.parse_args(argv)

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from gradio_client import Client

    client = Client(args.url, verbose=False)
    served = client.predict(api_name="/models")
    names = [m["name"] for m in served["models"]]
    models = names if args.models == "all" else [m for m in args.models.split(",") if m]
    missing = [m for m in models if m not in names]
    if missing:
        raise SystemExit(f"not served by {args.url}: {missing}; served: {names}")

    rows = []
    header = ("| model | variant | uploads | classify p50 / p95 | spectra p50 / p95 | "
              "**classify + spectra p50 / p95** | server-side p50 / p95 | ORT forward p50 |")
    rows.append(header)
    rows.append("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            folder = Path(tmp) / model
            folder.mkdir()
            images = distinct_images(folder, args.uploads + args.warmup)  # cache keys are (image, model)
            times = bench_model(client, model, images, args.warmup)
            server = ort = "–"
            if args.models_dir is not None:
                local = in_process(args.models_dir, model, images, args.warmup)
                server = "{:.1f} / {:.1f}".format(*percentiles(local["server"]))
                ort = f"{np.percentile(local['ort'], 50):.1f}"
            variant = next(m["variant"] for m in served["models"] if m["name"] == model)
            c50, c95 = percentiles(times["classify"])
            s50, s95 = percentiles(times["spectra"])
            u50, u95 = percentiles(times["upload"])
            rows.append(f"| {model} | {variant} | {len(times['upload'])} | {c50:.1f} / {c95:.1f} | "
                        f"{s50:.1f} / {s95:.1f} | **{u50:.1f} / {u95:.1f}** | {server} | {ort} |")
            print(rows[-1], flush=True)
    # Context: a round trip that does no work (/models), i.e. gradio_client + queue overhead.
    empty = []
    for _ in range(20):
        start = time.perf_counter()
        client.predict(api_name="/models")
        empty.append((time.perf_counter() - start) * 1000)
    rows.append("")
    rows.append("Empty round trip (`/models`, no work; gradio_client + queue + HTTP): p50 / p95 "
                "{:.1f} / {:.1f} ms.".format(*percentiles(empty)))
    table = "\n".join(rows)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    print()
    print(table)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nMachine: {machine}; 1-min load average at the end: {load:.1f}")
    if args.markdown:
        args.markdown.write_text(table + f"\n\nMachine: {machine}; 1-min load average at the end: {load:.1f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
