"""Training on the device: the smoke (a few timed steps of every variant), the data decoded
in the background meanwhile, the epochs that fit the budget, the training processes (run
concurrently, each in its own process group, stopped at the budget) and the int8
compression of the finished models with their accuracy before and after it."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from serving.cards import RunCard
from serving.paths import REPO_ROOT

from .plan import START_OVERHEAD_S, _epoch_seconds, _own_epochs, _reserve, _train_namespace
from .record import Window, WindowError, work_dir

if TYPE_CHECKING:  # training.sweep imports torch
    from training.sweep import SweepConfig


def smoke(window: Window, points: list, protocol: SweepConfig, device: str) -> dict[str, dict]:
    """fwd+bwd+SGD steps of every (variant, strides) at the protocol's batch on ``device``
    (bf16 autocast + channels-last on CUDA, as training); median step seconds and FLOPs."""
    import torch  # torch-free boundary

    from benchmarks.train_throughput import bench_variant  # torch-free boundary
    from training.train import model_options  # torch-free boundary

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
        _, ns = _train_namespace(point.variant, point.strides, point.seed, protocol.epochs, protocol)
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


def _start_decode(data_dir: str, protocol: SweepConfig) -> subprocess.Popen:
    """Decode the JPEG copy once into the cache (in the background, during the smoke)."""
    code = ("import sys; from training.data import load_cifar; "
            f"d = load_cifar('cifar10', {data_dir!r}, limit_train={_limit(protocol, 'limit-train')}, "
            f"limit_test={_limit(protocol, 'limit-test')}); print(d.source, d.n_train, d.n_test)")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish_decode(window: Window, process: subprocess.Popen) -> tuple[int, int]:
    output, _ = process.communicate()
    if process.returncode != 0:
        raise WindowError(f"data: {output.strip().splitlines()[-1] if output.strip() else 'decode failed'}")
    words = output.strip().splitlines()[-1].rsplit(" ", 2)
    window.log(f"data: {output.strip().splitlines()[-1]}")
    window.record["data"] = {"source": words[0], "n_train": int(words[1]), "n_test": int(words[2])}
    return int(words[1]), int(words[2])


def mode_train(window: Window, args, points: list, protocol: SweepConfig, compress: bool, choose_epochs: bool,
                protocols: dict[str, SweepConfig] | None = None) -> None:
    """Smoke, estimate, then train ``points`` (see :func:`run_points`). The cards are marked
    ``off_protocol`` when fewer epochs fit or when ``protocols`` gives points their own
    settings (a probe). Whether a card's settings are the committed protocol's is decided
    later from its ``config`` (``training.sweep.on_protocol``)."""
    decode = _start_decode(args.data_dir, protocol)
    timings = smoke(window, points, protocol, args.device)
    n_train, n_test = _finish_decode(window, decode)
    _, ns = _train_namespace(points[0].variant, points[0].strides, 0, protocol.epochs, protocol)
    batch = ns.batch_size
    step = {f"{p.variant} {p.strides}": timings[f"{p.variant} {p.strides}"]["step_s"] for p in points}
    available = window.left() - _reserve(compress) - START_OVERHEAD_S
    one_epoch = sum(_epoch_seconds(p, step, n_train, n_test, batch, protocols) for p in points)
    epochs = protocol.epochs
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
        "protocol_epochs": protocol.epochs, "epochs": epochs, "runs": [p.name for p in points],
        "rule": "sum over runs of (steps/epoch x smoke step time + eval) x 1.1: concurrent processes time-share the GPU",
    }
    off_protocol = epochs != protocol.epochs or protocols is not None
    window.log(f"estimate: {one_epoch:.1f} s per epoch of the runs; {available:.0f} s available -> {epochs} epochs"
               + (" (these cards are marked off_protocol)" if off_protocol else ""))
    window.save()
    run_points(window, points, epochs, protocol, args.data_dir, args.device, compress, off_protocol, protocols)


def _popen(argv: list[str], log_path: Path, threads: int) -> subprocess.Popen:
    """One training process in its own process group (so it can be stopped with its children)
    but in this session: the device tool ends it with the call if the call is killed."""
    handle = open(log_path, "w", encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "training.train", *argv], cwd=REPO_ROOT, stdout=handle,
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


def run_points(window: Window, points: list, epochs: int, protocol: SweepConfig, data_dir: str, device: str,
               compress: bool, off_protocol: bool, protocols: dict[str, SweepConfig] | None = None) -> None:
    """Train ``points`` concurrently (one process each) until they finish or the budget ends;
    record every card as it is written; compress finished models when ``compress``.
    ``protocols``: a protocol per point name (the probe's settings; each run is then named
    after its point), else ``protocol`` for all."""
    from exports.compact import write_compact  # torch-free boundary

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
                    from training.data import load_cifar  # torch-free boundary

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


def evaluate_compressed(run_dir: Path, name: str, data, device: str) -> tuple[dict, RunCard, dict]:
    """Load ``run_dir/NAME``; accuracy on the whole test split in float32 before and after int8
    compression (same device, TF32 off). Returns ``(state, card, compression stats)``."""
    import torch  # torch-free boundary
    from safetensors.torch import load_file  # torch-free boundary

    from exports.compact import SCHEME, dequantize_state_dict, quantize_state_dict  # torch-free boundary
    from training.checkpoint import load_model  # torch-free boundary
    from training.data import GpuLoader  # torch-free boundary

    card = RunCard.from_dict(json.loads((run_dir / f"{name}.json").read_text()))
    state = load_file(str(run_dir / f"{name}.safetensors"), device="cpu")
    dev = torch.device(device)
    loader = GpuLoader(data.x_test, data.y_test, 1000, train=False, device=dev, dataset=card.dataset)
    cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        predictions = []
        for weights in (state, dequantize_state_dict(quantize_state_dict(state))):
            model = load_model(card, weights, name)
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


def _limit(protocol: SweepConfig, key: str) -> int | None:
    value = protocol.args.get(key)
    return int(value) if value else None
