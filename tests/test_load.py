"""Concurrency: /classify calls from several gradio_client clients at once, zero errors.

A small run (8 clients x 3 calls) keeps the suite fast; the heavy runs are benchmarks:
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
from conftest import reference_prediction, top1

CLIENTS = 8
CALLS = 3 * CLIENTS
#: The server's resident memory may grow this much over the run (sessions are loaded
#: before it starts; what stays is cached results, bounded by the cache budget).
RSS_GROWTH_MB = 256
LOAD_MODEL = "resnet18"  # the cheapest variant keeps the suite short; the benchmark covers all


@pytest.mark.timeout(300)
def test_concurrent_classify_calls(app_server, models_dir: Path, tmp_path: Path):
    *images, warm_up = distinct_images(tmp_path, CALLS + 1)
    clients = [Client(app_server.url, verbose=False) for _ in range(CLIENTS)]
    clients[0].predict(handle_file(str(warm_up)), LOAD_MODEL, api_name="/classify")  # the model's session loaded
    before = clients[0].predict(api_name="/health")
    labels: dict[Path, str] = {}
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
                labels[path] = result["label"]

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(worker, range(CLIENTS)))
    assert not errors, errors[:5]
    assert len(labels) == CALLS
    for path, label in labels.items():  # each caller got the answer for its own image
        assert label == top1(reference_prediction(models_dir / f"{LOAD_MODEL}.onnx", path)), path.name
    after = clients[0].predict(api_name="/health")
    assert 0 < after["cache_bytes"] <= after["cache_budget_bytes"], after
    if before["rss_mb"] is not None:
        assert after["rss_mb"] - before["rss_mb"] < RSS_GROWTH_MB, (before, after)
