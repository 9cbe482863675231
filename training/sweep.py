"""Run a grid of trainings and write the papers' results table: ``python -m training.sweep --config X.json``.

Config (JSON; read into a :class:`SweepConfig` by :func:`load_config`)::

    {
      "name": "paper_cifar10",              # title of the report (default: the file's stem)
      "description": "...",                 # free text, not used
      "out": "runs/paper_cifar10",          # run files + report (relative to the cwd; default runs/NAME)
      "variants": ["resnet18", "spectral", "diffstride", "hybrid", "diffstride2"],  # default: all
      "strides": ["1,1,2,2,2", "1,1,3,1,3"],  # strings or lists of 5 numbers (default 1,1,2,2,2)
      "seeds": [0, 1, 2],                   # default [0]
      "datasets": ["cifar10"],              # default ["cifar10"]
      "epochs": 200,                        # required
      "args": {"batch-size": 128, "schedule": "piecewise", "nesterov": true},  # more train flags
      "nproc": 1,                           # > 1: launch each run with torchrun (DDP)
      "data_dir": null                      # passed to every run (default: auto)
    }

Each grid point is one ``python -m training.train ... --resume`` process (so a sweep that
was stopped continues where it was); runs whose card says ``epoch == epochs`` are
skipped. Afterwards ``out`` gets ``results.md`` / ``results.csv`` (rows: stride tuples,
columns: variants, last row: mean; cells mean ± std over seeds), ``curves_<dataset>.html``
and ``strides/<run>.html`` (see :mod:`training.report`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.cards import RunCard, is_finished
from serving.files import atomic_write_text, replace_marked_block
from serving.paths import REPO_ROOT

from . import checkpoint as ckpt
from . import report
from .config import FLAGS, VARIANTS, ConfigError, parse_args, parse_strides, run_name
from .data import DATASETS
from .train import stop_on_sigterm

__all__ = ["Run", "SweepConfig", "coverage", "flag_args", "load_config", "on_protocol", "plan_runs", "protocol_config",
           "replace_block", "run_flags", "main"]


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A sweep: the grid (variants x strides x seeds x datasets) and the flags every run trains
    with. :meth:`from_file` reads and checks a config file; the constructor checks nothing
    (like ``dataclasses.replace``, for protocols derived in code)."""

    name: str
    epochs: int
    description: str | None = None
    out: str | None = None
    variants: tuple[str, ...] = VARIANTS
    strides: tuple[tuple[float, ...], ...] = ((1.0, 1.0, 2.0, 2.0, 2.0),)
    seeds: tuple[int, ...] = (0,)
    datasets: tuple[str, ...] = ("cifar10",)
    #: More ``python -m training.train`` flags (:func:`flag_args`), as the file writes them.
    args: dict[str, Any] = field(default_factory=dict)
    nproc: int = 1
    data_dir: str | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> SweepConfig:
        """Read and check a sweep config file (``ConfigError``: one sentence naming the file)."""
        data = _read_json(path)
        try:
            return cls.from_dict(data, default_name=Path(path).stem)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    @classmethod
    def from_dict(cls, data: Any, default_name: str) -> SweepConfig:
        """Check a parsed config (``ConfigError``: one sentence); absent keys take the defaults."""
        if not isinstance(data, dict):
            raise ConfigError("the config must be a JSON object")
        unknown = set(data) - set(_CHECKS)
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_CHECKS)}")
        if "epochs" not in data:
            raise ConfigError("'epochs' is required")
        # Every list must be non-empty before any entry is judged (the order of the messages).
        for key in _LIST_KEYS:
            if key in data:
                _non_empty_list(key, data[key])
        values = {key: check(data[key]) for key, check in _CHECKS.items() if key in data}
        return cls(**{"name": default_name, **values})


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep config (:meth:`SweepConfig.from_file`)."""
    return SweepConfig.from_file(path)


# --------------------------------------------------------------------------------------
# The checks of a config file, one per key (each raises a one-sentence ConfigError)
# --------------------------------------------------------------------------------------
def _read_json(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None


def _non_empty_list(key: str, value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"'{key}' must be a non-empty list")
    return value


def _known(key: str, known: Collection[str]) -> Callable[[Any], tuple[str, ...]]:
    """The check of a list of names (``variants``, ``datasets``) that must all be in ``known``."""

    def check(value: Any) -> tuple[str, ...]:
        bad = [v for v in _non_empty_list(key, value) if not (isinstance(v, str) and v in known)]
        if bad:
            raise ConfigError(f"unknown {key} {bad}; expected some of {list(known)}")
        return tuple(value)

    return check


def _stride_tuples(value: Any) -> tuple[tuple[float, ...], ...]:
    return tuple(_stride_tuple(entry) for entry in _non_empty_list("strides", value))


def _stride_tuple(entry: Any) -> tuple[float, ...]:
    """``"1,1,2,2,2"`` or ``[1, 1, 2, 2, 2]`` -> ``(1.0, 1.0, 2.0, 2.0, 2.0)`` (the trainer's parser)."""
    if isinstance(entry, str):
        text = entry
    elif isinstance(entry, list):
        text = ",".join(str(v) for v in entry)
    else:
        raise ConfigError(f"'strides' entries must be strings or lists of 5 numbers, got {entry!r}")
    try:
        return parse_strides(text)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(str(error)) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no number


def _seeds(value: Any) -> tuple[int, ...]:
    if not all(_is_int(s) for s in _non_empty_list("seeds", value)):
        raise ConfigError("'seeds' must be integers")
    return tuple(value)


def _positive_int(key: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not _is_int(value) or value <= 0:
            raise ConfigError(f"'{key}' must be a positive integer")
        return value

    return check


def _text(key: str, optional: bool) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not (isinstance(value, str) or (optional and value is None)):
            raise ConfigError(f"'{key}' must be a string" + (" or null" if optional else ""))
        return value

    return check


def _flag_name(key: str) -> str:
    """``"batch_size"``, ``"--batch-size"`` -> ``"batch-size"`` (a key of ``training.config.FLAGS``)."""
    return key.lstrip("-").replace("_", "-")


def _train_args(value: Any) -> dict[str, Any]:
    """``args``: train flags that exist and that the sweep does not set per run itself."""
    if not isinstance(value, dict):
        raise ConfigError("'args' must be an object of train flags, e.g. {\"batch-size\": 128}")
    unknown = [k for k in value if _flag_name(k) not in FLAGS]
    if unknown:
        raise ConfigError(f"'args' names unknown train flags {unknown}; see python -m training.train --help")
    reserved = {_flag_name(k) for k in value} & RESERVED_FLAGS
    if reserved:
        raise ConfigError(f"'args' may not set {sorted(reserved)}; the sweep sets them per run")
    return dict(value)


_LIST_KEYS = ("variants", "strides", "seeds", "datasets")
#: Key of the file -> its check (one per :class:`SweepConfig` field). The checks run in this
#: order, so a file with several faults always names the same first one.
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "variants": _known("variants", VARIANTS),
    "datasets": _known("datasets", DATASETS),
    "strides": _stride_tuples,
    "seeds": _seeds,
    "epochs": _positive_int("epochs"),
    "args": _train_args,
    "nproc": _positive_int("nproc"),
    "name": _text("name", optional=False),
    "description": _text("description", optional=True),
    "out": _text("out", optional=True),
    "data_dir": _text("data_dir", optional=True),
}


@dataclass
class Run:
    """One grid point."""

    variant: str
    strides: tuple[float, ...]
    seed: int
    dataset: str
    name: str

    def card_path(self, out: Path) -> Path:
        return out / f"{self.name}.json"


def _strides_arg(strides: Sequence[float]) -> str:
    return ",".join(f"{s:g}" for s in strides)


def plan_runs(config: SweepConfig) -> list[Run]:
    """The grid in table order: dataset > strides > variant > seed."""
    runs = []
    for dataset, strides, variant, seed in itertools.product(
        config.datasets, config.strides, config.variants, config.seeds
    ):
        runs.append(Run(variant, tuple(strides), seed, dataset, run_name(variant, dataset, strides, seed)))
    return runs


def flag_args(args: dict[str, Any]) -> list[str]:
    """``{"batch-size": 128, "nesterov": true, "no-progress": true}`` -> CLI flags
    (``true``: a switch; ``false``/``null``: left out; lists: comma-separated).

    Every key must be a flag of ``python -m training.train`` (:data:`training.config.FLAGS`).
    """
    out: list[str] = []
    for key, value in args.items():
        if _flag_name(key) not in FLAGS:
            raise ConfigError(f"unknown train flag --{_flag_name(key)}")
        flag = "--" + _flag_name(key)
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def train_command(run: Run, config: SweepConfig, out: Path, data_dir: str | None, nproc: int) -> list[str]:
    """The command line of one run (``torchrun`` when ``nproc > 1``)."""
    launcher = [sys.executable, "-m", "training.train"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "training.train"]
    return launcher + flag_args(run_flags(run, config, out, data_dir)) + flag_args(config.args)


def run_flags(run: Run, config: SweepConfig, out: Path, data_dir: str | None) -> dict[str, Any]:
    """The flags the sweep sets for one grid point (the config's ``args`` add the rest)."""
    return {"variant": run.variant, "dataset": run.dataset, "strides": _strides_arg(run.strides), "seed": run.seed,
            "epochs": config.epochs, "out": str(out), "resume": True, "data-dir": str(data_dir) if data_dir else None}


#: Flags the sweep sets itself (those of :func:`run_flags`; a grid point's name comes from
#: them) and so refuses in ``args``.
RESERVED_FLAGS = {*run_flags(Run("resnet18", (1,) * 5, 0, "cifar10", ""), SweepConfig(name="", epochs=1), Path(), "."),
                  "overwrite", "name"}


def protocol_config(run: Run, config: SweepConfig) -> dict[str, Any]:
    """The card ``config`` a run of this grid point trains with under ``config``'s protocol
    (its epochs and ``args``): what :func:`on_protocol` compares a card with."""
    argv = flag_args(run_flags(run, config, Path("unused"), None)) + flag_args(config.args)
    return parse_args(argv)[1].card_config()


def on_protocol(card: RunCard, config: SweepConfig) -> bool:
    """A finished card trained under this config's protocol: its epochs (not marked
    ``off_protocol`` by a GPU window that had to shorten it) and every setting of its
    ``config`` as the protocol's flags give them. Only these fill the table, so a changed
    protocol starts its table again instead of mixing settings."""
    if not (card.is_finished and card.epochs == config.epochs and not card.off_protocol):
        return False
    run = Run(card.variant, tuple(float(s) for s in card.strides), card.seed, card.dataset, card.name)
    return card.config == protocol_config(run, config)


def coverage(config: SweepConfig, cards: Sequence[RunCard]) -> str:
    """``"5 / 30 points, seed 0; 0 / 30, seed 1; 0 / 30, seed 2"`` (finished protocol cards)."""
    per_seed = len(config.datasets) * len(config.strides) * len(config.variants)
    done = {(c.name, c.seed) for c in cards if on_protocol(c, config)}
    names = {r.name for r in plan_runs(config)}
    parts = []
    for index, seed in enumerate(config.seeds):
        count = sum(1 for name, s in done if s == seed and name in names)
        parts.append(f"{count} / {per_seed} points, seed {seed}" if index == 0 else f"{count} / {per_seed}, seed {seed}")
    return "; ".join(parts)


def replace_block(text: str, name: str, body: str) -> str:
    """:func:`serving.files.replace_marked_block`, with missing markers as a :class:`ConfigError`."""
    try:
        return replace_marked_block(text, name, body)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def table_block(config: SweepConfig, cards: Sequence[RunCard]) -> str:
    """What the README shows: coverage, the protocol in one line, the table."""
    finished = [c for c in cards if on_protocol(c, config)]
    args = " ".join(flag_args({k: v for k, v in config.args.items() if k != "no-progress"}))
    lines = [f"Coverage: {coverage(config, cards)} (`{config.name}`: {config.epochs} epochs, {args}).", ""]
    return "\n".join(lines) + "\n" + report.results_markdown(finished)


def _card(path: Path) -> RunCard | None:
    try:
        return ckpt.load_card(path)
    except (OSError, ValueError):
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="sweep JSON (see training/sweeps/)")
    p.add_argument("--out", default=None, help="override the config's 'out' directory")
    p.add_argument("--data-dir", default=None, help="passed to every run (default: the config's data_dir, else auto)")
    p.add_argument("--nproc", type=int, default=None, help="override 'nproc' (GPUs per run, via torchrun)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from existing cards")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    p.add_argument("--readme", default=None, help="also rewrite the block between <!-- NAME:start --> and "
                   "<!-- NAME:end --> of this file (NAME: the config's name) with the coverage and the table")
    return p


def _run_all(todo: Sequence[Run], config: SweepConfig, out: Path, data_dir: str | None, nproc: int,
             args: argparse.Namespace) -> list[str]:
    """Train the unfinished runs one after another (each ``--resume``s); the names that failed."""
    failed = []
    for index, run in enumerate(todo, 1):
        command = train_command(run, config, out, data_dir, nproc)
        print(f"[{index}/{len(todo)}] {shlex.join(command)}", flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO_ROOT)
        if result.returncode != 0:
            failed.append(run.name)
            print(f"[{index}/{len(todo)}] {run.name} FAILED (exit {result.returncode})", flush=True)
            if args.fail_fast:
                break
        else:
            print(f"[{index}/{len(todo)}] {run.name} done in {time.perf_counter() - start:.0f}s", flush=True)
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        parser.error(str(error))
    if args.nproc is not None and args.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {args.nproc}")
    # Absolute paths: the runs execute in the repository root.
    out = Path(args.out or config.out or Path("runs") / config.name).expanduser().resolve()
    nproc = args.nproc or config.nproc
    data_dir = args.data_dir or config.data_dir
    data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else None
    runs = plan_runs(config)

    failed: list[str] = []
    if not args.report_only:
        todo = [r for r in runs if not is_finished(_card(r.card_path(out)))]
        print(f"sweep {config.name}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run -> {out}", flush=True)
        try:
            with stop_on_sigterm():
                failed = _run_all(todo, config, out, data_dir, nproc, args)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM; subprocess.run has stopped the current run
            print(f"sweep {config.name}: interrupted; finished runs are kept and the same command continues "
                  "(it skips them and resumes the interrupted run from its last finished epoch)", file=sys.stderr)
            return 130
        if args.dry_run:
            return 0

    cards = [card for card in (_card(r.card_path(out)) for r in runs) if card]
    # Off-protocol cards (a shortened window) keep their curves but stay out of the table.
    shown = [c for c in cards if not c.is_finished or on_protocol(c, config)]
    written = report.write_report(shown, out, title=f"Sweep {config.name}")
    finished = sum(on_protocol(c, config) for c in cards)
    print(f"report: {finished}/{len(runs)} finished runs -> " + ", ".join(str(p) for k, p in written.items() if "/" not in k))
    print(f"coverage: {coverage(config, cards)}")
    print(report.results_markdown(shown))
    if args.readme:
        readme = Path(args.readme)
        try:
            text = replace_block(readme.read_text(encoding="utf-8"), config.name, table_block(config, cards))
        except (OSError, ConfigError) as error:
            print(f"error: {args.readme}: {error}", file=sys.stderr)
            return 2
        atomic_write_text(readme, text)
        print(f"updated the {config.name} block of {readme}")
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
