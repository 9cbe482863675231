"""gpu_window.prestudy: the CPU ranking of training settings, end to end at toy sizes."""
from __future__ import annotations

import json

import pytest

from exports.parity import DEFAULT_DATA_DIR as DATA
from gpu_window import prestudy as protocol_prestudy

needs_data = pytest.mark.skipif(not (DATA / "cifar10_test_jpeg.npz").is_file(),
                                reason="needs the CIFAR-10 copy in ../shared/data")


@needs_data
def test_ranks_settings_written_as_the_gpu_probe_writes_them(tmp_path, capsys):
    out = tmp_path / "prestudy.md"
    argv = ["--width", "4", "--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--batch-size", "32",
            "--points", "resnet18", "resnet18:lr=0.01,grad-clip=1", "--seeds", "0", "1", "--data-dir", str(DATA),
            "--markdown", str(out)]
    assert protocol_prestudy.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["point"], r["seed"]) for r in rows] == [("resnet18", 0), ("resnet18:lr=0.01,grad-clip=1", 0),
                                                       ("resnet18", 1), ("resnet18:lr=0.01,grad-clip=1", 1)]
    assert all(0 <= r["test_acc"] <= 1 for r in rows)
    table = out.read_text()
    assert "| `resnet18` |" in table and "| `resnet18:lr=0.01,grad-clip=1` |" in table
    mean = 100 * (rows[0]["test_acc"] + rows[2]["test_acc"]) / 2
    assert f"{mean:.2f} %" in table and "width 4, first 64 training / 32 test images" in table
    assert sorted(int(line.rsplit("|", 2)[1]) for line in table.splitlines() if line.startswith("| `")) == [1, 2]


def test_bad_settings_are_one_line(capsys):
    assert protocol_prestudy.main(["--points", "resnet18:lr"]) == 2
    assert "expected VARIANT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        protocol_prestudy.main(["--width", "0"])
