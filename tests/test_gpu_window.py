"""The GPU-window runbook rehearsed on the CPU: prepare/restore, models -> ingest, extra (bench + grid), report.

The rehearsal runs the same code as a device call (``python -m gpu_window``) at toy sizes:
one model variant, 64 training images, one epoch, stem stride 4 (small maps), then
``exports.ingest`` into a temporary models folder (never the real ``exports/models``).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch

from exports import compact, ingest
from gpu_window import __main__ as runbook
from gpu_window import plan, probe, travel
from gpu_window.record import WindowError, work_dir
from serving.cards import RunCard
from serving.manifest import read_manifest
from serving.paths import REPO_ROOT
from training import sweep

DATA = REPO_ROOT.parent / "shared" / "data"
MiB = 1 << 20

needs_data = pytest.mark.skipif(not all((DATA / f).is_file() for f in travel.DATA_FILES),
                                reason="the CIFAR-10 JPEG copy (../shared/data) is not here")


def _tiny_protocol(tmp_path: Path) -> Path:
    """The protocol file format at toy sizes (same keys as training/sweeps/short_cifar10.json)."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({
        "name": "table1", "out": str(tmp_path / "results"), "variants": ["resnet18", "hybrid"],
        "strides": ["4,1,2,2,2", "4,1,2,2,3"], "seeds": [0, 1], "datasets": ["cifar10"], "epochs": 1,
        "args": {"limit-train": 64, "limit-test": 32, "batch-size": 16, "lr": 0.05, "schedule": "onecycle",
                 "grad-clip": 2, "smoothness": 0.5, "threads": 1, "no-progress": True},
    }))
    return path


# --------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------
def test_protocol_is_table1_grid():
    config = sweep.load_config(plan.PROTOCOL)
    import hybrid_model

    assert config.out == "results/table1" and config.seeds == (0, 1, 2)
    assert [tuple(s) for s in config.strides] == [tuple(map(float, s)) for s in hybrid_model.PAPER_STRIDES]
    assert set(hybrid_model.PAPER_VARIANTS) <= set(config.variants)  # the window trains the paper variants
    assert config.args["schedule"] == "onecycle" and "epochs" not in config.args


def test_compact_roundtrip_and_size(tmp_path):
    model = __import__("hybrid_model").build_model("hybrid", (1, 1, 2, 2, 2), 10)
    state = model.state_dict()
    path = compact.write_compact(tmp_path / "m.int8.safetensors", state, {"variant": "hybrid", "strides": [1, 1, 2, 2, 2]})
    back, card = compact.read_compact(path)
    assert card["variant"] == "hybrid" and set(back) == set(state)
    for key, value in state.items():
        if value.is_floating_point() and value.dim() >= 2 and value.numel() >= compact.MIN_ELEMENTS:
            bound = value.abs().flatten(1).amax(1) / 254 + 1e-7  # half a quantisation step per channel
            assert ((back[key] - value).abs().flatten(1).amax(1) <= bound).all(), key
        else:
            assert torch.equal(back[key], value), key  # BN, biases, learned strides: exact
    # one file per model within the 16 MiB return limit, five within 64 MiB
    assert path.stat().st_size <= 16 * MiB and 5 * path.stat().st_size + MiB <= 64 * MiB
    bad = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(bad))
    with pytest.raises(ValueError, match="not an int8 window checkpoint"):
        compact.read_compact(bad)


def test_out_limits(tmp_path):
    assert travel.check_out_limits(tmp_path)["ok"]
    (tmp_path / "big.bin").write_bytes(b"\0" * (16 * MiB + 1))
    report = travel.check_out_limits(tmp_path)
    assert not report["ok"] and "big.bin" in report["problems"][0]
    (tmp_path / "big.bin").unlink()
    for i in range(9):
        (tmp_path / f"f{i}").write_text("x")
    assert "9 files" in travel.check_out_limits(tmp_path)["problems"][0]


def test_grid_order_and_coverage(tmp_path):
    protocol = sweep.load_config(_tiny_protocol(tmp_path))
    done = tmp_path / "results"
    todo = plan.plan_grid(protocol, done)
    assert [(r.seed, r.variant, r.strides[-1]) for r in todo][:5] == [
        (0, "resnet18", 2), (0, "hybrid", 2), (0, "resnet18", 3), (0, "hybrid", 3), (1, "resnet18", 2)]
    from serving.files import atomic_write_json

    def card(run, **changes):
        """A finished card of ``run`` trained with the protocol's settings (then ``changes``)."""
        config = sweep.protocol_config(run, protocol)
        return {"name": run.name, "variant": run.variant, "strides": list(run.strides), "seed": run.seed, "epoch": 1,
                "epochs": 1, "dataset": "cifar10", "config": config} | changes

    atomic_write_json(done / f"{todo[0].name}.json", card(todo[0]))
    atomic_write_json(done / f"{todo[1].name}.json", card(todo[1], off_protocol=True))
    # other settings than the protocol's (an earlier protocol's card): not done either
    other = dict(sweep.protocol_config(todo[2], protocol), lr=0.123)
    atomic_write_json(done / f"{todo[2].name}.json", card(todo[2], config=other))
    left = plan.plan_grid(protocol, done)
    assert todo[0].name not in {r.name for r in left} and left[0].name == todo[1].name  # off-protocol: re-run
    assert todo[2].name in {r.name for r in left}
    # a later call of the same window also reads the earlier call's (not yet ingested) cards
    earlier = tmp_path / "earlier-call"
    atomic_write_json(earlier / f"{todo[1].name}.json", card(todo[1]))
    both = plan.plan_grid(protocol, [done, earlier])
    assert [r.name for r in both] == [r.name for r in left[1:]]
    cards = [RunCard.from_dict(json.loads(p.read_text())) for p in done.glob("*.json")]
    assert sweep.coverage(protocol, cards) == "1 / 4 points, seed 0; 0 / 4, seed 1"


def test_grid_skips_points_an_earlier_call_of_the_window_finished(tmp_path, monkeypatch):
    """By default ``grid`` also reads the work folders earlier calls left on the warm machine."""
    from serving.files import atomic_write_json

    monkeypatch.setenv("GPU_WINDOW_WORK", str(tmp_path / "work"))
    protocol = sweep.load_config(_tiny_protocol(tmp_path))
    dirs = plan.grid_done_dirs(protocol)
    assert work_dir("models") in dirs and work_dir("grid") in dirs
    todo = plan.plan_grid(protocol, dirs)
    first = todo[0]
    card = {"name": first.name, "variant": first.variant, "strides": list(first.strides), "seed": first.seed,
            "epoch": 1, "epochs": 1, "dataset": "cifar10", "config": sweep.protocol_config(first, protocol)}
    atomic_write_json(work_dir("models") / f"{first.name}.json", card)
    assert [r.name for r in plan.plan_grid(protocol, dirs)] == [r.name for r in todo[1:]]


def test_readme_block_and_errors(tmp_path, capsys):
    assert sweep.replace_block("a\n<!-- t:start -->\nold\n<!-- t:end -->\nb", "t", "new") == "a\n<!-- t:start -->\nnew\n<!-- t:end -->\nb"
    with pytest.raises(sweep.ConfigError, match="markers"):
        sweep.replace_block("no markers", "t", "x")
    assert ingest.main([str(tmp_path)]) == 2
    assert "no window.json" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert runbook.main(["models", "--budget", "10", "--out", str(tmp_path / "o")]) == 2
        assert "no CUDA device" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# What travels
# --------------------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@needs_data
def test_prepare_and_restore_in_a_clone(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(repo)], check=True)
    # The bundled models (57 MB of int8 files) and the carried JPEG copy (56 MB) together are
    # over the limit: prepare must leave the models behind.
    data_bytes = sum(p.stat().st_size for p in DATA.glob("cifar10_*jpeg*.npz"))
    assert travel.travel_bytes(repo, []) + data_bytes > 64 * MiB
    result = travel.prepare(repo, DATA, log=lambda _: None)
    assert result["travel_bytes"] <= travel.TREE_LIMIT
    assert travel.travel_bytes(repo, ["data"]) == result["travel_bytes"]
    assert not _git(repo, "ls-files", "exports/models") and (repo / "exports/models/manifest.json").is_file()
    assert _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == travel.SCRATCH_BRANCH
    assert not _git(repo, "status", "--porcelain")  # models ignored, data ignored: nothing else travels
    travel.restore(repo, log=lambda _: None)
    assert _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() != travel.SCRATCH_BRANCH
    assert "exports/models/manifest.json" in _git(repo, "ls-files", "exports/models")
    assert not _git(repo, "status", "--porcelain") and travel.SCRATCH_BRANCH not in _git(repo, "branch")
    with pytest.raises(WindowError, match="nothing to restore"):
        travel.restore(repo)


# --------------------------------------------------------------------------------------
# The rehearsal
# --------------------------------------------------------------------------------------
@needs_data
@pytest.mark.slow
def test_rehearsal_models_ingest_grid_report(tmp_path, monkeypatch):
    from serving.registry import ModelRegistry

    monkeypatch.setenv("GPU_WINDOW_WORK", str(tmp_path / "work"))
    protocol = _tiny_protocol(tmp_path)
    common = ["--protocol", str(protocol), "--data-dir", str(DATA), "--device", "cpu"]

    # call 1: the dashboard models (one of the five, at toy sizes: the hybrid, the one that diverged)
    out1 = tmp_path / "out1"
    assert runbook.main(["models", "--budget", "500", "--out", str(out1), "--strides", "4,1,2,2,2",
                            "--variants", "hybrid", "--profile-seconds", "60", *common]) == 0
    record = json.loads((out1 / "window.json").read_text())
    assert record["profile"]["results"][0]["rows"]  # the next window's call 1 profiles first (issue 21)
    assert set(record["smoke"]) == {"hybrid (4.0, 1.0, 2.0, 2.0, 2.0)"}
    assert [r["status"] for r in record["runs"]] == ["finished"] and record["estimate"]["epochs"] == 1
    for run in record["runs"]:
        card = run["card"]
        assert card["compression"]["test_images"] == 32 and card["torch"] == torch.__version__
        assert "CPU" in card["hardware"] and card["train_wall_seconds"] > 0 and len(card["history"]) == 1
    limits = travel.check_out_limits(out1)
    assert limits["ok"] and len(limits["files"]) == 5  # window.json, window.log, profile.json/.md, the model
    model_bytes = max(size for name, size in limits["files"] if name.endswith(".int8.safetensors"))
    other_bytes = sum(size for name, size in limits["files"] if not name.endswith(".int8.safetensors"))
    assert 5 * model_bytes + other_bytes <= 64 * MiB  # bytes: five models fit one call (files: three with the profile)

    # back here: ingest into a temporary models folder
    models, results = tmp_path / "models", tmp_path / "results"
    assert ingest.main([str(out1), "--models-dir", str(models), "--protocol", str(protocol), "--data-dir", str(DATA),
                        "--limit-test", "32", "--robustness-scale", "0.01", "--no-docs"]) == 0
    registry = ModelRegistry(models)
    assert registry.names() == ["hybrid"] and not registry.skipped
    lab = json.loads((models / "robustness.json").read_text())  # the robustness lab ran on the new model
    assert list(lab["models"]) == ["hybrid"] and lab["plan"]["images"] == 15
    assert lab["models"]["hybrid"]["sha256"] == next(r["sha256"] for r in read_manifest(models)["models"])
    for name in registry.names():
        entry = next(e for e in registry.entries if e.name == name)
        bundled = entry.card.bundled_accuracy
        assert bundled["test_images"] == 32 and entry.test_acc == bundled["test_acc"]
        assert entry.card.compression["scheme"] == compact.SCHEME
        assert registry.get(name).predict(_image()).top_k
    assert [p.name for p in results.glob("*.json")] == ["hybrid_cifar10_s41222_seed0.json"]

    # call 2: benchmarks (toy sizes) then the next undone grid point; cards only come back
    out2 = tmp_path / "out2"
    assert runbook.main(["extra", "--budget", "500", "--out", str(out2), "--done", str(results), "--max-points", "1",
                            "--bench-seconds", "200", *common]) == 0
    record = json.loads((out2 / "window.json").read_text())
    assert [s["name"] for s in record["steps"]] == ["layers", "throughput"]
    assert record["steps"][1]["result"]["results"][0]["achieved_tflops"] > 0
    assert [(r["name"], r["status"]) for r in record["runs"]] == [("resnet18_cifar10_s41222_seed0", "finished")]
    assert sorted(p.name for p in out2.iterdir()) == ["window.json", "window.log"]
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- table1:start -->\n<!-- table1:end -->\n")
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("<!-- gpu-window-bench:start -->\n<!-- gpu-window-bench:end -->\n")
    assert ingest.main([str(out2), "--models-dir", str(models), "--protocol", str(protocol), "--readme", str(readme),
                        "--results-md", str(results_md), "--limit-test", "32"]) == 0
    text = readme.read_text()
    assert "Coverage: 2 / 4 points, seed 0; 0 / 4, seed 1" in text and "(n=1)" in text
    assert (results / "results.md").is_file() and (results / "curves_cifar10.html").is_file()
    bench = results_md.read_text()
    assert "| diffstride | cpu |" in bench and "achieved TFLOP/s" in bench


def _image():
    from PIL import Image

    return Image.new("RGB", (32, 32), (120, 30, 200))


def test_onnx_accuracy_of_a_bundled_file_matches_the_serving_runtime():
    """``ingest --precision fp16`` scores the bundled file with ``onnx_accuracy``: the same
    answers as the runtime the dashboard serves with, image by image."""
    import numpy as np
    from PIL import Image

    from serving.registry import ModelRegistry
    from training.data import load_cifar

    data = load_cifar("cifar10", str(DATA), limit_train=1, limit_test=48)
    images, labels = data.x_test.numpy(), data.y_test.numpy()
    registry = ModelRegistry(REPO_ROOT / "exports" / "models")
    entry = next(e for e in registry.entries if e.name == "resnet18")
    model = registry.get("resnet18")
    served = np.array([model.card.labels().index(model.predict(Image.fromarray(image)).label) for image in images])
    acc = ingest.onnx_accuracy(REPO_ROOT / "exports" / "models" / entry.file, images, labels, entry.card.normalize)
    assert acc == float(np.mean(served == labels)) and acc > 0.5


# --------------------------------------------------------------------------------------
# The protocol probe
# --------------------------------------------------------------------------------------
def _applied(ns, flag: str, value) -> bool:
    """Whether the resolved config has ``flag=value`` (``no-X=true``: X off; ``X=false``: X left off)."""
    if flag.startswith("no-") and isinstance(value, bool):
        return getattr(ns, flag[3:].replace("-", "_")) is (not value)
    field = getattr(ns, flag.replace("-", "_"))
    return not field if value is False else field == value


def test_probe_points_names_and_verdict():
    assert probe.parse_probe_point("resnet18") == ("resnet18", {})
    assert probe.parse_probe_point("hybrid:grad-clip=0,lr=0.4,nesterov=false,schedule=onecycle") == (
        "hybrid", {"grad-clip": 0, "lr": 0.4, "nesterov": False, "schedule": "onecycle"})
    with pytest.raises(WindowError, match="expected VARIANT"):
        probe.parse_probe_point("resnet18:lr")
    assert probe.probe_name("resnet18", {}) == "probe_resnet18_base"
    assert probe.probe_name("resnet18", {"grad-clip": 0, "lr": 0.4}) == "probe_resnet18_grad-clip0_lr0p4"
    assert len({probe.probe_name(*probe.parse_probe_point(p)) for p in probe.PROBE_POINTS}) == len(
        probe.PROBE_POINTS)
    # the default points are valid settings of the real protocol, applied as written (the device call must not fail on them)
    real = sweep.load_config(plan.PROTOCOL)
    for text in probe.PROBE_POINTS:
        variant, changes = probe.parse_probe_point(text)
        _, ns = plan._train_namespace(variant, (1, 1, 2, 2, 2), 0, real.epochs,
                                            dataclasses.replace(real, args={**real.args, **changes}))
        assert ns.variant == variant and ns.epochs == changes.get("epochs", 15) and ns.batch_size == 512
        assert ns.warmup == 3 and ns.lr == changes.get("lr", 0.4)  # a check's own epochs keep the real warm-up
        assert all(_applied(ns, key, value) for key, value in changes.items()), text

    protocol = {"lr": 0.2, "grad-clip": 1}

    def row(changes, acc):
        return {"changes": changes, "args": {**protocol, **changes}, "test_acc": acc}

    base = row({}, 0.880)
    # the best clipped setting wins when it beats the protocol by more than the margin
    verdict = probe.choose_setting([base, row({"lr": 0.4}, 0.893), row({"grad-clip": 5}, 0.889)], protocol)
    assert verdict["changes"] == {"lr": 0.4} and verdict["args"] == {"lr": 0.4, "grad-clip": 1}
    # an unclipped run is measured but never chosen (the hybrid diverges without clipping)
    verdict = probe.choose_setting([base, row({"grad-clip": 0}, 0.93), row({"grad-clip": 5}, 0.884)], protocol)
    assert verdict["changes"] == {} and verdict["args"] == protocol and "by more than 0.005" in verdict["reason"]
    # within the same seed's spread: the protocol stays; unfinished runs (None) are ignored
    assert probe.choose_setting([base, row({"lr": 0.4}, 0.884), row({"grad-clip": 5}, None)], protocol)["changes"] == {}
    assert "no finished run of the protocol" in probe.choose_setting([row({"lr": 0.4}, 0.9)], protocol)["reason"]


def test_stability_checks_and_their_verdict():
    """A probe's short run of the fragile variant under the protocol: a failed check replaces
    the verdict's clip and lr with v1's (stable in the first window); a passed one changes nothing."""
    def card(losses, test_loss=0.9, test_acc=0.7, epochs=4):
        history = [{"epoch": i + 1, "train_loss": loss} for i, loss in enumerate(losses)]
        return RunCard.from_dict({"name": "probe_hybrid_epochs4", "variant": "hybrid", "num_classes": 10, "epoch": len(losses),
                                  "epochs": epochs, "history": history, "test_loss": test_loss, "test_acc": test_acc})

    assert probe.trained_stably(card([2.0, 1.6, 1.4, 1.2]))
    assert not probe.trained_stably(card([2.0, 5.1, 2.2, 1.9]))  # an epoch above 2 ln 10 = 4.6
    assert not probe.trained_stably(card([2.0, 1.9], epochs=4))  # unfinished
    assert not probe.trained_stably(card([2.0, 1.9, 1.8, 1.7], test_loss=12.0))
    assert not probe.trained_stably(card([2.0, 1.9, 1.8, 1.7], test_acc=0.3))

    protocol = {"lr": 0.4, "grad-clip": 5, "label-smoothing": 0.2}
    verdict = {"args": dict(protocol, **{"label-smoothing": 0.1}), "changes": {"label-smoothing": 0.1}, "reason": "r"}
    check = {"name": "probe_hybrid_epochs4", "changes": {"epochs": 4}, "stable": True}
    assert probe.apply_checks(verdict, [check], protocol) is verdict
    assert probe.apply_checks(verdict, [dict(check, changes={"epochs": 4, "lr": 0.8}, stable=False)], protocol) is verdict
    safe = probe.apply_checks(verdict, [dict(check, stable=False)], protocol)
    assert safe["args"] == {"lr": 0.2, "grad-clip": 1, "label-smoothing": 0.1} == {**protocol, **safe["changes"]}
    assert "probe_hybrid_epochs4 did not train stably" in safe["reason"]
    # a point with epochs of its own (the check) costs the same whatever the others get
    assert plan._own_epochs(sweep.Run("hybrid", (1,) * 5, 0, "cifar10", "c"), {"c": sweep.SweepConfig(name="c", epochs=15, args={"epochs": 4})}) == 4
    assert plan._own_epochs(sweep.Run("hybrid", (1,) * 5, 0, "cifar10", "c"), None) is None


@needs_data
def test_rehearsal_probe_then_models_with_its_verdict(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPU_WINDOW_WORK", str(tmp_path / "work"))
    protocol = _tiny_protocol(tmp_path)
    config = json.loads(protocol.read_text())
    config["args"]["width"] = 16  # toy sizes: a quarter-width ResNet-18
    protocol.write_text(json.dumps(config))
    common = ["--protocol", str(protocol), "--data-dir", str(DATA), "--device", "cpu", "--strides", "4,1,2,2,2"]

    # call 1: the probe (the protocol and two changes of it)
    out1 = tmp_path / "out1"
    assert runbook.main(["probe", "--budget", "300", "--out", str(out1), "--points", "resnet18",
                            "resnet18:lr=0.2", "resnet18:grad-clip=0", *common]) == 0
    record = json.loads((out1 / "window.json").read_text())
    names = ["probe_resnet18_base", "probe_resnet18_lr0p2", "probe_resnet18_grad-clip0"]
    assert [(r["name"], r["status"]) for r in record["runs"]] == [(name, "finished") for name in names]
    cards = [RunCard.from_dict(r["card"]) for r in record["runs"]]
    assert [(c.config["lr"], c.config["grad_clip"], c.options["width"]) for c in cards] == [(0.05, 2, 16), (0.2, 2, 16), (0.05, 0, 16)]
    assert all(c.off_protocol for c in cards)  # settings under test never fill Table 1
    # cards and the profiler's compact table only come back (no trace file)
    assert sorted(p.name for p in out1.iterdir()) == ["profile.json", "profile.md", "window.json", "window.log"]
    assert record["profile"] and "resnet18" in (out1 / "profile.md").read_text()
    best = json.loads((tmp_path / "work" / "probe" / "best.json").read_text())
    assert best == record["probe"]["best"] and best["variant"] == "resnet18" and best["epochs"] == 1
    rows = {r["name"]: r["test_acc"] for r in record["probe"]["rows"]}
    assert best == dict(probe.choose_setting(record["probe"]["rows"], config["args"]), variant="resnet18", epochs=1,
                        protocol_epochs=1)
    assert rows == {c.name: c.test_acc for c in cards} and best["changes"] in ({}, {"lr": 0.2})  # never unclipped

    # call 2 of the same window: the five models (here one) with the verdict's args
    best_path = tmp_path / "work" / "probe" / "best.json"
    chosen = dict(best, args={**config["args"], "lr": 0.1}, changes={"lr": 0.1})  # a verdict that changes lr
    best_path.write_text(json.dumps(chosen))
    out2 = tmp_path / "out2"
    assert runbook.main(["models", "--budget", "300", "--out", str(out2), "--variants", "resnet18",
                            "--args-from", str(best_path), *common]) == 0
    record = json.loads((out2 / "window.json").read_text())
    assert record["protocol"]["args"]["lr"] == 0.1 and record["protocol"]["args_from"] == str(best_path)
    (run,) = record["runs"]
    assert run["status"] == "finished" and run["card"]["config"]["lr"] == 0.1 and not run["card"]["off_protocol"]
    # the cards' settings decide: on the protocol only once the protocol file says lr 0.1
    card = RunCard.from_dict(run["card"])
    assert not sweep.on_protocol(card, sweep.load_config(protocol))
    assert sweep.on_protocol(card, dataclasses.replace(sweep.load_config(protocol), args={**config["args"], "lr": 0.1}))

    # ingest keeps a probe's cards out of the results folder
    written = ingest.collect_cards(ingest.read_windows([out1]), tmp_path / "results", log=lambda _: None)
    assert written == [] and not (tmp_path / "results").exists()

    # bad input: one line each, exit 2
    capsys.readouterr()
    assert runbook.main(["models", "--budget", "60", "--out", str(tmp_path / "o"), "--args-from", str(tmp_path / "none.json"),
                            *common]) == 2
    assert "needs a probe call earlier" in capsys.readouterr().err
    assert runbook.main(["probe", "--budget", "60", "--out", str(tmp_path / "o"), "--points", "resnet18:foo=1", *common]) == 2
    assert "unknown train flag --foo" in capsys.readouterr().err
    # five models and the profile would be nine files: one more than a call returns
    assert runbook.main(["models", "--budget", "60", "--out", str(tmp_path / "o5"), "--profile-seconds", "30",
                            *common]) == 2
    assert "9 files; a call returns 8: profile with at most 4 models" in capsys.readouterr().err
