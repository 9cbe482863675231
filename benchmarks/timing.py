"""Wall-clock timing shared by the benchmarks (synchronised on CUDA)."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """``(seconds of the warmup calls together, [seconds of each timed call])``."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return warmup_s, times
