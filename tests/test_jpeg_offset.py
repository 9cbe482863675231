"""benchmarks.jpeg_offset: bundled models on exact test images and their JPEG copies."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import jpeg_offset
from exports.parity import DEFAULT_DATA_DIR as DATA

needs_data = pytest.mark.skipif(not (DATA / jpeg_offset.EXACT_FILE).is_file(),
                                reason="needs the CIFAR-10 copies in ../shared/data")


@needs_data
def test_the_pairs_are_the_same_photographs():
    exact, jpeg, labels = jpeg_offset.load_pairs(DATA, limit=16)
    assert exact.shape == jpeg.shape == (16, 32, 32, 3) and exact.dtype == jpeg.dtype == np.uint8 and len(labels) == 16
    error = np.abs(exact.astype(int) - jpeg.astype(int)).mean(axis=(1, 2, 3))
    assert (error > 0).all() and (error < 15).all()  # JPEG changes every image, a little (README: 5.8 on average)


def test_the_paired_statistics():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    exact = np.array([0, 1, 2, 3, 4, 5, 0, 0])  # right on 6
    jpeg = np.array([0, 1, 2, 3, 0, 0, 6, 0])  # right on 5: images 4, 5 only exact; 6 only JPEG
    r = jpeg_offset.compare(exact, jpeg, labels)
    assert (r["exact_acc"], r["jpeg_acc"], r["exact_only"], r["jpeg_only"]) == (0.75, 0.625, 2, 1)
    assert r["difference"] == pytest.approx(0.125) and r["agreement"] == pytest.approx(5 / 8)
    assert r["difference_se"] == pytest.approx(np.sqrt(3 - 1 / 8) / 8)


@needs_data
def test_command_on_the_bundled_models(tmp_path, capsys):
    out = tmp_path / "offset.md"
    assert jpeg_offset.main(["--models", "resnet18,spectral", "--limit", "24", "--markdown", str(out)]) == 0
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split(" | ")[0] for row in rows] == ["| resnet18", "| spectral"] and "24 image pairs" in table
    assert table in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert jpeg_offset.main(["--models-dir", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert jpeg_offset.main(["--models", "nope", "--data-dir", str(tmp_path)]) == 2
    assert "unknown models ['nope']" in capsys.readouterr().err
    assert jpeg_offset.main(["--models", "resnet18", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks cifar10_partial_test.npz, cifar10_test_jpeg.npz" in err
