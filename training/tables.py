"""Markdown tables of measured results (torch-free, stdlib only): the benchmarks print them,
and ``exports.ingest`` puts a GPU window's benchmark results into benchmarks/RESULTS.md with
them, so both render the same numbers the same way."""
from __future__ import annotations


def throughput_table(results: list[dict]) -> str:
    """``benchmarks.train_throughput``'s results: step time, images/s, ratio to resnet18."""
    base = next((r["step_s"] for r in results if r["variant"] == "resnet18"), None)
    lines = ["| variant | step time (s) | images/s | step time / resnet18 | warm-up (s) | peak memory (GiB) | achieved TFLOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = f"{r['step_s'] / base:.2f}" if base else "–"
        peak = f"{r['peak_memory_bytes'] / 2**30:.2f}" if r.get("peak_memory_bytes") is not None else "–"
        tflops = f"{r['achieved_tflops']:.2f}" if r.get("achieved_tflops") is not None else "–"
        lines.append(f"| {r['variant']} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {ratio} | "
                     f"{r['warmup_s']:.1f} | {peak} | {tflops} |")
    return "\n".join(lines)


def layer_table(rows: list[dict]) -> str:
    """``benchmarks.layers``' layer rows: fast path vs the torch.fft reference."""
    lines = ["| layer | device | precision | C×H×W | batch | fast (ms) | torch.fft (ms) | speed-up | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = "×".join(map(str, r["shape"]))
        lines.append(f"| {r['layer']} | {r['device']} | {r['autocast']} | {shape} | {r['batch']} | "
                     f"{1e3 * r['fast_s']:.1f} | {1e3 * r['ref_s']:.1f} | {r['speedup']:.2f}× | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)
