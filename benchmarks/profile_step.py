"""Where a training step's time goes: a compact ``torch.profiler`` table per variant.

    python -m benchmarks.profile_step --variants diffstride,hybrid --batch 512 --steps 3 --warmup 2 \\
        --device cuda --json OUT.json --markdown OUT.md
    python -m benchmarks.profile_step --variants resnet18 --batch 32 --steps 2 --warmup 1 --device cpu

Each variant runs the training step of ``benchmarks.train_throughput.bench_variant`` (same
model, SGD groups, random CIFAR-sized batch; bf16 autocast + channels-last on CUDA, fp32 on
the CPU): ``warmup`` untimed steps, ``steps`` timed steps without the profiler (the step
time and images/s reported), then ``steps`` steps under ``torch.profiler`` (CPU activity,
plus CUDA activity on CUDA; no shapes, stacks or memory, so the overhead stays small).

The result is a table, not a trace: the operators (``aten::...``, autograd and optimizer
regions) ranked by **self device time** on CUDA (the kernels each operator launched itself,
not its children's) or **self CPU time** on the CPU (or when no CUDA activity was
recorded), with calls and milliseconds per step and their share of the profiled step's
wall time; plus the same time summed into categories that decide optimisations:
convolution, matmul/GEMM (the spectral layers' separable products are ``mm``/``bmm``;
``torch.fft`` ops count here too), elementwise/copy (of which the copies ``copy_``,
``contiguous``, ``to``, ``clone``, ``cat`` are also reported alone, as "copies": layout
changes, and on CUDA also autocast's bf16 casts), batchnorm, reduction,
optimizer (anything under ``optimizer.step``, and ``_foreach_*``), other. On CUDA the top
kernels by device time are listed as well (a cuDNN ``nchwToNhwc`` transform inside a
convolution shows there). The difference between the step's wall time and the time
attributed is "idle": on CUDA the GPU waiting for the host (launch-bound), on the CPU
Python and framework time outside any operator.

``profile_variant`` is importable (another tool calls it in-process); ``--max-seconds``
bounds the whole run: steps are cut (at least one profiled step is kept) and variants
that no longer fit are skipped, and the JSON is rewritten after every variant.
"""
from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch.autograd import DeviceType

from hybrid_model import VARIANTS, parse_strides
from serving.files import atomic_write_json, atomic_write_text

from .timing import sync
from .train_throughput import training_step

CATEGORIES = ("convolution", "matmul/GEMM", "elementwise/copy", "batchnorm", "reduction", "optimizer", "other")
NAME_CHARS = 60

_LAYOUT_COPIES = {"copy", "contiguous", "to", "_to_copy", "to_copy", "clone", "cat", "_copy_from", "_copy_from_and_resize",
                  "_cat", "stack"}
_MATMUL = {"mm", "bmm", "addmm", "addbmm", "baddbmm", "matmul", "linear", "einsum", "_addmm_activation",
           "_scaled_mm", "addmv", "mv", "dot", "vdot", "tensordot", "chain_matmul", "linalg_multi_dot",
           "_fft_r2c", "_fft_c2r", "_fft_c2c", "fft_rfft2", "fft_irfft2", "fft_fft2", "fft_ifft2", "fft_rfftn",
           "fft_irfftn", "fft_fftn", "fft_ifftn", "fft_fftshift", "fft_ifftshift"}
_REDUCTION = {"sum", "mean", "amax", "amin", "max", "min", "norm", "linalg_vector_norm", "var", "std", "var_mean",
              "std_mean", "softmax", "_softmax", "log_softmax", "_log_softmax", "_log_softmax_backward_data",
              "_softmax_backward_data", "nll_loss", "nll_loss_forward", "nll_loss_backward", "nll_loss_nd",
              "nll_loss2d_forward", "nll_loss2d_backward", "cross_entropy_loss", "cumsum", "prod", "argmax", "argmin",
              "logsumexp", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward",
              "mean_backward", "sum_backward", "avg_pool2d", "avg_pool2d_backward", "max_pool2d",
              "max_pool2d_with_indices", "max_pool2d_with_indices_backward", "topk", "sort", "all", "any"}
_ELEMENTWISE = {"add", "sub", "rsub", "mul", "div", "neg", "abs", "relu", "threshold", "threshold_backward",
                "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "exp", "log", "pow", "sqrt", "rsqrt",
                "reciprocal", "clamp", "clamp_min", "clamp_max", "where", "fill", "zero", "zeros", "zeros_like",
                "ones", "ones_like", "full", "full_like", "masked_fill", "lerp", "addcmul", "addcdiv", "gelu",
                "gelu_backward", "silu", "silu_backward", "hardtanh", "hardtanh_backward", "sin", "cos", "square",
                "index", "index_select", "index_add", "index_put", "_index_put_impl", "gather", "scatter", "scatter_add",
                "constant_pad_nd", "pad", "reflection_pad2d", "roll", "flip", "view_as_real", "view_as_complex",
                "real", "imag", "complex", "polar", "sign", "floor", "ceil", "round", "frac", "erf", "softplus",
                "softplus_backward", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "bitwise_and",
                "logical_and", "isnan", "isinf", "isfinite", "nan_to_num", "randn", "rand", "normal",
                "uniform", "bernoulli", "dropout", "native_dropout", "native_dropout_backward", "linspace",
                "arange", "cumprod", "repeat", "expand_as", "tril", "triu", "outer", "copysign", "heaviside",
                "sgn", "conj_physical", "resolve_conj", "resolve_neg", "_conj_physical", "_neg_view", "lift_fresh",
                "new_zeros", "new_ones", "new_full", "empty_like", "fmod", "remainder", "cosh", "sinh", "atan2",
                "unfold", "unfold_backward", "select_backward", "slice_backward", "index_select_backward",
                "_unsafe_index", "_unsafe_index_put", "log1p", "expm1", "hypot", "sinc"}


def _short(name: str) -> str:
    """``aten::add_`` -> ``add``; ``aten::_foreach_add_.List`` -> ``_foreach_add``."""
    base = name.split("::")[-1].split(".")[0]
    return base[:-1] if base.endswith("_") and not base.endswith("__") else base


def is_copy(name: str) -> bool:
    """A layout (or dtype) copy: ``copy_``, ``contiguous``, ``to``, ``clone``, ``cat``, ..."""
    return name.startswith("aten::") and _short(name) in _LAYOUT_COPIES


def _autograd_forward_name(name: str) -> str | None:
    """``autograd::engine::evaluate_function: MmBackward0`` / ``MmBackward0`` -> ``aten::mm``."""
    node = name.split(": ", 1)[1] if name.startswith("autograd::engine::evaluate_function: ") else name
    match = re.fullmatch(r"([A-Z][A-Za-z0-9]*?)Backward\d*", node)
    if not match:
        return None
    return "aten::" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", match.group(1)).lower()


def op_category(name: str, under_optimizer: bool = False) -> str:
    """The category of an operator (or record_function region) name; an autograd node's
    own time (the engine's bookkeeping) counts with the operator it differentiates."""
    forward = _autograd_forward_name(name)
    if forward is not None and not under_optimizer:
        return op_category(forward)
    low = name.lower()
    base = _short(name).lower()
    if under_optimizer or "_foreach_" in low or low.startswith("optimizer.") or "optimizer.step" in low:
        return "optimizer"
    if "batch_norm" in low or "batchnorm" in low:
        return "batchnorm"
    if "conv" in base and "convert" not in base:  # convolution, cudnn_convolution, convolution_backward, ...
        return "convolution"
    if base in _MATMUL or base.startswith("fft_") or base.startswith("_fft_"):
        return "matmul/GEMM"
    if base in _LAYOUT_COPIES or base in _ELEMENTWISE:
        return "elementwise/copy"
    if base in _REDUCTION or base.startswith("reduce") or base.startswith("norm"):
        return "reduction"
    return "other"


def kernel_category(name: str) -> str:
    """The category of a CUDA kernel, from its (mangled) name: approximate, for the kernel list."""
    low = name.lower()
    if "multi_tensor_apply" in low or "foreach" in low:
        return "optimizer"
    if any(k in low for k in ("nchwtonhwc", "nhwctonchw", "transpose", "copy", "memcpy", "memset", "cat_",
                              "catarray", "elementwise", "fill")):
        return "elementwise/copy"
    if any(k in low for k in ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford")):
        return "batchnorm"
    if any(k in low for k in ("conv", "fprop", "dgrad", "wgrad", "winograd", "implicit_gemm", "cudnn")):
        return "convolution"
    if any(k in low for k in ("gemm", "cutlass", "xmma", "cublas", "gemv", "fft")):
        return "matmul/GEMM"
    if any(k in low for k in ("reduce", "softmax", "nll_loss", "pool")):
        return "reduction"
    return "other"


def _truncate(name: str, chars: int = NAME_CHARS) -> str:
    return name if len(name) <= chars else name[: chars - 1] + "…"


def _training_step(variant: str, strides: Sequence[float], batch: int, device: torch.device, bf16: bool,
                   channels_last: bool, options: dict):
    """The model and SGD step of ``benchmarks.train_throughput.bench_variant`` (eager)."""
    return training_step(variant, strides, batch, device, bf16, channels_last, options)[1]


def _under_optimizer(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return True
        parent = parent.cpu_parent
    return False


def _summarise(events, steps: int, wall_ms_per_step: float, use_device: bool, top: int) -> dict:
    """Rows per operator name, categories, kernels (CUDA) from a profiler's flat event list."""
    per_name: dict[str, dict] = {}
    kernels: dict[str, list] = defaultdict(lambda: [0, 0.0])
    device_us = attributed_us = 0.0
    cpu_events = []
    annotations = set()  # GPU-side spans of record_function regions: not kernels
    for event in events:
        if event.device_type == DeviceType.CPU:
            cpu_events.append(event)
        elif event.is_user_annotation:
            annotations.add(event.name)
        elif not getattr(event, "is_async", False):
            duration = event.device_time_total
            device_us += duration
            kernels[event.name][0] += 1
            kernels[event.name][1] += duration
    if use_device and device_us <= 0:
        use_device = False  # CUDA activity was asked for but nothing was recorded: fall back to host time
    for event in cpu_events:
        # Device: the kernels this event launched itself (its children's count for them), less
        # any GPU annotation span linked to a record_function region (it would count twice).
        self_us = (sum(k.duration for k in event.kernels if k.name not in annotations) if use_device
                   else event.self_cpu_time_total)
        row = per_name.get(event.name)
        if row is None:
            row = per_name[event.name] = {"name": event.name, "calls": 0, "self_us": 0.0, "optimizer_us": 0.0}
        row["calls"] += 1
        self_us = max(float(self_us), 0.0)
        row["self_us"] += self_us
        if self_us and _under_optimizer(event):
            row["optimizer_us"] += self_us
        attributed_us += self_us
    # The step as profiled: its wall time, or the attributed time where that is larger
    # (threads/streams overlapping), so the shares never add up to more than 100 %.
    step_ms = max(wall_ms_per_step, attributed_us / 1e3 / steps)
    if use_device:  # kernels no operator claimed (rare): keep them in the total
        unclaimed = max(device_us - attributed_us, 0.0)
        if unclaimed > 0.01 * device_us:
            per_name["(kernels outside any operator)"] = {"name": "(kernels outside any operator)", "calls": 0,
                                                          "self_us": unclaimed, "optimizer_us": 0.0}
            attributed_us += unclaimed
            step_ms = max(step_ms, attributed_us / 1e3 / steps)

    categories = {name: 0.0 for name in CATEGORIES}
    copies_ms = 0.0
    rows = []
    for row in per_name.values():
        ms = row["self_us"] / 1e3 / steps
        if ms <= 0:
            continue
        optimizer_ms = row["optimizer_us"] / 1e3 / steps
        category = op_category(row["name"], under_optimizer=optimizer_ms >= ms / 2)
        if category == "optimizer":
            categories["optimizer"] += ms
        else:  # the calls of this name made by optimizer.step count there, the rest here
            categories["optimizer"] += optimizer_ms
            categories[category] += ms - optimizer_ms
            if is_copy(row["name"]):
                copies_ms += ms - optimizer_ms
        rows.append({"name": _truncate(row["name"]), "category": category, "calls": round(row["calls"] / steps, 2),
                     "ms_per_step": ms, "share_pct": 100 * ms / step_ms})
    rows.sort(key=lambda r: r["ms_per_step"], reverse=True)
    attributed_ms = attributed_us / 1e3 / steps
    result = {
        "time_basis": "self device time (CUDA kernels)" if use_device else "self CPU time",
        "profiled_step_ms": step_ms,
        "attributed_ms": attributed_ms,
        "attributed_pct": 100 * attributed_ms / step_ms if step_ms else 0.0,
        "idle_ms": max(step_ms - attributed_ms, 0.0),
        "categories": [{"category": name, "ms_per_step": ms, "share_pct": 100 * ms / step_ms if step_ms else 0.0}
                       for name, ms in categories.items()],
        "copies_ms": copies_ms,
        "copies_pct": 100 * copies_ms / step_ms if step_ms else 0.0,
        "operators": len(rows),
        "rows": rows[:top],
        "rest_ms": sum(r["ms_per_step"] for r in rows[top:]),
    }
    if use_device:
        ranked = sorted(kernels.items(), key=lambda item: item[1][1], reverse=True)
        result["kernels"] = [{"name": _truncate(name), "category": kernel_category(name), "calls": round(n / steps, 2),
                              "ms_per_step": us / 1e3 / steps, "share_pct": 100 * us / 1e3 / steps / step_ms}
                             for name, (n, us) in ranked[:top]]
        kernel_categories = dict.fromkeys(CATEGORIES, 0.0)
        for name, (_, us) in kernels.items():
            kernel_categories[kernel_category(name)] += us / 1e3 / steps
        result["kernel_categories"] = kernel_categories
    return result


def profile_variant(variant: str, batch: int, steps: int = 3, warmup: int = 2, device: str | torch.device = "cuda", *,
                    strides: Sequence[float] = (1, 1, 2, 2, 2), options: dict | None = None, top: int = 25,
                    max_seconds: float | None = None, bf16: bool | None = None,
                    channels_last: bool | None = None) -> dict:
    """Profile ``steps`` training steps of ``variant`` (after ``warmup`` untimed ones).

    ``bf16`` and ``channels_last`` default to ``True`` on CUDA and ``False`` on the CPU (as
    ``bench_variant``); ``options`` go to ``build_model`` (``{"width": 8}``); ``max_seconds``
    bounds this call (warm-up and timed steps are cut, one profiled step always runs).
    Returns a JSON-ready dict: ``variant, device, batch, steps, warmup`` (the counts
    actually run), ``step_ms`` and ``images_per_s`` (unprofiled median), ``time_basis``,
    ``profiled_step_ms``, ``attributed_ms/_pct``, ``idle_ms``, ``categories`` (list of
    ``{category, ms_per_step, share_pct}`` in :data:`CATEGORIES` order),
    ``copies_ms/_pct`` (part of elementwise/copy), ``rows`` (top ``top`` of ``{name, category, calls,
    ms_per_step, share_pct}`` by self time; calls per step), ``rest_ms``, on CUDA ``kernels``
    and ``kernel_categories``, ``truncated`` and ``seconds``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {list(VARIANTS)}")
    if batch < 1 or steps < 1 or warmup < 0 or top < 1:
        raise ValueError("batch, steps and top must be >= 1, warmup >= 0")
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    bf16 = cuda if bf16 is None else bf16
    channels_last = cuda if channels_last is None else channels_last
    if cuda:
        torch.backends.cudnn.benchmark = True  # as training.train and bench_variant's CLI
    start = time.perf_counter()
    # Steps are planned against the deadline less a reserve for the profiler's own
    # start-up and post-processing (a few seconds on CUDA), so the call ends near max_seconds.
    deadline = start + max_seconds - min(5.0, 0.2 * max_seconds) if max_seconds else None
    truncated = False

    def fits(n_steps: int, per_step: float) -> bool:
        return deadline is None or time.perf_counter() + n_steps * per_step <= deadline

    step = _training_step(variant, strides, batch, device, bf16, channels_last, options or {})
    est = 0.0  # seconds per step, the latest measured
    done_warmup = 0
    for _ in range(warmup):
        if done_warmup and not fits(1 + 2 * steps, est):  # keep room for the timed and profiled steps
            truncated = True
            break
        t = time.perf_counter()
        step()
        sync(device)
        est = time.perf_counter() - t
        done_warmup += 1

    times: list[float] = []
    for _ in range(steps):
        if (times or done_warmup) and not fits(1 + steps * 1.5, est):  # profiled steps cost ~1.5 plain steps at most
            truncated = True
            break
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
        est = times[-1]

    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda and torch.profiler.ProfilerActivity.CUDA in torch.profiler.supported_activities():
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    def profiled(activities: list) -> tuple:
        n = 0
        with torch.profiler.profile(activities=activities, record_shapes=False, profile_memory=False,
                                    with_stack=False, with_flops=False) as prof:
            t = time.perf_counter()
            for _ in range(steps):
                if n and not fits(1, est * 1.5):
                    break
                step()
                n += 1
            sync(device)
            wall = time.perf_counter() - t
        return prof, n, wall

    try:
        prof, profiled_steps, profiled_wall = profiled(activities)
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as error:  # CUPTI/kineto refused the device activity: host time only
        if len(activities) == 1:
            raise
        print(f"profile_step: CUDA activity failed ({str(error).splitlines()[0][:100]}); profiling CPU only",
              file=sys.stderr, flush=True)
        activities = activities[:1]
        prof, profiled_steps, profiled_wall = profiled(activities)
    truncated = truncated or profiled_steps < steps
    summary = _summarise(prof.events(), profiled_steps, 1e3 * profiled_wall / profiled_steps,
                         torch.profiler.ProfilerActivity.CUDA in activities, top)
    step_s = statistics.median(times) if times else profiled_wall / profiled_steps
    return {"variant": variant, "device": str(device), "batch": batch, "steps": profiled_steps, "timed_steps": len(times),
            "warmup": done_warmup, "bf16": bf16, "channels_last": channels_last, "options": dict(options or {}),
            "strides": list(strides), "step_ms": 1e3 * step_s, "step_ms_source": "unprofiled" if times else "profiled",
            "images_per_s": batch / step_s, **summary, "truncated": truncated,
            "seconds": time.perf_counter() - start}


def _fmt(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def markdown(results: list[dict], rows: int = 15, kernel_rows: int = 8) -> str:
    """A category summary over the variants, then each variant's top operators (and kernels on CUDA)."""
    done = [r for r in results if "rows" in r]
    lines = ["| variant | step ms | images/s | profiled step ms | " + " | ".join(CATEGORIES) + " | copies | idle |",
             "|---|---:|---:|---:|" + "---:|" * (len(CATEGORIES) + 2)]
    for r in done:
        cats = " | ".join(f"{c['share_pct']:.1f} %" for c in r["categories"])
        idle = 100 * r["idle_ms"] / r["profiled_step_ms"] if r["profiled_step_ms"] else 0.0
        lines.append(f"| {r['variant']} | {_fmt(r['step_ms'])} | {r['images_per_s']:.1f} | {_fmt(r['profiled_step_ms'])} | "
                     f"{cats} | {r['copies_pct']:.1f} % | {idle:.1f} % |")
    for r in results:
        if "rows" not in r:
            lines += ["", f"**{r['variant']}**: skipped ({r.get('skipped', 'no result')})"]
            continue
        lines += ["", f"**{r['variant']}** ({r['device']}, batch {r['batch']}, {r['steps']} profiled steps, "
                  f"{r['time_basis']}; share of the profiled step{'; cut by --max-seconds' if r['truncated'] else ''}):", "",
                  "| operator | category | calls/step | ms/step | share |", "|---|---|---:|---:|---:|"]
        for row in r["rows"][:rows]:
            lines.append(f"| `{row['name']}` | {row['category']} | {row['calls']:g} | {_fmt(row['ms_per_step'])} | "
                         f"{row['share_pct']:.1f} % |")
        if r.get("kernels"):
            lines += ["", "| kernel | category | calls/step | ms/step | share |", "|---|---|---:|---:|---:|"]
            for row in r["kernels"][:kernel_rows]:
                lines.append(f"| `{row['name']}` | {row['category']} | {row['calls']:g} | {_fmt(row['ms_per_step'])} | "
                             f"{row['share_pct']:.1f} % |")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="resnet18,diffstride,hybrid", help="comma-separated variants")
    p.add_argument("--strides", default="1,1,2,2,2")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps, then as many profiled steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (cuDNN autotuning)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    p.add_argument("--width", type=int, default=None, help="channels of the first stage (model default 64)")
    p.add_argument("--top", type=int, default=25, help="operators kept per variant in the JSON")
    p.add_argument("--rows", type=int, default=15, help="operators per variant in the Markdown")
    p.add_argument("--max-seconds", type=float, default=None, help="bound on the whole run (steps cut, variants skipped)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the results here (after every variant)")
    p.add_argument("--markdown", default=None, help="write the Markdown tables here")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        p.error(f"unknown variants {bad}; expected some of {list(VARIANTS)}")
    if args.steps < 1 or args.batch < 1 or args.warmup < 0 or args.top < 1 or args.rows < 1:
        p.error("--steps, --batch, --top and --rows must be >= 1, --warmup >= 0")
    if args.width is not None and args.width < 1:
        p.error(f"--width must be a positive integer, got {args.width}")
    if args.max_seconds is not None and args.max_seconds <= 0:
        p.error("--max-seconds must be positive")
    try:
        strides = parse_strides(args.strides)
    except ValueError as error:
        p.error(f"argument --strides: {error}")
    if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device must be auto, cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    options = {"width": args.width} if args.width is not None else {}
    name = (torch.cuda.get_device_name(device) if cuda else
            f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch}; strides {args.strides}; "
          f"{'bf16 autocast + channels-last' if cuda else 'fp32'}; {args.warmup} warm-up, {args.steps} timed + "
          f"{args.steps} profiled steps", file=sys.stderr, flush=True)
    start = time.perf_counter()
    results = []
    failed = False
    for i, variant in enumerate(variants):
        budget = None
        if args.max_seconds is not None:
            left = args.max_seconds - (time.perf_counter() - start)
            budget = left / (len(variants) - i)  # an even share of what is left
            if left < 1:
                results.append({"variant": variant, "skipped": "--max-seconds spent"})
                print(f"  {variant}: skipped, --max-seconds spent", file=sys.stderr, flush=True)
                continue
        try:
            result = profile_variant(variant, args.batch, args.steps, args.warmup, device, strides=strides,
                                     options=options, top=args.top, max_seconds=budget)
        except Exception as error:  # noqa: BLE001 -- one variant's failure (out of memory, ...) keeps the others
            first_line = (str(error).splitlines() or [""])[0][:160]
            result = {"variant": variant, "skipped": f"{type(error).__name__}: {first_line}"}
            failed = True
            if cuda:
                torch.cuda.empty_cache()
        results.append(result)
        if "skipped" in result:
            print(f"  {variant}: {result['skipped']}", file=sys.stderr, flush=True)
        else:
            top = result["rows"][0] if result["rows"] else {"name": "-", "share_pct": 0.0}
            print(f"  {variant}: {result['step_ms']:.1f} ms/step, {result['images_per_s']:.1f} img/s; top "
                  f"{top['name']} {top['share_pct']:.1f} % ({result['seconds']:.1f} s)", file=sys.stderr, flush=True)
        if args.json:
            atomic_write_json(args.json, {
                "device": name, "torch": torch.__version__, "batch": args.batch, "strides": strides,
                "steps": args.steps, "warmup": args.warmup, "options": options, "categories": list(CATEGORIES),
                "results": results,
                "command": ["python", "-m", "benchmarks.profile_step", *(argv if argv is not None else sys.argv[1:])],
            })
    table = markdown(results, rows=args.rows)
    if args.markdown:
        atomic_write_text(args.markdown, f"device: {name}; torch {torch.__version__}\n\n{table}\n")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
