"""Dashboard latency and throughput per bundled model, client side (issue 13's benchmark).

    python benchmarks/app_latency.py [--models all] [--uploads 40] [--warmup 3] [--clients 8]
        [--throughput-calls 96] [--models-dir exports/models] [--markdown OUT.md]
    python benchmarks/app_latency.py --url http://127.0.0.1:7860/ --server-pid PID ...   # a running app

Without ``--url`` it starts ``app.py`` itself on 127.0.0.1 (``--models-dir``). Per model:

* **one caller**: ``--uploads`` distinct images (real CIFAR-10 test images, flipped and
  shifted so none hits the dashboard's (image, model) cache), one at a time: upload, then
  ``/classify``, then ``/spectra`` on the same upload; p50/p95 client side of
  "classify" (upload + call + result) and "spectra" (call + result). Plain HTTP
  (``/gradio_api/upload`` + ``/gradio_api/call``), or gradio_client with ``--client gradio``.
* **throughput**: ``--clients`` concurrent callers send ``--throughput-calls`` distinct
  images to ``/classify`` (upload + call each); calls per second over the wall time.
* **CPU per call** during the throughput run: the server's CPU time (all threads, from
  ``/proc``) per call, split into the model (the same ``OnnxModel.predict_pixels`` timed
  with ``time.process_time`` in this process, same thread settings) and everything else
  (HTTP, Gradio's queue, decoding, caching, JSON).

The 1-minute load average is printed beside every row: on a shared machine it says how
much the figures can be trusted.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

# Computed here, not imported from serving.paths: run as a script, this file puts the project
# on sys.path before it can import anything of it.
ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "dashboard" / "examples"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.raw_api import FILE, call, cpu_seconds, start_server, upload  # noqa: E402
from serving.files import atomic_write_text  # noqa: E402
from serving.registry import ModelRegistry  # noqa: E402


def distinct_images(folder: Path, count: int) -> list[Path]:
    """``count`` distinct PNGs in ``folder`` made from the real CIFAR-10 images in
    ``dashboard/examples``: each shifted (by one more row every second round) and every other round
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


def load1() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# ------------------------------------------------------------------ one call
class RawCaller:
    """Upload + call over plain HTTP."""

    def __init__(self, base: str) -> None:
        self.base = base

    def classify(self, path: Path, model: str) -> object:
        status, server_path = upload(self.base, path.name, path.read_bytes())
        if status != 200:
            raise RuntimeError(f"upload answered HTTP {status}")
        ref = {"path": server_path, "meta": FILE}
        event, payload = call(self.base, "classify", [ref, model])
        if event != "complete":
            raise RuntimeError(f"/classify: {event} {payload}")
        return ref

    def spectra(self, ref: object, model: str) -> None:
        event, payload = call(self.base, "spectra", [ref, model, False, 3])
        if event != "complete":
            raise RuntimeError(f"/spectra: {event} {str(payload)[:200]}")


class GradioCaller:
    """The same through gradio_client (which uploads the file again for /spectra)."""

    def __init__(self, base: str) -> None:
        self.client = Client(base, verbose=False)

    def classify(self, path: Path, model: str) -> object:
        self.client.predict(handle_file(str(path)), model, api_name="/classify")
        return path

    def spectra(self, ref: object, model: str) -> None:
        self.client.predict(handle_file(str(ref)), model, False, 3, api_name="/spectra")


def one_caller(caller, model: str, images: list[Path], warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"classify": [], "spectra": []}
    for index, path in enumerate(images):
        start = time.perf_counter()
        ref = caller.classify(path, model)
        middle = time.perf_counter()
        caller.spectra(ref, model)
        end = time.perf_counter()
        if index >= warmup:
            times["classify"].append((middle - start) * 1000)
            times["spectra"].append((end - middle) * 1000)
    return times


def throughput(make_caller, model: str, images: list[Path], clients: int, pid: int | None) -> dict[str, float]:
    """``clients`` callers over ``images`` (one /classify each): calls/s and server CPU ms per call."""
    callers = [make_caller() for _ in range(clients)]
    errors: list[str] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        for path in images[index::clients]:
            try:
                callers[index].classify(path, model)
            except Exception as error:  # noqa: BLE001 - reported
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")

    cpu0 = cpu_seconds(pid) if pid else float("nan")
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    wall = time.perf_counter() - start
    cpu = (cpu_seconds(pid) - cpu0) if pid else float("nan")
    if errors:
        raise SystemExit(f"{len(errors)} errors at {clients} clients, first: {errors[0]}")
    return {"calls_per_s": len(images) / wall, "server_cpu_ms": 1000 * cpu / len(images)}


def model_cpu_ms(models_dir: Path, model: str, images: list[Path], repeats: int = 3) -> float:
    """CPU time (all threads of this process) of one ``predict_pixels`` of ``model``, ms."""
    onnx = ModelRegistry(models_dir, verify_sha256=False).get(model)
    pixels = [onnx.prepare(p) for p in images[:16]]
    onnx.predict_pixels(pixels[0])  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        for seen in pixels:
            onnx.predict_pixels(seen)
    return 1000 * (time.process_time() - start) / (repeats * len(pixels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running app (default: start one on 127.0.0.1)")
    parser.add_argument("--server-pid", type=int, default=None, help="its process id, for CPU time (with --url)")
    parser.add_argument("--models", default="all", help="comma-separated model names (default: all served)")
    parser.add_argument("--uploads", type=int, default=40, help="timed uploads per model, one caller")
    parser.add_argument("--warmup", type=int, default=3, help="untimed uploads per model first")
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers for the throughput run")
    parser.add_argument("--throughput-calls", type=int, default=96, help="/classify calls per model at --clients")
    parser.add_argument("--client", choices=("raw", "gradio"), default="raw", help="plain HTTP or gradio_client")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "exports" / "models",
                        help="the models the app serves (also timed in this process for the model CPU)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="app-latency-") as tmp:
        tmp = Path(tmp)
        process = None
        if args.url is None:
            (tmp / "uploads").mkdir()
            process, base = start_server(args.models_dir, tmp / "uploads", 30.0, tmp / "app.log")
            pid = process.pid
        else:
            base, pid = args.url.rstrip("/") + "/", args.server_pid
        try:
            rows = run(args, base, pid, tmp)
        except OSError as error:  # urllib's URLError included: no dashboard at --url, or it went away
            print(f"error: {base}: {getattr(error, 'reason', error)}", file=sys.stderr)
            return 2
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=60)
    table = "\n".join(rows)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    footer = f"Machine: {machine}; client: {args.client}; 1-min load average at the end: {load1():.1f}"
    print("\n" + table + "\n\n" + footer)
    if args.markdown:
        atomic_write_text(args.markdown, table + "\n\n" + footer + "\n")
    return 0


def run(args: argparse.Namespace, base: str, pid: int | None, tmp: Path) -> list[str]:
    served = call(base, "models", [])[1][0]["models"]
    names = [m["name"] for m in served]
    models = names if args.models == "all" else [m for m in args.models.split(",") if m]
    missing = [m for m in models if m not in names]
    if missing:
        raise SystemExit(f"not served by {base}: {missing}; served: {names}")
    make = (lambda: RawCaller(base)) if args.client == "raw" else (lambda: GradioCaller(base))
    rows = [
        f"| model | classify p50 / p95 (ms) | spectra p50 / p95 (ms) | calls/s at {args.clients} clients | "
        "server CPU per call (ms) | of it model | of it the rest | load (1 min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        folder = tmp / model
        folder.mkdir()
        images = distinct_images(folder, args.uploads + args.warmup + args.throughput_calls)
        single = one_caller(make(), model, images[: args.uploads + args.warmup], args.warmup)
        busy = throughput(make, model, images[args.uploads + args.warmup:], args.clients, pid)
        model_ms = model_cpu_ms(args.models_dir, model, images) if args.models_dir else float("nan")
        c50, c95 = percentiles(single["classify"])
        s50, s95 = percentiles(single["spectra"])
        rest = busy["server_cpu_ms"] - model_ms
        rows.append(f"| {model} | {c50:.1f} / {c95:.1f} | {s50:.1f} / {s95:.1f} | {busy['calls_per_s']:.1f} | "
                    f"{busy['server_cpu_ms']:.1f} | {model_ms:.1f} | {rest:.1f} | {load1():.1f} |")
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
