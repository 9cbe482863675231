"""Concurrency: /classify calls from several gradio_client clients at once, zero errors.

A small run (24 calls, 4 clients) keeps the suite fast; the heavy runs are benchmarks:
``benchmarks/app_latency.py`` (throughput at 8 clients) and ``benchmarks/soak.py``
(2,000 calls from 16 clients, good and bad inputs mixed). Every call uploads a distinct
image (CIFAR test images, flipped/shifted), so each one runs the model instead of hitting
the dashboard's (image, model) cache.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from benchmarks.app_latency import distinct_images
from conftest import CIFAR10_CLASSES

CALLS = 24
CLIENTS = 4
LOAD_MODEL = "resnet18"  # the cheapest variant keeps the suite short; the benchmark covers all


@pytest.mark.timeout(300)
def test_concurrent_classify_calls(app_server, tmp_path: Path):
    images = distinct_images(tmp_path, CALLS)
    clients = [Client(app_server.url, verbose=False) for _ in range(CLIENTS)]
    labels: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        for path in images[index::CLIENTS]:
            try:
                result = clients[index].predict(handle_file(str(path)), LOAD_MODEL, api_name="/classify")
            except Exception as error:  # noqa: BLE001 - counted, reported below
                with lock:
                    errors.append(f"{path.name}: {type(error).__name__}: {error}")
                continue
            with lock:
                labels.append(result["label"])

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(worker, range(CLIENTS)))
    assert not errors, errors[:5]
    assert len(labels) == CALLS and set(labels) <= set(CIFAR10_CLASSES)
