"""Benchmarks inside a device call, each a subprocess stopped at its time box: the profiler
step (``benchmarks.profile_step``) and ``extra``'s layer and training-throughput
benchmarks; what each wrote goes into the call's record."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.paths import REPO_ROOT

from .record import Window, work_dir

if TYPE_CHECKING:  # training.sweep imports torch
    from training.sweep import SweepConfig

#: What the profile step profiles (issue 21): the DiffStride family's most common member
#: first (its share of ``--max-seconds`` comes first), then the plain network, a few steps
#: each at the protocol's batch. The second window gave it 20 s: CUDA and the profiler's
#: start-up took them all (one step of resnet18 came back), hence 60 s by default.
PROFILE_VARIANTS = "hybrid,resnet18"
PROFILE_SECONDS = 60.0


def profile_step(window: Window, seconds: float, device: str, protocol: SweepConfig) -> None:
    """A few training steps under ``torch.profiler`` (``benchmarks.profile_step``), as a
    subprocess stopped at ``seconds``: its compact kernel table goes into window.json and
    ``profile.md`` beside it (no trace file)."""
    json_path, md_path = window.out / "profile.json", window.out / "profile.md"
    batch = str(protocol.args.get("batch-size", 512))
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
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=seconds)
        window.log(f"{label}: exit {result.returncode}\n" + result.stdout[-tail:] + result.stderr[-tail // 3:])
    except subprocess.TimeoutExpired:
        window.log(f"{label}: stopped at its {seconds:.0f} s limit")
    return json.loads(json_path.read_text()) if json_path.exists() else None


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
