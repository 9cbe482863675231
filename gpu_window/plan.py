"""Planning a call: the short protocol (``training/sweeps/short_cifar10.json``, Table 1's
protocol in one place) and a probe's verdict on top of it, what fits a budget (smoke step
time -> seconds per epoch; the reserves kept at the end of a call) and the grid's undone
points. Importing it imports no torch: a window is planned without it."""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from serving.paths import REPO_ROOT

from .record import WindowError, work_dir

if TYPE_CHECKING:  # training.sweep imports torch
    from training.sweep import SweepConfig

PROTOCOL = REPO_ROOT / "training" / "sweeps" / "short_cifar10.json"
RESERVE_S = 45.0  # kept at the end of a call that compresses models: compression, evaluation, packing
CARDS_RESERVE_S = 15.0  # kept at the end of a call that returns cards only (probe, grid)
START_OVERHEAD_S = 20.0  # per training process: import, data from the cache, cudnn autotune


def load_protocol(path: Path) -> SweepConfig:
    from training.sweep import load_config  # torch-free boundary

    return load_config(path)


def args_from(path: Path, protocol: SweepConfig) -> SweepConfig:
    """``protocol`` with the args of a probe's ``best.json``."""
    try:
        verdict = json.loads(path.read_text(encoding="utf-8"))
        chosen = dict(verdict["args"])
    except FileNotFoundError:
        raise WindowError(f"{path} not found: --args-from needs a probe call earlier in the same (warm) window") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise WindowError(f"{path}: not a probe verdict (expected a JSON object with 'args')") from None
    return dataclasses.replace(protocol, args=chosen)


def _train_namespace(variant: str, strides: Sequence[float], seed: int, epochs: int, protocol: SweepConfig, extra: Sequence[str] = ()):
    """The resolved ``training.train`` arguments of one point (the protocol's flags, nothing repeated)."""
    from training.sweep import flag_args  # torch-free boundary
    from training.train import parse_args  # torch-free boundary

    argv = ["--variant", variant, "--strides", ",".join(f"{s:g}" for s in strides), "--seed", str(seed),
            "--epochs", str(epochs), "--out", "unused", *flag_args(protocol.args), *extra]
    return argv, parse_args(argv)[1]


def projected_seconds(step_s: float, n_train: int, n_test: int, batch: int, epochs: int) -> float:
    """GPU seconds of one run: steps per epoch x step time, plus evaluation (~1/3 of a step per
    batch at twice the batch), plus 10 % for the loader and bookkeeping."""
    per_epoch = step_s * (n_train // batch) + step_s / 3 * math.ceil(n_test / (2 * batch)) * 2
    return 1.1 * per_epoch * epochs


def _reserve(compress: bool) -> float:
    return RESERVE_S if compress else CARDS_RESERVE_S


def _own_epochs(point, protocols: dict[str, SweepConfig] | None) -> int | None:
    """The epochs a probe point sets itself (``hybrid:epochs=4``), else ``None``."""
    value = None if protocols is None else protocols[point.name].args.get("epochs")
    return None if value is None else int(value)


def _epoch_seconds(point, step: dict, n_train: int, n_test: int, batch: int, protocols: dict[str, SweepConfig] | None) -> float:
    """One epoch of ``point`` from the smoke's step time at ``batch`` (a point whose protocol
    sets another batch size: the step time scaled by the batch ratio)."""
    point_batch = batch if protocols is None else int(protocols[point.name].args.get("batch-size", batch))
    step_s = step[f"{point.variant} {point.strides}"] * point_batch / batch
    return projected_seconds(step_s, n_train, n_test, point_batch, 1)


def grid_done_dirs(protocol: SweepConfig) -> list[Path]:
    """Where ``grid`` looks for finished points by default: the committed cards, and the cards
    earlier calls of this window left on the (warm) machine, not yet ingested, so that a
    second call never repeats a point (window 1's third call did)."""
    return [REPO_ROOT / protocol.out, work_dir("grid"), work_dir("extra"), work_dir("models")]


def plan_grid(protocol: SweepConfig, done: Path | Sequence[Path]) -> list:
    """Undone points of the protocol grid, seed 0 first, then by stride tuple and variant.
    A point is done when any folder of ``done`` holds its finished on-protocol card (a later
    call of the same window passes the earlier call's work folder too: cards not yet ingested)."""
    done_dirs = [done] if isinstance(done, Path) else list(done)
    from training.checkpoint import load_card  # torch-free boundary
    from training.sweep import on_protocol, plan_runs  # torch-free boundary

    def finished_in(run, folder: Path) -> bool:
        path = run.card_path(folder)
        try:
            card = load_card(path) if path.exists() else None
        except (OSError, ValueError):
            return False
        return card is not None and on_protocol(card, protocol)

    def finished(run) -> bool:
        return any(finished_in(run, folder) for folder in done_dirs)

    runs = [r for r in plan_runs(protocol) if not finished(r)]
    return sorted(runs, key=lambda r: r.seed)  # stable: table order within a seed
