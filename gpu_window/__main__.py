"""The runbook of one 15-minute GPU window (issues 10, 11, 20 and 21): at most two device calls.

Here (before the window; then after it, in this order; every step in docs/gpu-window.md)::

    python -m benchmarks.gpu_window prepare    # scratch branch without exports/models, data/, size check
    #   device call 1: run(command="PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_window models --variants resnet18,spectral --profile-seconds 60 --budget 200 --out $OUT",
    #                      carry=["data"], timeout_s=230)       then: cp -r FILES_AT artifacts/window/call1
    #   device call 2: run(command="PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_window models --variants diffstride,hybrid,diffstride2 --budget 585 --out $OUT",
    #                      carry=["data"], timeout_s=595)       then: cp -r FILES_AT artifacts/window/call2
    python -m benchmarks.gpu_window restore    # back to the branch you were on
    python -m exports.ingest artifacts/window/call1 artifacts/window/call2

Modes on the device (each is one call; ``--budget`` is the call's own deadline in seconds):

* ``models``: a smoke of every variant on the device (fwd+bwd, bf16 autocast, channels-last,
  real SGD steps, ~20 s) that also times each step; then the five dashboard models
  (``--strides``, default 1,1,2,2,2, seed 0) train **concurrently** on the one GPU under the
  protocol of ``training/sweeps/short_cifar10.json`` (Table 1's short protocol, one place);
  each finished model is compressed to int8 (``exports.compact``) and its accuracy is
  measured on the device before and after compression. ``--epochs auto`` keeps the
  protocol's epochs when the step-time probe says they fit, else fewer (the cards then say
  ``off_protocol``).
* ``grid``: the next undone Table 1 points (protocol grid, seed 0 first, then 1 and 2; done =
  a finished card in the protocol's ``out`` folder, committed) that fit the budget; returns
  cards only.
* ``extra``: the layer benchmark (fast vs torch.fft, fwd+bwd, fp32 and bf16) and training
  throughput eager and ``torch.compile`` with peak memory and achieved TFLOP/s, each
  time-boxed, then ``grid`` with what is left.
* ``probe``: first a few training steps under ``torch.profiler`` (``--profile-seconds``;
  the kernel table comes back in ``profile.md``); then which of the protocol's settings
  costs accuracy. One variant (``resnet18``, the fastest) trains concurrently under the protocol and under changes of it
  (``--points VARIANT[:FLAG=VALUE,...]``), at the protocol's epochs where they fit; cards
  only come back. ``best.json`` in its work folder names the setting a later ``models
  --args-from`` call of the same (warm) window trains the five models with (:func:`choose_setting`).

Everything under ``--out`` is written as it happens (``window.json`` after every event,
``window.log``), so a call killed at its limit still returns what finished. What comes back
is checked against the device limits (8 files, 16 MiB each, 64 MiB in all).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.cards import RunCard
from serving.files import atomic_write, atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
TREE_LIMIT = 64 * MiB
OUT_FILES, OUT_FILE_BYTES, OUT_TOTAL_BYTES = 8, 16 * MiB, 64 * MiB
PROTOCOL = REPO / "training" / "sweeps" / "short_cifar10.json"
DATA_FILES = ("cifar10_train_jpeg_part0.npz", "cifar10_train_jpeg_part1.npz", "cifar10_test_jpeg.npz")
DATA_DIR = "data"  # git-ignored (/data/ in .gitignore): carried, never tracked
SCRATCH_BRANCH = "gpu-window"
MODELS_DIR = "exports/models"
EXCLUDE_LINE = "/exports/models/"
STATE_FILE = "gpu-window.json"  # inside .git
DASHBOARD_VARIANTS = ("resnet18", "spectral", "diffstride", "hybrid", "diffstride2")  # = hybrid_model.PAPER_VARIANTS (tested; torch is not imported to plan a window)
RESERVE_S = 45.0  # kept at the end of a call that compresses models: compression, evaluation, packing
CARDS_RESERVE_S = 15.0  # kept at the end of a call that returns cards only (probe, grid)
START_OVERHEAD_S = 20.0  # per training process: import, data from the cache, cudnn autotune


class WindowError(RuntimeError):
    """A condition the runbook reports in one line (exit status 2)."""


# --------------------------------------------------------------------------------------
# What travels: the tree of a device call
# --------------------------------------------------------------------------------------
def _git(repo: Path, *args: str, env: dict | None = None, check: bool = True) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise WindowError(f"git {' '.join(args)} failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    return result.stdout


def travel_files(repo: Path, carry: Sequence[str] = ()) -> list[tuple[str, int]]:
    """``(path, bytes)`` of what a device call sends: tracked files, untracked files git does
    not ignore, the checkout's ``shared/`` and the ``carry`` paths (the device README's rule)."""
    listed = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    files: dict[str, int] = {}
    for rel in filter(None, listed):
        path = repo / rel
        if path.is_file() and not path.is_symlink():
            files[rel] = path.stat().st_size
    for extra in [*carry, "shared"]:
        root = repo / extra
        walk = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for path in walk:
            if not path.is_symlink():
                files[str(path.relative_to(repo))] = path.stat().st_size
    return sorted(files.items())


def travel_bytes(repo: Path, carry: Sequence[str] = ()) -> int:
    return sum(size for _, size in travel_files(repo, carry))


def check_out_limits(out: Path) -> dict[str, Any]:
    """Files under ``out`` against the return limits; ``ok`` False names the first breach."""
    files = [(str(p.relative_to(out)), p.stat().st_size) for p in sorted(out.rglob("*")) if p.is_file()]
    total = sum(size for _, size in files)
    problems = []
    if len(files) > OUT_FILES:
        problems.append(f"{len(files)} files (limit {OUT_FILES})")
    problems += [f"{name} is {size / MiB:.1f} MiB (limit 16)" for name, size in files if size > OUT_FILE_BYTES]
    if total > OUT_TOTAL_BYTES:
        problems.append(f"{total / MiB:.1f} MiB in all (limit 64)")
    return {"files": files, "total_bytes": total, "ok": not problems, "problems": problems}


# --------------------------------------------------------------------------------------
# prepare / restore (here, around the window)
# --------------------------------------------------------------------------------------
def _state_path(repo: Path) -> Path:
    return Path(_git(repo, "rev-parse", "--absolute-git-dir").strip()) / STATE_FILE


def _exclude_path(repo: Path) -> Path:
    return Path(_git(repo, "rev-parse", "--absolute-git-dir").strip()) / "info" / "exclude"


def _set_exclude(repo: Path, present: bool) -> None:
    path = _exclude_path(repo)
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if line.strip() != EXCLUDE_LINE] + ([EXCLUDE_LINE] if present else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def copy_data(repo: Path, source: Path) -> Path:
    """The CIFAR-10 JPEG copy into ``repo/data`` (git-ignored), copied once (same size = kept)."""
    target = repo / DATA_DIR
    target.mkdir(exist_ok=True)
    for name in DATA_FILES:
        src = source / name
        if not src.is_file():
            raise WindowError(f"{src} not found: pass --data-src, the folder with the CIFAR-10 JPEG copy ({', '.join(DATA_FILES)})")
        dst = target / name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
    if subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", f"{DATA_DIR}/{DATA_FILES[0]}"]).returncode != 0:
        raise WindowError(f"{DATA_DIR}/ is not git-ignored here: it would travel twice (add /{DATA_DIR}/ to .gitignore)")
    return target


def prepare(repo: Path, data_src: Path, log=print) -> dict[str, Any]:
    """Make the working tree a device call can carry (see the module docstring).

    A scratch branch whose one commit drops ``exports/models`` from the index (the files stay
    on disk, ignored through ``.git/info/exclude``); other staged or unstaged work is left as
    it is. Then the data is copied and the travelling size checked against 64 MiB.
    """
    state_path = _state_path(repo)
    if not state_path.exists():
        if _git(repo, "status", "--porcelain", "--", MODELS_DIR).strip():
            raise WindowError(f"{MODELS_DIR} has uncommitted changes: commit them before prepare")
        head = _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
        original = head if head != "HEAD" else _git(repo, "rev-parse", "HEAD").strip()
        # The scratch commit is built on a private index, so whatever else is staged stays staged.
        env = dict(os.environ, GIT_INDEX_FILE=str(state_path.with_suffix(".index")))
        _git(repo, "read-tree", "HEAD", env=env)
        _git(repo, "rm", "-r", "-q", "--cached", "--ignore-unmatch", MODELS_DIR, env=env)
        tree = _git(repo, "write-tree", env=env).strip()
        commit = _git(repo, "-c", "user.name=gpu-window", "-c", "user.email=gpu-window@localhost", "commit-tree", tree,
                      "-p", "HEAD", "-m", f"scratch: {MODELS_DIR} untracked for device calls (gpu_window prepare)").strip()
        state_path.with_suffix(".index").unlink(missing_ok=True)
        _git(repo, "branch", "-f", SCRATCH_BRANCH, commit)
        _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{SCRATCH_BRANCH}")  # HEAD moves; files stay
        _git(repo, "rm", "-r", "-q", "--cached", "--ignore-unmatch", MODELS_DIR)
        _set_exclude(repo, True)
        atomic_write_text(state_path, json.dumps({"original": original, "scratch": commit}) + "\n")
        log(f"on scratch branch {SCRATCH_BRANCH} ({commit[:10]}); {MODELS_DIR} untracked and ignored; "
            f"'restore' returns to {original}")
    else:
        log(f"already prepared ({state_path}); checking sizes only")
    copy_data(repo, data_src)
    files = travel_files(repo, [DATA_DIR])
    total = sum(size for _, size in files)
    log(f"a device call carries {total / MiB:.1f} MiB (limit 64 MiB): tree {total / MiB - _dir_mib(repo / DATA_DIR):.1f} MiB "
        f"+ data/ {_dir_mib(repo / DATA_DIR):.1f} MiB")
    if total > TREE_LIMIT:
        biggest = ", ".join(f"{name} ({size / MiB:.1f} MiB)" for name, size in sorted(files, key=lambda f: -f[1])[:5])
        raise WindowError(f"the tree a device call would carry is {total / MiB:.1f} MiB (> 64 MiB); biggest: {biggest}")
    return {"travel_bytes": total, "files": len(files)}


def _dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MiB if path.is_dir() else 0.0


def restore(repo: Path, log=print) -> None:
    """Back to the branch ``prepare`` left; refuses if ``exports/models`` changed meanwhile."""
    state_path = _state_path(repo)
    if not state_path.exists():
        raise WindowError("nothing to restore: 'prepare' has not been run here (or 'restore' already ran)")
    state = json.loads(state_path.read_text())
    original = state["original"]
    tip = _git(repo, "rev-parse", "-q", "--verify", f"refs/heads/{SCRATCH_BRANCH}", check=False).strip()
    if tip and tip != state["scratch"]:
        raise WindowError(f"{SCRATCH_BRANCH} has commits made after prepare: move them to {original} first "
                          f"(git cherry-pick), then restore")
    tracked = {}
    for line in _git(repo, "ls-tree", "-r", original, "--", MODELS_DIR).splitlines():
        meta, path = line.split("\t", 1)
        tracked[path] = meta.split()[2]
    changed = [p for p, blob in tracked.items()
               if not (repo / p).is_file() or _git(repo, "hash-object", "--", p).strip() != blob]
    if changed:
        raise WindowError(f"{changed[0]} differs from {original}'s copy: restore before ingest "
                          f"(put {MODELS_DIR} back as it was, e.g. git show {original}:{changed[0]})")
    _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{original}") if not _is_sha(original) else _git(repo, "update-ref", "--no-deref", "HEAD", original)
    _git(repo, "reset", "-q", "--", MODELS_DIR)  # index entries of the models back from the original commit
    _set_exclude(repo, False)
    _git(repo, "branch", "-D", SCRATCH_BRANCH, check=False)
    state_path.unlink()
    log(f"back on {original}; {MODELS_DIR} tracked again")


def _is_sha(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


# --------------------------------------------------------------------------------------
# The device side
# --------------------------------------------------------------------------------------
@dataclass
class Window:
    """The state of one device call, mirrored into ``OUT/window.json`` after every event."""

    out: Path
    mode: str
    budget: float
    start: float = field(default_factory=time.monotonic)
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "window.log"
        self.record.update(mode=self.mode, budget_s=self.budget, started=_now(), runs=[], steps=[])

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def log(self, text: str, error: bool = False) -> None:
        line = f"[{self.elapsed():6.1f}s] {text}"
        print(line, flush=True, file=sys.stderr if error else sys.stdout)
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def save(self) -> None:
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        atomic_write_json(self.out / "window.json", self.record)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def load_protocol(path: Path) -> dict[str, Any]:
    from training.sweep import load_config

    return load_config(path)


def _train_namespace(variant: str, strides: Sequence[float], seed: int, epochs: int, protocol: dict, extra: Sequence[str] = ()):
    """The resolved ``training.train`` arguments of one point (the protocol's flags, nothing repeated)."""
    from training.sweep import flag_args
    from training.train import parse_args

    argv = ["--variant", variant, "--strides", ",".join(f"{s:g}" for s in strides), "--seed", str(seed),
            "--epochs", str(epochs), "--out", "unused", *flag_args(protocol["args"]), *extra]
    return argv, parse_args(argv)[1]


def smoke(window: Window, points: list, protocol: dict, device: str) -> dict[str, dict]:
    """fwd+bwd+SGD steps of every (variant, strides) at the protocol's batch on ``device``
    (bf16 autocast + channels-last on CUDA, as training); median step seconds and FLOPs."""
    import torch

    from benchmarks.train_throughput import bench_variant
    from training.train import model_options

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
    results: dict[str, dict] = {}
    for point in points:
        key = f"{point.variant} {point.strides}"
        if key in results:
            continue
        _, ns = _train_namespace(point.variant, point.strides, point.seed, protocol["epochs"], protocol)
        options = model_options(ns)
        t0 = time.monotonic()
        steps, warmup = (3, 2) if cuda else (1, 1)  # the CPU rehearsal only proves the path
        result = bench_variant(point.variant, tuple(point.strides), ns.batch_size, steps=steps, warmup=warmup, device=dev,
                               bf16=cuda, channels_last=cuda, options=options)
        if not math.isfinite(result["step_s"]):
            raise WindowError(f"smoke of {key}: non-finite step time")
        result = {k: v for k, v in result.items() if k != "times_s"}  # has forward FLOPs and achieved TFLOP/s
        result.update(batch=ns.batch_size, wall_s=round(time.monotonic() - t0, 2))
        results[key] = result
        window.log(f"smoke {key}: {result['step_s'] * 1e3:.1f} ms/step at batch {ns.batch_size} "
                   f"({result['achieved_tflops']:.1f} TFLOP/s, peak {(result['peak_memory_bytes'] or 0) / 2**30:.2f} GiB)")
        window.record["smoke"] = results
        window.save()
        if cuda:
            torch.cuda.empty_cache()
    return results


def projected_seconds(step_s: float, n_train: int, n_test: int, batch: int, epochs: int) -> float:
    """GPU seconds of one run: steps per epoch x step time, plus evaluation (~1/3 of a step per
    batch at twice the batch), plus 10 % for the loader and bookkeeping."""
    per_epoch = step_s * (n_train // batch) + step_s / 3 * math.ceil(n_test / (2 * batch)) * 2
    return 1.1 * per_epoch * epochs


def _popen(argv: list[str], log_path: Path, threads: int) -> subprocess.Popen:
    """One training process in its own process group (so it can be stopped with its children)
    but in this session: the device tool ends it with the call if the call is killed."""
    handle = open(log_path, "w", encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "training.train", *argv], cwd=REPO, stdout=handle,
                            stderr=subprocess.STDOUT, env=env, process_group=0)


def _stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM its process group, then SIGKILL (the trainer saves at epoch boundaries only)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def evaluate_compressed(run_dir: Path, name: str, data, device: str) -> tuple[dict, RunCard, dict]:
    """Load ``run_dir/NAME``; accuracy on the whole test split in float32 before and after int8
    compression (same device, TF32 off). Returns ``(state, card, compression stats)``."""
    import torch
    from safetensors.torch import load_file

    from exports.compact import SCHEME, dequantize_state_dict, quantize_state_dict
    from training.checkpoint import build_from_card
    from training.data import GpuLoader

    card = RunCard.from_dict(json.loads((run_dir / f"{name}.json").read_text()))
    state = load_file(str(run_dir / f"{name}.safetensors"), device="cpu")
    dev = torch.device(device)
    loader = GpuLoader(data.x_test, data.y_test, 1000, train=False, device=dev, dataset=card.dataset)
    cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        predictions = []
        for weights in (state, dequantize_state_dict(quantize_state_dict(state))):
            model = build_from_card(card, name)
            model.load_state_dict(weights)
            model.to(dev).eval()
            with torch.no_grad():
                predictions.append(torch.cat([model(x).argmax(1).cpu() for x, _ in loader.batches(0)]))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
    labels = data.y_test.cpu()
    stats = {
        "scheme": SCHEME,
        "test_images": int(len(labels)),
        "test_acc_float32": float((predictions[0] == labels).float().mean()),
        "test_acc_int8": float((predictions[1] == labels).float().mean()),
        "top1_agreement": float((predictions[0] == predictions[1]).float().mean()),
        "measured_on": device,
    }
    return state, card, stats


def work_dir(mode: str) -> Path:
    """Where a mode's runs write (``$GPU_WINDOW_WORK`` or ``runs/gpu_window``, then the mode):
    git-ignored, so it stays on a warm device machine between the calls of one window."""
    return Path(os.environ.get("GPU_WINDOW_WORK") or (REPO / "runs" / "gpu_window")) / mode


def _reserve(compress: bool) -> float:
    return RESERVE_S if compress else CARDS_RESERVE_S


def run_points(window: Window, points: list, epochs: int, protocol: dict, data_dir: str, device: str,
               compress: bool, off_protocol: bool, protocols: dict[str, dict] | None = None) -> None:
    """Train ``points`` concurrently (one process each) until they finish or the budget ends;
    record every card as it is written; compress finished models when ``compress``.
    ``protocols``: a protocol per point name (the probe's settings; each run is then named
    after its point), else ``protocol`` for all."""
    from exports.compact import write_compact

    work = work_dir(window.mode)
    work.mkdir(parents=True, exist_ok=True)
    reserve = _reserve(compress)
    max_seconds = max(window.left() - reserve, 5.0)
    processes = {}
    for point in points:
        extra = ["--data-dir", data_dir, "--device", device, "--max-seconds", f"{max_seconds:.0f}", "--overwrite"]
        if protocols is not None:
            extra += ["--name", point.name]
        point_protocol = protocol if protocols is None else protocols[point.name]
        argv, _ = _train_namespace(point.variant, point.strides, point.seed, epochs, point_protocol, extra)
        argv[argv.index("--out") + 1] = str(work)
        processes[point.name] = (point, _popen(argv, work / f"{point.name}.log", max(1, (os.cpu_count() or 1) // len(points))))
        entry = {"name": point.name, "variant": point.variant, "strides": list(point.strides), "seed": point.seed,
                 "epochs": _own_epochs(point, protocols) or epochs, "off_protocol": off_protocol, "status": "running", "command": ["python", "-m", "training.train", *argv]}
        window.record["runs"].append(entry)
    window.log(f"training {len(points)} runs concurrently, {epochs} epochs each, --max-seconds {max_seconds:.0f}: "
               + ", ".join(processes))
    window.save()
    data = None
    pending = dict(processes)
    last_refresh = 0.0
    while pending:
        time.sleep(1.0)
        if window.left() < reserve / 3:
            for name, (_point, process) in pending.items():
                window.log(f"{name}: out of budget, stopping it (its last finished epoch is kept)")
                _stop(process)
        for name, (_point, process) in list(pending.items()):
            if process.poll() is None:
                continue
            del pending[name]
            entry = next(e for e in window.record["runs"] if e["name"] == name)
            entry["returncode"] = process.returncode
            with open(work / f"{name}.log", encoding="utf-8", errors="replace") as handle:
                tail = handle.read().splitlines()[-12:]
            window.log(f"{name}: exit {process.returncode}\n    " + "\n    ".join(tail))
            card_path = work / f"{name}.json"
            if not card_path.exists():
                entry["status"] = "failed"
                window.save()
                continue
            card = RunCard.from_dict(json.loads(card_path.read_text()))
            card.off_protocol = off_protocol
            entry["card"] = card.to_dict()
            entry["status"] = "finished" if card.is_finished else "unfinished"
            if compress:
                if data is None:
                    from training.data import load_cifar

                    data = load_cifar("cifar10", data_dir, limit_test=_limit(protocol, "limit-test"))
                state, card, stats = evaluate_compressed(work, name, data, device)
                card.compression = stats
                card.off_protocol = off_protocol
                entry["card"] = card.to_dict()
                entry["file"] = f"{name}.int8.safetensors"
                write_compact(window.out / entry["file"], state, card.to_dict())
                window.log(f"{name}: test acc float32 {stats['test_acc_float32']:.4f}, int8 {stats['test_acc_int8']:.4f} "
                           f"(agreement {stats['top1_agreement']:.4f}) -> {entry['file']}")
            window.save()
        if time.monotonic() - last_refresh > 20:  # partial results: the latest card of every running run
            last_refresh = time.monotonic()
            for name in pending:
                path = work / f"{name}.json"
                if path.exists():
                    try:
                        entry = next(e for e in window.record["runs"] if e["name"] == name)
                        entry["card"] = json.loads(path.read_text())
                    except (json.JSONDecodeError, OSError):
                        pass
            window.save()


def _limit(protocol: dict, key: str) -> int | None:
    value = protocol["args"].get(key)
    return int(value) if value else None


def _device_or_fail(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WindowError("no CUDA device: this runbook is for the GPU machine (--device cpu rehearses it here)")
    return device


def _device_record(window: Window, device: str) -> None:
    import platform

    import torch

    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.machine()} CPU ({os.cpu_count()} cores)"
    window.record.update(device=name, torch=torch.__version__, python=platform.python_version())
    window.log(f"device {name}; torch {torch.__version__}; budget {window.budget:.0f} s; out {window.out}")
    window.save()


def _start_decode(data_dir: str, protocol: dict) -> subprocess.Popen:
    """Decode the JPEG copy once into the cache (in the background, during the smoke)."""
    code = ("import sys; from training.data import load_cifar; "
            f"d = load_cifar('cifar10', {data_dir!r}, limit_train={_limit(protocol, 'limit-train')}, "
            f"limit_test={_limit(protocol, 'limit-test')}); print(d.source, d.n_train, d.n_test)")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish_decode(window: Window, process: subprocess.Popen) -> tuple[int, int]:
    output, _ = process.communicate()
    if process.returncode != 0:
        raise WindowError(f"data: {output.strip().splitlines()[-1] if output.strip() else 'decode failed'}")
    words = output.strip().splitlines()[-1].rsplit(" ", 2)
    window.log(f"data: {output.strip().splitlines()[-1]}")
    window.record["data"] = {"source": words[0], "n_train": int(words[1]), "n_test": int(words[2])}
    return int(words[1]), int(words[2])


def grid_done_dirs(protocol: dict) -> list[Path]:
    """Where ``grid`` looks for finished points by default: the committed cards, and the cards
    earlier calls of this window left on the (warm) machine, not yet ingested, so that a
    second call never repeats a point (window 1's third call did)."""
    return [REPO / protocol["out"], work_dir("grid"), work_dir("extra"), work_dir("models")]


def plan_grid(protocol: dict, done: Path | Sequence[Path]) -> list:
    """Undone points of the protocol grid, seed 0 first, then by stride tuple and variant.
    A point is done when any folder of ``done`` holds its finished on-protocol card (a later
    call of the same window passes the earlier call's work folder too: cards not yet ingested)."""
    done_dirs = [done] if isinstance(done, Path) else list(done)
    from training.checkpoint import load_card
    from training.sweep import on_protocol, plan_runs

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


def mode_train(window: Window, args, points: list, protocol: dict, compress: bool, choose_epochs: bool,
                protocols: dict[str, dict] | None = None) -> None:
    """Smoke, estimate, then train ``points`` (see :func:`run_points`). The cards are marked
    ``off_protocol`` when fewer epochs fit or when ``protocols`` gives points their own
    settings (a probe). Whether a card's settings are the committed protocol's is decided
    later from its ``config`` (``training.sweep.on_protocol``)."""
    decode = _start_decode(args.data_dir, protocol)
    timings = smoke(window, points, protocol, args.device)
    n_train, n_test = _finish_decode(window, decode)
    _, ns = _train_namespace(points[0].variant, points[0].strides, 0, protocol["epochs"], protocol)
    batch = ns.batch_size
    step = {f"{p.variant} {p.strides}": timings[f"{p.variant} {p.strides}"]["step_s"] for p in points}
    available = window.left() - _reserve(compress) - START_OVERHEAD_S
    one_epoch = sum(_epoch_seconds(p, step, n_train, n_test, batch, protocols) for p in points)
    epochs = protocol["epochs"]
    if choose_epochs:
        # Points with epochs of their own (a probe's short stability check) cost the same
        # whatever the others get; the rest share what is left.
        fixed = [p for p in points if _own_epochs(p, protocols) is not None]
        fixed_cost = sum(_own_epochs(p, protocols) * _epoch_seconds(p, step, n_train, n_test, batch, protocols)
                         for p in fixed)
        shared = sum(_epoch_seconds(p, step, n_train, n_test, batch, protocols) for p in points if p not in fixed)
        fit = int((available - fixed_cost) // shared) if shared > 0 else epochs
        if fit < 1:
            raise WindowError(f"one epoch of all {len(points)} runs needs ~{one_epoch:.0f} s; only {available:.0f} s left")
        epochs = min(epochs, fit)
    else:
        # grid: the longest prefix of the undone points that fits at the protocol's epochs
        total, chosen = 0.0, []
        for p in points:
            cost = epochs * _epoch_seconds(p, step, n_train, n_test, batch, protocols)
            if total + cost > available and chosen:
                break
            total += cost
            chosen.append(p)
        if total > available:  # not an error: the points stay undone for a later window
            window.log(f"grid: {chosen[0].name} needs ~{total:.0f} s at {epochs} epochs; only {available:.0f} s left: none run")
            window.record["estimate"] = {"needed_s": round(total, 1), "available_s": round(available, 1)}
            window.save()
            return
        points = chosen
    window.record["estimate"] = {
        "seconds_per_epoch_all_runs": round(one_epoch, 1), "available_s": round(available, 1),
        "protocol_epochs": protocol["epochs"], "epochs": epochs, "runs": [p.name for p in points],
        "rule": "sum over runs of (steps/epoch x smoke step time + eval) x 1.1: concurrent processes time-share the GPU",
    }
    off_protocol = epochs != protocol["epochs"] or protocols is not None
    window.log(f"estimate: {one_epoch:.1f} s per epoch of the runs; {available:.0f} s available -> {epochs} epochs"
               + (" (these cards are marked off_protocol)" if off_protocol else ""))
    window.save()
    run_points(window, points, epochs, protocol, args.data_dir, args.device, compress, off_protocol, protocols)


def _own_epochs(point, protocols: dict[str, dict] | None) -> int | None:
    """The epochs a probe point sets itself (``hybrid:epochs=4``), else ``None``."""
    value = None if protocols is None else protocols[point.name]["args"].get("epochs")
    return None if value is None else int(value)


def _epoch_seconds(point, step: dict, n_train: int, n_test: int, batch: int, protocols: dict[str, dict] | None) -> float:
    """One epoch of ``point`` from the smoke's step time at ``batch`` (a point whose protocol
    sets another batch size: the step time scaled by the batch ratio)."""
    point_batch = batch if protocols is None else int(protocols[point.name]["args"].get("batch-size", batch))
    step_s = step[f"{point.variant} {point.strides}"] * point_batch / batch
    return projected_seconds(step_s, n_train, n_test, point_batch, 1)


# --------------------------------------------------------------------------------------
# probe: which protocol setting costs accuracy
# --------------------------------------------------------------------------------------
#: The probe's default points: protocol v2 as committed, each of the two levers window 2
#: measured only together (they cost 1.3 pt together), lighter label smoothing (+0.02 pt in
#: window 2, one run), and a stability check of the fragile variant, the hybrid, under the
#: protocol at full size: its first 4 epochs (the real 3-epoch warm-up to the peak lr, then
#: one epoch of decay). Window 2's table: docs/gpu-window.md.
PROBE_POINTS = ("resnet18", "resnet18:zero-init-residual=true", "resnet18:no-decay-norm-bias=true",
                "resnet18:label-smoothing=0.1", "hybrid:epochs=4")
#: What the models train with when the hybrid's check under the protocol fails: v1's clip and
#: peak lr, with which the first window trained every variant stably.
STABLE_FALLBACK = {"grad-clip": 1, "lr": 0.2}
#: A setting replaces the protocol only when it beats it by more than this: the same seed's
#: spread on the H200 (resnet18, 88.21 % and 88.69 % in two runs of the first window).
PROBE_MARGIN = 0.005


def _flag_value(text: str) -> Any:
    """``"0.4"`` -> 0.4, ``"true"`` -> True, ``"onecycle"`` -> "onecycle" (JSON where it parses)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_probe_point(text: str) -> tuple[str, dict[str, Any]]:
    """``"resnet18:grad-clip=0,lr=0.4"`` -> ``("resnet18", {"grad-clip": 0, "lr": 0.4})``."""
    variant, _, flags = text.partition(":")
    changes = {}
    for item in filter(None, flags.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise WindowError(f"probe point {text!r}: expected VARIANT[:FLAG=VALUE,...], e.g. resnet18:grad-clip=0,lr=0.4")
        changes[key.strip()] = _flag_value(value.strip())
    return variant.strip(), changes


def probe_name(variant: str, changes: dict[str, Any]) -> str:
    """A run name for a probe point: ``probe_resnet18_base``, ``probe_resnet18_grad-clip0_lr0p4``."""
    label = "_".join(f"{key}{value}" for key, value in changes.items()) or "base"
    return f"probe_{variant}_" + label.replace(".", "p").replace("/", "-")


def choose_setting(rows: list[dict], protocol_args: dict, margin: float = PROBE_MARGIN) -> dict:
    """The probe's verdict: the protocol's args, or those of the most accurate finished
    setting that clips the gradient (unclipped runs are measured, never chosen: the hybrid
    diverges without clipping, docs/training.md "Stability") if it beats the protocol's own
    run by more than ``margin``. ``rows``: ``{"variant", "changes", "args", "test_acc"}``."""
    base = next((r for r in rows if not r["changes"] and r["test_acc"] is not None), None)
    clipped = [r for r in rows if r["test_acc"] is not None and float(r["args"].get("grad-clip") or 0) > 0]
    best = max(clipped, key=lambda r: r["test_acc"], default=None)
    if base is None or best is None or best is base or best["test_acc"] <= base["test_acc"] + margin:
        reason = ("no finished run of the protocol itself" if base is None else
                  f"no clipped setting beat the protocol's {base['test_acc']:.4f} by more than {margin:.3f}")
        return {"args": dict(protocol_args), "changes": {}, "test_acc": None if base is None else base["test_acc"],
                "reason": reason}
    return {"args": best["args"], "changes": best["changes"], "test_acc": best["test_acc"],
            "reason": f"{best['test_acc']:.4f} against the protocol's {base['test_acc']:.4f} (margin {margin:.3f})"}


def trained_stably(card: RunCard) -> bool:
    """A stability check passed: finished, every epoch's training loss and the test loss below
    2 ln C (``training.stability``'s bound), and the test accuracy at least 50 %."""
    bound = 2 * math.log(card.num_classes or 10)
    history = card.history or []
    return (card.is_finished and bool(history) and all(h["train_loss"] < bound for h in history)
            and card.test_loss is not None and card.test_loss < bound and (card.test_acc or 0) >= 0.5)


def apply_checks(verdict: dict, checks: list[dict], protocol_args: dict) -> dict:
    """The verdict, unless a stability check of the protocol itself (a row of another variant
    without changes but its epochs) failed: then :data:`STABLE_FALLBACK` on top of it."""
    failed = [c for c in checks if not {k: v for k, v in c["changes"].items() if k != "epochs"} and not c["stable"]]
    if not failed:
        return verdict
    args = {**verdict["args"], **STABLE_FALLBACK}
    return dict(verdict, args=args, changes={k: v for k, v in args.items() if protocol_args.get(k) != v},
                reason=f"{failed[0]['name']} did not train stably under the protocol: v1's clip and lr instead "
                       f"({verdict['reason']})")


def mode_probe(window: Window, args, protocol: dict) -> None:
    """Train every probe point concurrently; then the verdict into ``window.json`` and the
    work folder's ``best.json`` (read by a later ``models --args-from`` call)."""
    from training.sweep import ConfigError, Run, flag_args
    from training.train import parse_strides

    strides = parse_strides(args.strides)
    points, protocols, changes_of = [], {}, {}
    for text in args.points:
        variant, changes = parse_probe_point(text)
        name = probe_name(variant, changes)
        merged = dict(protocol, args={**protocol["args"], **changes})
        try:
            flag_args(merged["args"])  # an unknown flag: one sentence
            _train_namespace(variant, strides, 0, protocol["epochs"], merged)  # a bad value: argparse's line
        except ConfigError as error:
            raise WindowError(f"probe point {text!r}: {error}") from None
        except SystemExit:  # argparse has printed why
            raise WindowError(f"probe point {text!r}: not a valid training setting (see the line above)") from None
        points.append(Run(variant, strides, 0, "cifar10", name))
        protocols[name], changes_of[name] = merged, changes
    if len(protocols) != len(points):
        raise WindowError("two probe points have the same name: each point must differ")
    if args.profile_seconds > 0:
        profile_step(window, args.profile_seconds, args.device, protocol)
    mode_train(window, args, points, protocol, compress=False, choose_epochs=True, protocols=protocols)
    rows = []
    for entry in window.record["runs"]:
        card = RunCard.from_dict(entry.get("card") or {})
        rows.append({"name": entry["name"], "variant": entry["variant"], "changes": changes_of[entry["name"]],
                     "args": protocols[entry["name"]]["args"], "epochs": card.epoch,
                     "test_acc": card.test_acc if card.is_finished else None, "stable": trained_stably(card)})
    main_variant = points[0].variant
    verdict = choose_setting([r for r in rows if r["variant"] == main_variant], protocol["args"])
    verdict = apply_checks(verdict, [r for r in rows if r["variant"] != main_variant], protocol["args"])
    verdict.update(variant=points[0].variant, epochs=window.record["estimate"]["epochs"], protocol_epochs=protocol["epochs"])
    window.record["probe"] = {"rows": rows, "best": verdict}
    window.save()
    atomic_write_json(work_dir(window.mode) / "best.json", verdict)
    table = "\n".join(f"| {r['name']} | {r['epochs'] or 0} | {_accuracy(r['test_acc'])} | {'yes' if r['stable'] else 'no'} |"
                      for r in rows)
    window.log(f"probe:\n| run | epochs | test acc | stable |\n|---|---:|---:|---|\n{table}\nchosen: {verdict['changes'] or 'the protocol'} "
               f"({verdict['reason']}) -> {work_dir(window.mode) / 'best.json'}")


#: What the profile step profiles (issue 21): the DiffStride family's most common member
#: first (its share of ``--max-seconds`` comes first), then the plain network, a few steps
#: each at the protocol's batch. The second window gave it 20 s: CUDA and the profiler's
#: start-up took them all (one step of resnet18 came back), hence 60 s by default.
PROFILE_VARIANTS = "hybrid,resnet18"
PROFILE_SECONDS = 60.0


def profile_step(window: Window, seconds: float, device: str, protocol: dict) -> None:
    """A few training steps under ``torch.profiler`` (``benchmarks.profile_step``), as a
    subprocess stopped at ``seconds``: its compact kernel table goes into window.json and
    ``profile.md`` beside it (no trace file)."""
    json_path, md_path = window.out / "profile.json", window.out / "profile.md"
    batch = str(protocol["args"].get("batch-size", 512))
    command = [sys.executable, "-m", "benchmarks.profile_step", "--variants", PROFILE_VARIANTS, "--batch", batch,
               "--steps", "3", "--warmup", "2", "--device", device, "--max-seconds", f"{max(seconds - 5, 5):.0f}",
               "--json", str(json_path), "--markdown", str(md_path)]
    if device == "cpu":  # the rehearsal only proves the path
        command += ["--batch", "4", "--steps", "1", "--warmup", "1", "--variants", "resnet18", "--width", "8"]
    result = run_time_boxed(window, "profile", command, seconds)
    if result is not None:
        window.record["profile"] = result
    window.save()


def run_time_boxed(window: Window, label: str, command: list[str], seconds: float, json_path: Path | None = None,
                   tail: int = 3000) -> Any:
    """Run ``command`` (``python -m ...``) for at most ``seconds``, its output's tail into the
    log; then the JSON it wrote to ``json_path`` (default: the value after ``--json``), or ``None``."""
    if json_path is None:
        json_path = Path(command[command.index("--json") + 1])
    window.log(f"{label} (<= {seconds:.0f} s): {' '.join(command[2:])}")
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds)
        window.log(f"{label}: exit {result.returncode}\n" + result.stdout[-tail:] + result.stderr[-tail // 3:])
    except subprocess.TimeoutExpired:
        window.log(f"{label}: stopped at its {seconds:.0f} s limit")
    return json.loads(json_path.read_text()) if json_path.exists() else None


def _accuracy(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def args_from(path: Path, protocol: dict) -> dict:
    """``protocol`` with the args of a probe's ``best.json``."""
    try:
        verdict = json.loads(path.read_text(encoding="utf-8"))
        chosen = dict(verdict["args"])
    except FileNotFoundError:
        raise WindowError(f"{path} not found: --args-from needs a probe call earlier in the same (warm) window") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise WindowError(f"{path}: not a probe verdict (expected a JSON object with 'args')") from None
    return dict(protocol, args=chosen)


BENCH_STEPS = (
    # (name, argv after python -m, share of the bench budget)
    ("layers", ["benchmarks.layers", "--devices", "cuda", "--bf16", "--repeats", "20"], 0.3),
    ("throughput", ["benchmarks.train_throughput", "--batch", "256", "--steps", "20", "--warmup", "3"], 0.25),
    ("throughput_compiled", ["benchmarks.train_throughput", "--batch", "256", "--steps", "20", "--warmup", "2",
                             "--compile", "--variants", "resnet18,diffstride,hybrid"], 0.45),
)


#: The CPU rehearsal runs the same steps at toy sizes (later flags win in argparse).
REHEARSAL_BENCH_ARGS = {
    "layers": ["--devices", "cpu", "--batch", "2", "--repeats", "1", "--layers", "diffstride"],
    "throughput": ["--device", "cpu", "--batch", "4", "--steps", "1", "--warmup", "1", "--variants", "resnet18"],
}


def mode_bench(window: Window, bench_budget: float, device: str) -> None:
    """Each benchmark as a subprocess with its share of ``bench_budget`` (killed when over);
    its JSON goes into window.json, its table into window.log."""
    work = work_dir("bench")
    work.mkdir(parents=True, exist_ok=True)
    end = window.elapsed() + bench_budget
    for name, argv, share in BENCH_STEPS:
        timeout = min(share * bench_budget, end - window.elapsed())
        if timeout < 5:
            window.log(f"bench {name}: skipped (no time left)")
            continue
        argv = list(argv)
        json_path = work / f"{name}.json"
        json_path.unlink(missing_ok=True)
        if device == "cpu":
            if name == "throughput_compiled":
                window.log("bench throughput_compiled: skipped on the CPU rehearsal (compilation takes minutes)")
                continue
            argv += REHEARSAL_BENCH_ARGS[name]
        command = [sys.executable, "-m", *argv, "--json", str(json_path)]
        result = run_time_boxed(window, f"bench {name}", command, timeout, json_path, tail=4000)
        if result is not None:
            window.record["steps"].append({"name": name, "result": result})
        window.save()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_window", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    prep = sub.add_parser("prepare", help="here: scratch branch without exports/models + data/ + size check")
    prep.add_argument("--repo", type=Path, default=REPO)
    prep.add_argument("--data-src", type=Path, default=REPO.parent / "shared" / "data")
    rest = sub.add_parser("restore", help="here: back to the branch prepare left")
    rest.add_argument("--repo", type=Path, default=REPO)
    size = sub.add_parser("size", help="here: what a device call would carry (bytes)")
    size.add_argument("--repo", type=Path, default=REPO)
    size.add_argument("--carry", default=DATA_DIR)
    for mode, text in (("models", "device: the five dashboard models (int8 weights come back)"),
                       ("grid", "device: the next undone Table 1 points (cards only)"),
                       ("extra", "device: benchmarks, then grid points"),
                       ("probe", "device: one variant under the protocol and changes of it (cards only)")):
        q = sub.add_parser(mode, help=text)
        q.add_argument("--budget", type=float, required=True, help="seconds this call may take (its own deadline)")
        q.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "artifacts/gpu_window"))
        q.add_argument("--protocol", type=Path, default=PROTOCOL, help="the short protocol (sweep config)")
        q.add_argument("--data-dir", default=DATA_DIR)
        q.add_argument("--device", default="cuda", help="cuda; cpu rehearses the runbook")
        if mode in ("models", "probe"):
            q.add_argument("--strides", default="1,1,2,2,2", help="stride tuple of the models")
            q.add_argument("--profile-seconds", type=float, default=PROFILE_SECONDS if mode == "probe" else 0.0,
                           help="first, a few training steps under torch.profiler for at most this long (0: none)")
        if mode == "models":
            q.add_argument("--variants", default=",".join(DASHBOARD_VARIANTS))
            q.add_argument("--epochs", default="auto", help="auto: the protocol's, or fewer if the probe says they do not fit")
            q.add_argument("--args-from", type=Path, default=None,
                           help="a probe's best.json (runs/gpu_window/probe/best.json): train with its args")
        elif mode == "probe":
            q.add_argument("--points", nargs="+", default=list(PROBE_POINTS),
                           help="VARIANT[:FLAG=VALUE,...] each; the first variant's runs decide best.json")

        else:
            q.add_argument("--done", type=Path, nargs="+", default=None,
                           help="folders of finished cards (default: the protocol's out); a point finished in any is done")
            q.add_argument("--max-points", type=int, default=5, help="at most this many grid points")
        if mode == "extra":
            q.add_argument("--bench-seconds", type=float, default=None, help="bench share (default: all but 0 s if the grid cannot fit)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.mode == "prepare":
            prepare(args.repo.resolve(), args.data_src.resolve())
            print(RUN_CALLS)
            return 0
        if args.mode == "restore":
            restore(args.repo.resolve())
            return 0
        if args.mode == "size":
            total = travel_bytes(args.repo.resolve(), [c for c in args.carry.split(",") if c])
            print(f"{total} bytes ({total / MiB:.1f} MiB; limit 64 MiB)")
            return 0 if total <= TREE_LIMIT else 1
        return _device_main(args)
    except WindowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _device_main(args) -> int:
    if args.budget <= 0:
        raise WindowError(f"--budget must be > 0 seconds, got {args.budget:g}")
    protocol = load_protocol(args.protocol)
    window = Window(args.out, args.mode, args.budget)
    window.record["protocol"] = {"path": str(args.protocol.relative_to(REPO) if args.protocol.is_relative_to(REPO) else args.protocol),
                                 "epochs": protocol["epochs"], "args": protocol["args"]}
    try:
        _device_or_fail(args.device)
        _device_record(window, args.device)
        if args.mode == "models":
            from training.sweep import Run
            from training.train import parse_strides, run_name

            strides = parse_strides(args.strides)
            variants = [v for v in args.variants.split(",") if v]
            points = [Run(v, strides, 0, "cifar10", run_name(v, "cifar10", strides, 0)) for v in variants]
            if args.epochs != "auto":
                protocol = dict(protocol, epochs=int(args.epochs))
            if args.args_from is not None:
                chosen = args_from(args.args_from, protocol)
                changed = chosen["args"] != protocol["args"]
                protocol = chosen
                window.record["protocol"].update(args=protocol["args"], args_from=str(args.args_from))
                window.log(f"args from {args.args_from}: {protocol['args']}"
                           + (" (not the committed protocol's: these cards fill Table 1 only once the protocol "
                              "file says the same)" if changed else " (the protocol's)"))
            if args.profile_seconds > 0:
                if len(points) + 4 > OUT_FILES:  # window.json/.log, profile.json/.md and the models
                    raise WindowError(f"{len(points)} models and the profile are {len(points) + 4} files; a call returns "
                                      f"{OUT_FILES}: profile with at most {OUT_FILES - 4} models")
                profile_step(window, args.profile_seconds, args.device, protocol)
            mode_train(window, args, points, protocol, compress=True, choose_epochs=args.epochs == "auto")
        elif args.mode == "probe":
            mode_probe(window, args, protocol)
        else:
            if args.mode == "extra":
                bench = args.bench_seconds if args.bench_seconds is not None else window.left() - RESERVE_S
                mode_bench(window, bench, args.device)
            done = args.done or grid_done_dirs(protocol)
            points = plan_grid(protocol, done)[: args.max_points]
            window.record["grid_undone"] = len(plan_grid(protocol, done))
            if not points:
                window.log("grid: every point is done")
            elif window.left() > RESERVE_S + START_OVERHEAD_S + 10:
                mode_train(window, args, points, protocol, compress=False, choose_epochs=False)
            else:
                window.log("grid: no time left for a grid point in this call")
    except WindowError as error:
        window.record["error"] = str(error)
        window.log(f"error: {error}", error=True)
        window.save()
        return 2
    except Exception as error:  # noqa: BLE001 - the record must say why the call ended
        window.record["error"] = f"{type(error).__name__}: {error}"
        window.log(f"error: {type(error).__name__}: {error}", error=True)
        window.save()
        raise
    limits = check_out_limits(window.out)
    window.record["out_limits"] = {"ok": limits["ok"], "problems": limits["problems"], "total_bytes": limits["total_bytes"]}
    window.save()
    summary(window)
    return 0 if limits["ok"] else 1


def summary(window: Window) -> None:
    lines = ["| run | status | epochs | test acc | int8 acc | s/epoch | total s |", "|---|---|---:|---:|---:|---:|---:|"]
    for entry in window.record["runs"]:
        card = RunCard.from_dict(entry.get("card") or {})
        history = card.history or []
        seconds = sum(h.get("seconds", 0) for h in history)
        comp = card.compression or {}
        int8 = f"{comp['test_acc_int8']:.4f}" if comp else "–"
        acc = f"{card.test_acc:.4f}" if card.test_acc is not None else "–"
        lines.append(f"| {entry['name']} | {entry['status']} | {card.epoch or 0}/{entry['epochs']} | {acc} | {int8} | "
                     f"{seconds / max(len(history), 1):.1f} | {seconds:.0f} |")
    window.log("summary (window.json has everything):\n" + "\n".join(lines))


RUN_CALLS = """
Next (docs/gpu-window.md), the device calls; the repository root is this checkout, now on the scratch branch:
  call 1: run(command="PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_window models --variants resnet18,spectral --profile-seconds 60 --budget 200 --out $OUT",
              carry=["data"], timeout_s=230)
          then at once: mkdir -p artifacts/window && cp -r FILES_AT artifacts/window/call1
  call 2 (within 30 s; budget: status's budget_left_s - 30, at most 585; timeout 10 s above it):
          run(command="PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_window models --variants diffstride,hybrid,diffstride2 --budget 585 --out $OUT",
              carry=["data"], timeout_s=595)
          then: cp -r FILES_AT artifacts/window/call2; give_back
Then here:
  python -m benchmarks.gpu_window restore
  python -m exports.ingest artifacts/window/call1 artifacts/window/call2
"""


if __name__ == "__main__":
    sys.exit(main())
