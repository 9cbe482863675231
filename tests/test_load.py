"""Load: 200 /classify calls from 8 concurrent gradio_client clients, zero errors.

Every call uploads a distinct image (CIFAR test images, flipped/shifted), so each one runs
the model instead of hitting the dashboard's (image, model) cache.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file

from benchmarks.app_latency import distinct_images
from conftest import CIFAR10_CLASSES

CALLS = 200
CLIENTS = 8
LOAD_MODEL = "resnet18"  # the cheapest variant keeps the suite short; the benchmark covers all


@pytest.mark.timeout(600)
def test_200_classify_calls_from_8_clients(app_server, tmp_path: Path):
    images = distinct_images(tmp_path, CALLS)
    clients = [Client(app_server.url, verbose=False) for _ in range(CLIENTS)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        client = clients[index]
        for path in images[index::CLIENTS]:
            start = time.perf_counter()
            try:
                result = client.predict(handle_file(str(path)), LOAD_MODEL, api_name="/classify")
                assert result["label"] in CIFAR10_CLASSES, result
            except Exception as error:  # noqa: BLE001 - counted, reported below
                with lock:
                    errors.append(f"{path.name}: {type(error).__name__}: {error}")
                continue
            with lock:
                latencies.append((time.perf_counter() - start) * 1000.0)

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(worker, range(CLIENTS)))
    wall = time.perf_counter() - started
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (float("nan"), float("nan"))
    print(f"\nload: {len(latencies)}/{CALLS} ok, {len(errors)} errors, {CLIENTS} clients, model {LOAD_MODEL}: "
          f"p50 {p50:.0f} ms, p95 {p95:.0f} ms per call, {CALLS / wall:.1f} calls/s, wall {wall:.1f} s")
    assert not errors, errors[:5]
    assert len(latencies) == CALLS
