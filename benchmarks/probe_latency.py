"""How fast the Robustness tab's per-upload probe answers: one model, nine steps of a transform.

    python -m benchmarks.probe_latency [--models-dir exports/models] [--family "shift (circular)"]
                                       [--repeats 5] [--markdown OUT.md]

Each model classifies the nine shifted copies of a real CIFAR test image (what
``DashboardService.probe`` runs for one ticked model) after a warm-up call that creates its
onnxruntime session. Reported: the median and the fastest of ``--repeats`` calls, wall and CPU
time, the CPU named (torch-free, like the server).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from robustness.probe import FAMILIES, steps
from robustness.report import machine
from serving.cifar_data import first_test_images
from serving.paths import BUNDLED_MODELS_DIR
from serving.registry import ModelRegistry

from . import emit_report


def time_probe(model, batch: np.ndarray, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``repeats`` classifications of ``batch``, after one warm-up."""
    model.logits(batch)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        model.logits(batch)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=BUNDLED_MODELS_DIR)
    parser.add_argument("--family", default=FAMILIES[0], choices=FAMILIES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    registry = ModelRegistry(args.models_dir)
    image = first_test_images(1)[0][0]
    batch = np.stack([picture for _, picture in steps(image, args.family)])
    lines = [f"Per-upload probe, `{args.family}` ({len(batch)} steps), {machine()}; median (fastest) of "
             f"{args.repeats} warm calls (`python -m benchmarks.probe_latency`).", "",
             "| model | wall ms | CPU ms |", "|---|---:|---:|"]
    for name in registry.names():
        walls, cpus = time_probe(registry.get(name), batch, args.repeats)
        lines.append(f"| {name} | {1000 * statistics.median(walls):.0f} ({1000 * min(walls):.0f}) | "
                     f"{1000 * statistics.median(cpus):.0f} |")
    return emit_report("\n".join(lines), args.markdown)


if __name__ == "__main__":
    raise SystemExit(main())
