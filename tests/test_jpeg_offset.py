"""benchmarks.jpeg_offset: bundled models on exact test images and their JPEG copies."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import jpeg_offset
from exports.parity import DEFAULT_DATA_DIR as DATA
from serving.paths import BUNDLED_MODELS_DIR, REPO_ROOT

needs_data = pytest.mark.skipif(not (DATA / jpeg_offset.EXACT_FILE).is_file() or not (DATA / jpeg_offset.JPEG_FILE).is_file(),
                                reason="needs the CIFAR-10 copies in ../shared/data")
needs_models = pytest.mark.skipif(not (BUNDLED_MODELS_DIR / "manifest.json").is_file(),
                                  reason="needs the bundled models")


@needs_data
def test_the_pairs_are_the_same_photographs():
    exact, jpeg, labels = jpeg_offset.load_pairs(DATA, limit=16)
    assert exact.shape == jpeg.shape == (16, 32, 32, 3) and exact.dtype == jpeg.dtype == np.uint8 and len(labels) == 16
    error = np.abs(exact.astype(int) - jpeg.astype(int)).mean(axis=(1, 2, 3))
    assert (error > 0).all() and (error < 15).all()  # JPEG changes every image, a little (README: 5.8 on average)
    # a mismatched pair would be far off: image k's JPEG is much closer to image k than to image k+1
    shifted = np.abs(exact[1:].astype(int) - jpeg[:-1].astype(int)).mean(axis=(1, 2, 3))
    assert (shifted > 2 * error[:-1]).all()


def test_the_paired_statistics():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    exact = np.array([0, 1, 2, 3, 4, 5, 0, 0])  # right on 6
    jpeg = np.array([0, 1, 2, 3, 0, 0, 6, 0])  # right on 5: images 4, 5 only exact; 6 only JPEG
    r = jpeg_offset.compare(exact, jpeg, labels)
    assert (r["exact_acc"], r["jpeg_acc"], r["exact_only"], r["jpeg_only"]) == (0.75, 0.625, 2, 1)
    assert (r["right_exact"], r["right_jpeg"], r["same_top1"]) == (6, 5, 5)
    assert r["difference"] == pytest.approx(0.125) and r["agreement"] == pytest.approx(5 / 8)
    assert r["difference_se"] == pytest.approx(np.sqrt(3 - 1 / 8) / 8)
    assert r["exact_se"] == pytest.approx(np.sqrt(0.75 * 0.25 / 8))
    same = jpeg_offset.compare(exact, exact, labels)  # identical predictions: no difference, no spread
    assert (same["difference"], same["difference_se"], same["agreement"]) == (0.0, 0.0, 1.0)


def _consistent(r: dict, n: int) -> None:
    """Every figure of a row follows from its counts."""
    assert r["images"] == n
    assert r["exact_acc"] == pytest.approx(r["right_exact"] / n) and r["jpeg_acc"] == pytest.approx(r["right_jpeg"] / n)
    b, c = r["exact_only"], r["jpeg_only"]
    assert r["right_exact"] - r["right_jpeg"] == b - c  # the concordant images cancel
    assert r["difference"] == pytest.approx(r["exact_acc"] - r["jpeg_acc"]) == pytest.approx((b - c) / n)
    assert r["difference_se"] == pytest.approx(math.sqrt(b + c - (b - c) ** 2 / n) / n)
    for acc, se in ((r["exact_acc"], r["exact_se"]), (r["jpeg_acc"], r["jpeg_se"])):
        assert se == pytest.approx(math.sqrt(acc * (1 - acc) / n))
    assert r["agreement"] == pytest.approx(r["same_top1"] / n)
    both_right = r["right_exact"] - b
    assert both_right <= r["same_top1"] <= n - b - c  # right on both -> same class; right on one only -> different


@needs_data
@needs_models
def test_command_on_the_bundled_models(tmp_path, capsys):
    out, numbers = tmp_path / "offset.md", tmp_path / "offset.json"
    argv = ["--models", "resnet18,spectral", "--limit", "24", "--threads", "1", "--markdown", str(out), "--json", str(numbers)]
    assert jpeg_offset.main(argv) == 0
    table = out.read_text()
    assert table in capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split(" | ")[0] for row in rows] == ["| resnet18", "| spectral"] and "24 image pairs" in table
    data = json.loads(numbers.read_text())
    assert data["images"] == 24 and list(data["models"]) == ["resnet18", "spectral"]
    assert data["command"].startswith("python -m benchmarks.jpeg_offset --models resnet18,spectral --limit 24")
    assert data["cpu"] and data["cpu"] in table and f"onnxruntime {data['onnxruntime']}" in table
    assert f"`{data['command']}`" in table
    for row, r in zip(rows, data["models"].values()):
        _consistent(r, 24)
        assert r["right_exact"] >= 12 and r["agreement"] >= 0.5  # trained models: far above chance (10 %)
        cells = row.split(" | ")
        assert cells[1] == f"{100 * r['exact_acc']:.1f} ± {100 * r['exact_se']:.1f} %"
        assert cells[4] == f"{r['exact_only']} / {r['jpeg_only']}"
    assert not list(tmp_path.glob(".*"))  # the atomic writes left no temporary files


def _one_line_error(capsys, argv: list[str], text: str) -> None:
    assert jpeg_offset.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert text in captured.err


@needs_models
def test_bad_input_is_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["--models-dir", str(tmp_path)], "no manifest.json")  # an empty folder
    _one_line_error(capsys, ["--models-dir", str(tmp_path / "absent")], "is not a folder")
    (tmp_path / "manifest.json").write_text('{"format": 1, "models": []}')
    _one_line_error(capsys, ["--models-dir", str(tmp_path)], "lists no models")
    _one_line_error(capsys, ["--models", "nope", "--data-dir", str(tmp_path)], "unknown models ['nope']")
    _one_line_error(capsys, ["--models", "resnet18", "--data-dir", str(tmp_path)],
                    "lacks cifar10_partial_test.npz, cifar10_test_jpeg.npz")
    _one_line_error(capsys, ["--models", "resnet18", "--data-dir", str(tmp_path / "absent")], "is not a folder")
    _one_line_error(capsys, ["--limit", "0"], "--limit must be at least 1")
    np.savez(tmp_path / jpeg_offset.EXACT_FILE, x=np.zeros((2, 32, 32, 3), np.uint8))  # no labels
    (tmp_path / jpeg_offset.JPEG_FILE).write_bytes(b"not an npz")
    _one_line_error(capsys, ["--models", "resnet18", "--data-dir", str(tmp_path)], "cannot read the test images")


def test_command_line_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.jpeg_offset", "--models-dir", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1
    assert "no manifest.json" in result.stderr and "Traceback" not in result.stderr


def test_no_torch():
    code = "import sys, benchmarks.jpeg_offset; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, timeout=60).returncode == 0
