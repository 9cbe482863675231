"""training.sweep and training.report: config checks, the papers' table, figures, a real tiny sweep."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.cards import RunCard
from serving.paths import REPO_ROOT
from training import report
from training.sweep import ConfigError, load_config, main, plan_runs


def _write(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, message", [
    ({"variants": ["resnet18"]}, "'epochs' is required"),
    ({"epochs": 1, "variants": ["resnet50"]}, "unknown variants"),
    ({"epochs": 1, "strides": ["1,1,2,2"]}, "5 comma-separated"),
    ({"epochs": 1, "datasets": ["mnist"]}, "unknown datasets"),
    ({"epochs": 1, "seeds": []}, "non-empty list"),
    ({"epochs": 0}, "positive integer"),
    ({"epochs": 1, "args": {"seed": 3}}, "may not set"),
    ({"epochs": 1, "colour": "red"}, "unknown keys"),
])
def test_bad_configs(tmp_path, config, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path / "c.json", config))


def test_example_configs_are_valid():
    configs = sorted((REPO_ROOT / "training" / "sweeps").glob("*.json"))
    assert {"paper_cifar10.json", "paper_cifar100.json"} <= {p.name for p in configs}
    for path in configs:
        config = load_config(path)
        assert plan_runs(config)
    paper = load_config(REPO_ROOT / "training" / "sweeps" / "paper_cifar10.json")
    import hybrid_model

    assert [tuple(s) for s in paper.strides] == [tuple(map(float, s)) for s in hybrid_model.PAPER_STRIDES]
    assert len(plan_runs(paper)) == 6 * 6 * 3  # five variants + the diffstride_scaled ablation


def test_plan_and_dry_run(tmp_path, capsys):
    path = _write(tmp_path / "c.json", {"epochs": 3, "variants": ["hybrid", "resnet18"], "strides": ["1,1,2,2,2", [1, 1, 3, 1, 3]],
                                        "seeds": [0, 1], "args": {"batch-size": 64, "nesterov": True, "no-progress": False},
                                        "out": str(tmp_path / "runs")})
    runs = plan_runs(load_config(path))
    assert [r.name for r in runs[:3]] == ["hybrid_cifar10_s11222_seed0", "hybrid_cifar10_s11222_seed1", "resnet18_cifar10_s11222_seed0"]
    assert len(runs) == 8
    assert main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("-m training.train") == 8 and "--batch-size 64 --nesterov" in out and "--no-progress" not in out
    assert "--strides 1,1,3,1,3" in out and "--resume" in out and not (tmp_path / "runs").exists()


def test_sweep_config_error_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--config", str(tmp_path / "missing.json")])
    assert info.value.code == 2 and "cannot read config" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Report from synthetic cards
# --------------------------------------------------------------------------------------
def _card(variant, strides, seed, acc, dataset="cifar10", epochs=2, epoch=2, strides_learned=None):
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": acc - 0.1 / e, "test_loss": 2.1 / e, "test_acc": acc - 0.05 * (epochs - e),
                "strides": strides_learned or {}} for e in range(1, epoch + 1)]
    return RunCard(name=f"{variant}_{dataset}_{''.join(map(str, strides))}_seed{seed}", variant=variant, dataset=dataset,
                   strides=list(strides), seed=seed, epoch=epoch, epochs=epochs, test_acc=acc, history=history,
                   learned_strides=strides_learned or {},
                   data={"source": "CIFAR-10 (JPEG copy) from /x", "n_train": 100, "n_test": 50})


@pytest.fixture
def cards():
    learned = {"stem_pool": [1.2, 1.3], "layer2.0.downsample": [2.1, 1.9]}
    return [
        _card("hybrid", (1, 1, 2, 2, 2), 0, 0.90, strides_learned=learned),
        _card("hybrid", (1, 1, 2, 2, 2), 1, 0.92, strides_learned=learned),
        _card("resnet18", (1, 1, 2, 2, 2), 0, 0.80),
        _card("resnet18", (1, 1, 2, 2, 2), 1, 0.84),
        _card("resnet18", (1, 1, 3, 1, 3), 0, 0.70),
        _card("resnet18", (1, 1, 3, 1, 3), 1, 0.74),
        _card("hybrid", (1, 1, 3, 1, 3), 0, 0.60, epoch=1),  # unfinished: not in the table
        _card("resnet18", (1, 1, 2, 2, 2), 0, 0.30, dataset="cifar100"),
    ]


def test_results_table_layout(cards):
    rows = report.results_table(cards, dataset="cifar10")
    assert [r["strides"] for r in rows] == ["(1, 1, 2, 2, 2)", "(1, 1, 3, 1, 3)", "mean"]
    assert list(rows[0]["cells"]) == ["resnet18", "hybrid"]  # the papers' column order
    cell = rows[0]["cells"]["resnet18"]
    assert cell["mean"] == pytest.approx(0.82) and cell["std"] == pytest.approx(0.0282842712) and cell["seeds"] == [0, 1]
    assert rows[1]["cells"]["hybrid"] is None
    mean = rows[2]["cells"]["resnet18"]
    assert mean["mean"] == pytest.approx(0.77)
    assert mean["std"] == pytest.approx(0.0282842712)  # std over seeds of the per-seed row means (0.75, 0.79)
    assert rows[2]["cells"]["hybrid"]["mean"] == pytest.approx(0.91)

    markdown = report.table_markdown(rows)
    lines = markdown.strip().splitlines()
    assert lines[0] == "| strides | ResNet-18 (strided conv) | Hybrid (DiffStride + spectral) |"
    assert lines[2] == "| (1, 1, 2, 2, 2) | 82.00 ± 2.83 | 91.00 ± 1.41 |"
    assert lines[3] == "| (1, 1, 3, 1, 3) | 72.00 ± 2.83 | – |" and lines[4].startswith("| **mean** | 77.00 ± 2.83 |")

    table = list(csv.reader(io.StringIO(report.table_csv(rows, dataset="cifar10"))))
    assert table[0] == ["dataset", "strides", "resnet18 mean", "resnet18 std", "resnet18 n", "hybrid mean", "hybrid std", "hybrid n"]
    assert table[1][:5] == ["cifar10", "(1, 1, 2, 2, 2)", "82.0000", "2.8284", "2"] and table[-1][1] == "mean"
    assert report.results_table([]) == [] and "no finished runs" in report.table_markdown([])


def test_report_files_and_figures(cards, tmp_path):
    fig = report.curves_figure(cards[:2])
    assert len(fig.data) == 2 * 4  # per run: acc/loss x train/test
    assert {t.line.dash for t in fig.data} == {"solid", "dash"}
    strides = report.stride_figure(cards[0])
    assert len(strides.data) == 4 and list(strides.data[0].y) == [1.2, 1.2]
    assert len(report.stride_figure(cards[2]).data) == 0  # resnet18: a note, no traces

    written = report.write_report(cards, tmp_path, title="t")
    text = (tmp_path / "results.md").read_text()
    assert "## CIFAR-10" in text and "## CIFAR-100" in text and "CIFAR-10 (JPEG copy)" in text
    rows = list(csv.reader((tmp_path / "results.csv").open()))
    assert rows[0][0] == "dataset" and sum(r[0] == "dataset" for r in rows) == 1
    assert {r[0] for r in rows[1:]} == {"cifar10", "cifar100"}
    assert (tmp_path / "curves_cifar10.html").is_file() and (tmp_path / "plotly.min.js").is_file()
    assert written["curves_cifar100"].is_file()
    assert sorted(p.name for p in (tmp_path / "strides").glob("*.html")) == [f"{c.name}.html" for c in cards[:2]]


# --------------------------------------------------------------------------------------
# A real tiny sweep
# --------------------------------------------------------------------------------------
def test_real_sweep_writes_table_and_skips_finished_runs(tmp_path):
    out = tmp_path / "runs"
    config = _write(tmp_path / "tiny.json", {
        "name": "tiny", "out": str(out), "variants": ["resnet18", "diffstride"], "strides": ["4,1,2,2,2"], "seeds": [0, 1],
        "epochs": 1, "args": {"limit-train": 32, "limit-test": 16, "batch-size": 16, "smoothness": 0.5, "no-progress": True},
    })
    command = [sys.executable, "-m", "training.sweep", "--config", str(config)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "4 runs, 0 finished, 4 to run" in result.stdout

    markdown = (out / "results.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| (4, 1, 2, 2, 2) |"))
    assert row.count("±") == 2  # two variants, two seeds each
    assert "| **mean** |" in markdown and "DiffStride" in markdown and "CIFAR-10 (JPEG copy)" in markdown
    table = list(csv.reader((out / "results.csv").open()))
    assert [r[1] for r in table[1:]] == ["(4, 1, 2, 2, 2)", "mean"] and table[1][4] == "2"
    curves = (out / "curves_cifar10.html").read_text()
    assert "plotly" in curves and "diffstride_cifar10_s41222_seed1" in curves
    assert sorted(p.name for p in (out / "strides").glob("*.html")) == [
        "diffstride_cifar10_s41222_seed0.html", "diffstride_cifar10_s41222_seed1.html"]

    again = subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "4 runs, 4 finished, 0 to run" in again.stdout


def test_failed_run_is_reported(tmp_path):
    config = _write(tmp_path / "bad.json", {"out": str(tmp_path / "runs"), "variants": ["resnet18"], "strides": ["1,1,1.5,2,2"],
                                            "epochs": 1, "args": {"limit-train": 32}})
    result = subprocess.run([sys.executable, "-m", "training.sweep", "--config", str(config)], cwd=REPO_ROOT, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "must be integers" in result.stderr and "1 runs failed" in result.stderr
    assert "no finished runs" in (tmp_path / "runs" / "results.md").read_text()


def test_stopped_sweep_says_how_to_continue_and_leaves_no_run_behind(tmp_path):
    """SIGTERM to the sweep while a run trains: exit 130 with one line, no traceback, and the
    run it started is stopped too (no orphan training on after the sweep has exited)."""
    import signal
    import time

    out = tmp_path / "runs"
    config = _write(tmp_path / "stop.json", {
        "name": "stop", "out": str(out), "variants": ["resnet18"], "strides": ["4,1,2,2,2"], "seeds": [0, 1],
        "epochs": 50, "args": {"limit-train": 64, "limit-test": 16, "batch-size": 16, "width": 16, "no-progress": True},
    })
    process = subprocess.Popen([sys.executable, "-m", "training.sweep", "--config", str(config)], cwd=REPO_ROOT, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    card = out / "resnet18_cifar10_s41222_seed0.json"
    deadline = time.monotonic() + 300
    while not card.exists():  # the first run has finished an epoch
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first run never finished an epoch"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("sweep stop: interrupted; finished runs are kept"), stderr
    orphans = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert orphans.stdout == "", f"training processes left running: {orphans.stdout}"
