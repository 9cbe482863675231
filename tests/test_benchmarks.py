"""The benchmark scripts run end to end (tiny sizes) and write well-formed results.

Their timings are not checked here (speed targets live in benchmarks/RESULTS.md); what is
checked is that every code path runs, the fast and reference layers agree in the table's
difference column, and bad flags fail with a clear message.
"""
import json

import pytest

from benchmarks import layers, train_throughput


def test_layer_benchmark_tables_and_json(tmp_path, capsys):
    out = tmp_path / "layers.json"
    layers.main(["--batch", "2", "--repeats", "1", "--devices", "cpu", "--models", "--model-batch", "2",
                 "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert len(result["layers"]) == 3 * len(layers.RESNET18_SHAPES)
    assert all(row["max_abs_diff"] < 1e-4 and row["fast_s"] > 0 and row["ref_s"] > 0 for row in result["layers"])
    assert [row["variant"] for row in result["models"]] == ["resnet18", "diffstride", "hybrid"]
    assert "| diffstride | cpu | float32 | 64×32×32 | 2 |" in printed and "| hybrid | cpu | 2 |" in printed


@pytest.mark.parametrize("compile_", [False, True])
def test_throughput_benchmark(tmp_path, capsys, compile_):
    out = tmp_path / "throughput.json"
    variants = "resnet18,hybrid" if not compile_ else "resnet18"
    argv = ["--variants", variants, "--batch", "2", "--steps", "1", "--device", "cpu", "--width", "16", "--json", str(out)]
    assert train_throughput.main(argv + (["--compile"] if compile_ else [])) == 0
    result = json.loads(out.read_text())
    assert result["compile"] is compile_ and [r["variant"] for r in result["results"]] == variants.split(",")
    assert result["options"] == {"width": 16} and result["strides"] == [1, 1, 2, 2, 2]
    assert all(r["images_per_s"] > 0 and r["warmup_s"] > 0 and r["peak_memory_bytes"] is None for r in result["results"])
    assert "| resnet18 |" in capsys.readouterr().out


@pytest.mark.parametrize("module, argv, message", [
    (train_throughput, ["--variants", "resnet18,nope"], "unknown variants"),
    (train_throughput, ["--strides", "1,2"], "5 comma-separated numbers"),
    (train_throughput, ["--strides", "0.5,1,2,2,2"], "[1, 64)"),
    (train_throughput, ["--width", "0"], "--width must be a positive integer"),
    (train_throughput, ["--compile", "--warmup", "0"], "--compile needs --warmup >= 1"),
    (layers, ["--layers", "diffstride,nope"], "unknown layer"),
    (layers, ["--batch", "0"], "must be positive"),
])
def test_benchmark_flags_fail_clearly(module, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        module.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_app_latency_without_a_dashboard_at_url_is_one_line(tmp_path, capsys):
    from benchmarks import app_latency
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/"
    assert app_latency.main(["--url", url, "--markdown", str(tmp_path / "table.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url}: ") and "refused" in err and err.count("\n") == 1, err
    assert not (tmp_path / "table.md").exists()
