"""benchmarks.profile_step: the compact profiler table runs end to end on the CPU (tiny models).

What is checked is the table's structure and arithmetic (rows ranked by self time, shares of
the step that add up to at most 100 %, categories that account for every attributed
millisecond), that a plain ResNet-18 step is dominated by convolutions, the ``--max-seconds``
cut, and that bad flags fail with one line and exit 2. Timings themselves are not checked.
"""
import json

import pytest
import torch

from benchmarks import profile_step
from benchmarks.profile_step import CATEGORIES, op_category, profile_variant


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads can stall for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_result(result: dict, variant: str, steps: int) -> None:
    assert result["variant"] == variant and result["device"] == "cpu" and result["steps"] == steps
    assert result["time_basis"] == "self CPU time" and "kernels" not in result
    assert result["step_ms"] > 0 and result["images_per_s"] > 0 and result["profiled_step_ms"] > 0
    rows = result["rows"]
    assert rows and rows[0]["name"] and rows[0]["ms_per_step"] > 0 and rows[0]["share_pct"] > 0 and rows[0]["calls"] > 0
    assert len(rows) <= 25 and all(len(r["name"]) <= profile_step.NAME_CHARS for r in rows)
    assert [r["ms_per_step"] for r in rows] == sorted((r["ms_per_step"] for r in rows), reverse=True)
    assert all(r["category"] in CATEGORIES and r["share_pct"] >= 0 for r in rows)
    assert sum(r["share_pct"] for r in rows) <= 100 + 1e-6
    assert 0 < result["attributed_pct"] <= 100 + 1e-6
    # Every attributed millisecond is in exactly one category; shown rows + the rest = attributed.
    assert [c["category"] for c in result["categories"]] == list(CATEGORIES)
    assert sum(c["ms_per_step"] for c in result["categories"]) == pytest.approx(result["attributed_ms"], rel=1e-6)
    assert sum(c["share_pct"] for c in result["categories"]) <= 100 + 1e-6
    assert sum(r["ms_per_step"] for r in rows) + result["rest_ms"] == pytest.approx(result["attributed_ms"], rel=1e-6)
    assert result["attributed_ms"] + result["idle_ms"] == pytest.approx(result["profiled_step_ms"], rel=1e-6)
    elementwise = next(c["ms_per_step"] for c in result["categories"] if c["category"] == "elementwise/copy")
    assert 0 <= result["copies_ms"] <= elementwise + 1e-9


def test_cli_tables_and_json(tmp_path, capsys):
    out, md = tmp_path / "profile.json", tmp_path / "profile.md"
    argv = ["--variants", "resnet18,hybrid", "--batch", "4", "--steps", "1", "--warmup", "0", "--device", "cpu",
            "--width", "8", "--json", str(out), "--markdown", str(md)]
    assert profile_step.main(argv) == 0
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["results"]] == ["resnet18", "hybrid"] and result["options"] == {"width": 8}
    for r in result["results"]:
        check_result(r, r["variant"], 1)
    resnet, hybrid = result["results"]
    categories = {c["category"]: c["ms_per_step"] for c in resnet["categories"]}
    assert max(categories, key=categories.get) == "convolution"  # a plain ResNet-18 step is its convolutions
    hybrid_matmul = next(c["ms_per_step"] for c in hybrid["categories"] if c["category"] == "matmul/GEMM")
    assert hybrid_matmul > 0  # the spectral layers' separable products
    printed = capsys.readouterr().out
    assert printed.strip().endswith(md.read_text().split("\n\n", 1)[1].strip())
    assert "| variant | step ms | images/s |" in printed and "| resnet18 |" in printed and "**hybrid**" in printed
    assert f"| `{resnet['rows'][0]['name']}` |" in printed


def test_max_seconds_cuts_steps_but_keeps_one_profiled_step():
    result = profile_variant("resnet18", 4, steps=3, warmup=2, device="cpu", options={"width": 8}, max_seconds=1e-3)
    assert result["truncated"] and result["steps"] == 1 and result["warmup"] == 1 and result["timed_steps"] == 0
    check_result(result, "resnet18", 1)


def test_categories():
    assert op_category("aten::bmm") == op_category("aten::mm") == op_category("MmBackward0") == "matmul/GEMM"
    assert op_category("aten::cudnn_convolution") == op_category("aten::convolution_backward") == "convolution"
    assert op_category("aten::copy_") == op_category("aten::cat") == op_category("aten::_to_copy") == "elementwise/copy"
    assert op_category("aten::native_batch_norm_backward") == op_category("aten::cudnn_batch_norm") == "batchnorm"
    assert op_category("aten::sum") == op_category("aten::_log_softmax") == "reduction"
    assert op_category("aten::_foreach_add_.List") == op_category("aten::add_", under_optimizer=True) == "optimizer"
    assert op_category("aten::empty") == "other"


@pytest.mark.parametrize("argv, message", [
    (["--variants", "resnet18,nope"], "unknown variants"),
    (["--batch", "0"], "must be >= 1"),
    (["--width", "0"], "--width must be a positive integer"),
    (["--max-seconds", "0"], "--max-seconds must be positive"),
    (["--device", "tpu"], "--device must be"),
])
def test_bad_flags_fail_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        profile_step.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_profile_variant_rejects_an_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant"):
        profile_variant("nope", 4, 1, 0, "cpu")


def test_device_time_aggregation_on_synthetic_cuda_events():
    """The CUDA path (only run on a GPU) on hand-made profiler events: each kernel counts once,
    for the operator that launched it; optimizer regions and unclaimed kernels are kept."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    ids = iter(range(1000))
    events = []

    def cpu(name, start, end, parent=None, kernels=(), annotation=False):
        event = FunctionEvent(next(ids), name, 1, start, end, use_device="cuda", is_user_annotation=annotation)
        if parent is not None:
            parent.append_cpu_child(event)
            event.set_cpu_parent(parent)
        for kernel, us in kernels:
            event.append_kernel(kernel, 0, us)
            events.append(FunctionEvent(next(ids), kernel, 7, 0, us, use_device="cuda", device_type=DeviceType.CUDA))
        events.append(event)
        return event

    conv = cpu("aten::convolution", 0, 50)
    cpu("aten::cudnn_convolution", 1, 49, conv, [("sm90_xmma_fprop_implicit_gemm_bf16", 400), ("nchwToNhwcKernel", 50)])
    cpu("aten::bmm", 50, 60, kernels=[("sm90_xmma_gemm_bf16bf16_bf16f32", 200)])
    cpu("aten::copy_", 60, 70, kernels=[("void at::native::elementwise_kernel<128, 2>", 100)])
    step = cpu("Optimizer.step#SGD.step", 70, 90, annotation=True)
    cpu("aten::_foreach_add_", 71, 80, step, [("multi_tensor_apply_kernel", 50)])
    cpu("aten::add_", 80, 89, step, [("vectorized_elementwise_kernel", 25)])
    step.append_kernel("SGD.step", 0, 999)  # a GPU annotation span linked to its region: not a kernel
    events.append(FunctionEvent(next(ids), "Memset (Device)", 7, 0, 100, use_device="cuda", device_type=DeviceType.CUDA))
    events.append(FunctionEvent(next(ids), "SGD.step", 7, 0, 999, use_device="cuda", device_type=DeviceType.CUDA,
                                is_user_annotation=True))  # a GPU-side annotation: not a kernel

    result = profile_step._summarise(events, steps=1, wall_ms_per_step=1.0, use_device=True, top=25)
    assert result["time_basis"].startswith("self device time")
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["aten::cudnn_convolution"]["ms_per_step"] == pytest.approx(0.45) and "aten::convolution" not in rows
    assert rows["(kernels outside any operator)"]["ms_per_step"] == pytest.approx(0.1)
    assert rows["aten::add_"]["category"] == "optimizer" and result["rows"][0]["name"] == "aten::cudnn_convolution"
    categories = {c["category"]: c["ms_per_step"] for c in result["categories"]}
    assert categories == pytest.approx({"convolution": 0.45, "matmul/GEMM": 0.2, "elementwise/copy": 0.1, "batchnorm": 0,
                                        "reduction": 0, "optimizer": 0.075, "other": 0.1})
    assert result["attributed_ms"] == pytest.approx(0.925) and result["idle_ms"] == pytest.approx(0.075)
    assert result["copies_ms"] == pytest.approx(0.1) and result["profiled_step_ms"] == 1.0
    kernels = {k["name"]: k["category"] for k in result["kernels"]}
    assert kernels["nchwToNhwcKernel"] == "elementwise/copy" and kernels["multi_tensor_apply_kernel"] == "optimizer"
    assert kernels["sm90_xmma_fprop_implicit_gemm_bf16"] == "convolution"
    assert kernels["sm90_xmma_gemm_bf16bf16_bf16f32"] == "matmul/GEMM" and "SGD.step" not in kernels
    # Where nothing reached the device (CUDA activity unavailable), host time is used instead.
    assert profile_step._summarise([e for e in events if e.device_type == DeviceType.CPU], 1, 1.0, True,
                                   25)["time_basis"] == "self CPU time"
