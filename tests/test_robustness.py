"""The robustness lab's metrics, proven on constructed ONNX models and real CIFAR images.

* an exactly shift-invariant graph (global max pooling, then a linear layer) scores 100 %
  circular-shift consistency; a graph that reads positions (a linear layer on the flattened
  image) does not;
* transforms: shifts move content (and back), filters keep or remove the frequencies they say;
* the sampling plan is deterministic for a seed and the same for every model;
* counts carry honest intervals, and paired differences too (coverage simulated); the
  results file keeps per-trial outcomes that match its counts, is written atomically, read
  back, and a model whose file changed (or that was measured under another plan) drops out.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from robustness import report
from robustness.corruptions import CORRUPTIONS
from robustness.stats import Count, paired_difference, pooled
from robustness.transforms import TransformError, filtered, high_pass, low_pass, shift
from serving.cards import embed_card
from serving.cifar_data import first_test_images
from serving.files import file_sha256
from serving.manifest import update_manifest
from serving.paths import BUNDLED_MODELS_DIR as BUNDLED
from serving.runtime import OnnxModel


# --------------------------------------------------------------------------------------
# Constructed models
# --------------------------------------------------------------------------------------
def constructed_model(path: Path, name: str, position_reading: bool, seed: int = 0) -> Path:
    """A 10-class ONNX model with a valid card: ``GlobalMaxPool -> MatMul`` (exactly invariant to
    circular shifts: a maximum does not depend on the order of its inputs) or, with
    ``position_reading``, ``Flatten -> MatMul`` (every pixel has its own weight)."""
    rng = np.random.default_rng(seed)
    width = 3 * 32 * 32 if position_reading else 3
    weight = numpy_helper.from_array(rng.standard_normal((width, 10)).astype(np.float32), "weight")
    shape = numpy_helper.from_array(np.array([-1, width], np.int64), "shape")
    nodes = ([helper.make_node("Reshape", ["input", "shape"], ["flat"])] if position_reading else
             [helper.make_node("GlobalMaxPool", ["input"], ["pooled"]),
              helper.make_node("Reshape", ["pooled", "shape"], ["flat"])])
    nodes.append(helper.make_node("MatMul", ["flat", "weight"], ["logits"]))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
                              initializer=[weight, shape])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    card = OnnxModel(BUNDLED / "resnet18.int8.onnx").card.to_dict()
    card.update(name=name, outputs=[{"name": "logits", "shape": ["batch", 10]}], test_acc=None)
    embed_card(proto, card)
    onnx.save(proto, path)
    update_manifest(path, card, file_sha256(path))
    return path


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lab-models")
    constructed_model(folder / "invariant.onnx", "invariant", position_reading=False)
    constructed_model(folder / "positional.onnx", "positional", position_reading=True)
    return folder


@pytest.fixture(scope="module")
def test_images() -> tuple[np.ndarray, np.ndarray]:
    images, labels, _ = first_test_images(600, sources=("jpeg",))
    return images, labels


TINY = report.Plan(images=160, corruption_images=10, filter_images=10, radii=(4.0, 8.0))


def test_a_shift_invariant_graph_is_fully_consistent_and_a_positional_one_is_not(lab_dir, test_images):
    images, labels = test_images
    invariant = report.evaluate_model(OnnxModel(lab_dir / "invariant.onnx"), images, labels, TINY)
    positional = report.evaluate_model(OnnxModel(lab_dir / "positional.onnx"), images, labels, TINY)
    assert invariant["shift"]["circular"]["consistency"] == [160, 160]
    hits, n = positional["shift"]["circular"]["consistency"]
    assert n == 160 and hits < 0.9 * n, positional["shift"]["circular"]
    # Zero padding removes content, so even the invariant graph can change its answer; never more often
    # than the positional one, on these images.
    assert invariant["shift"]["zero"]["consistency"][0] >= positional["shift"]["zero"]["consistency"][0]
    # Accuracy per distance: 0 is the clean figure; the invariant graph's accuracy does not move at all.
    rows = invariant["shift"]["circular"]["by_distance"]
    assert [r[0] for r in rows] == list(range(9)) and rows[0][1:] == invariant["clean"]
    assert sum(r[2] for r in rows[1:]) == 160 and len({r[1] / r[2] for r in rows[1:]} | {rows[0][1] / 160}) >= 1
    assert invariant["shift"]["circular"]["accuracy"] == invariant["clean"]


def test_every_figure_is_a_count_and_the_plan_is_what_ran(lab_dir, test_images):
    images, labels = test_images
    figures = report.evaluate_model(OnnxModel(lab_dir / "positional.onnx"), images, labels, TINY)
    assert set(figures["corruptions"]) == set(TINY.corruptions)
    for rows in figures["corruptions"].values():
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5] and sum(r[2] for r in rows) == TINY.corruption_images
    for kind in ("low", "high"):
        assert [r[0] for r in figures["frequency"][kind]] == [4.0, 8.0]
        assert all(r[2] == TINY.filter_images for r in figures["frequency"][kind])
    assert sum(r[2] for r in figures["shift"]["zero"]["by_distance"][1:]) == TINY.images


def test_the_draw_is_deterministic_and_covers_each_distance():
    first, second = report.draw(TINY, 600), report.draw(TINY, 600)
    assert np.array_equal(first.shift_images, second.shift_images) and np.array_equal(first.offsets, second.offsets)
    distance = np.abs(first.offsets).max(axis=1)
    assert np.bincount(distance, minlength=9).tolist() == [0] + [20] * 8
    other = report.draw(report.Plan(**{**TINY.to_dict(), "radii": TINY.radii, "corruptions": TINY.corruptions, "seed": 1}), 600)
    assert not np.array_equal(first.shift_images, other.shift_images)
    # Each corruption and each filter condition has its own images (disjoint while the test set allows).
    blocks = list(first.corruption_images.values())
    assert len(np.unique(np.concatenate(blocks))) == sum(len(b) for b in blocks)
    with pytest.raises(ValueError, match="test set has 100"):
        report.draw(report.Plan(images=200), 100)
    assert sorted(map(tuple, report.ring_offsets(1).tolist())) == [
        (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def test_plan_rejects_nonsense():
    with pytest.raises(ValueError, match="images must be at least 5"):
        report.Plan(images=2)
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        report.Plan(corruptions=("rain",))
    assert report.Plan().evaluations > 0 and set(report.Plan().corruptions) == set(CORRUPTIONS)


def test_inputs_are_prepared_once_and_scored_per_model(lab_dir, test_images):
    images, labels = test_images
    inputs = report.prepare(TINY, images, labels)
    assert inputs.evaluations == TINY.evaluations and inputs.nbytes == TINY.evaluations * 32 * 32 * 3
    again = report.prepare(TINY, images, labels)  # deterministic for the seed: every model sees the same
    assert all(np.array_equal(a, b) for a, b in zip(inputs.shifted.values(), again.shifted.values()))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(inputs.corrupted["fog"], again.corrupted["fog"]))
    model = OnnxModel(lab_dir / "positional.onnx")
    scored, evaluated = report.score(model, inputs), report.evaluate_model(model, images, labels, TINY)
    assert {k: v for k, v in scored.items() if k != "seconds"} == {k: v for k, v in evaluated.items() if k != "seconds"}


def test_a_plan_sized_for_a_precision_reaches_it():
    assert report.trials_for(0.5, 0.015) > report.trials_for(0.9, 0.015) > report.trials_for(0.99, 0.015)
    for rate in (0.05, 0.385, 0.5, 0.89):
        n = report.trials_for(rate, 0.015)
        assert Count(round(rate * n), n).half_width() <= 0.015 < Count(round(rate * (n - 1)), n - 1).half_width()
    with pytest.raises(ValueError, match="half-width must be between"):
        report.trials_for(0.5, 0.0)
    # Without results every column is sized for 50 %, the widest interval.
    blind = report.plan_for(0.03)
    assert blind.images == report.trials_for(0.5, 0.03) and blind.corruption_images % 5 == 0
    assert blind.filter_images * len(blind.radii) >= report.trials_for(0.5, 0.03)
    # With results, each column is sized for its widest measured rate, moved towards 50 % by its error.
    rows = {"a": {"clean": [900, 1000], "shift": {m: {"consistency": [950, 1000]} for m in ("circular", "zero")},
                  "corruptions": {"fog": [[s, 70, 100] for s in range(1, 6)]},
                  "frequency": {"low": [[4.0, 10, 100]], "high": [[4.0, 60, 100]]}}}
    rates = report.planning_rates({"models": rows})
    assert rates["clean"] == pytest.approx(0.9 - Count(900, 1000).half_width())
    assert rates["high-pass (mean)"] == pytest.approx(0.6 - Count(60, 100).half_width())
    assert rates["low-pass (mean)"] == pytest.approx(0.1 + Count(10, 100).half_width())
    plan = report.plan_for(0.015, {"models": rows}, report.Plan(corruptions=("fog",), radii=(4.0,)))
    assert plan.images == max(report.trials_for(rates[c], 0.015) for c in ("clean", "consistency (circular)",
                                                                             "consistency (zero pad)"))
    for count, rate in ((plan.images, rates["clean"]), (plan.corruption_images, rates["corruptions (mean)"]),
                        (plan.filter_images, rates["low-pass (mean)"])):
        assert Count(round(rate * count), count).half_width() <= 0.015
    with pytest.raises(ValueError, match="more than the 10,000 of the CIFAR-10 test set"):
        report.plan_for(0.002)


# --------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------
def test_shifts(test_images):
    x = test_images[0][:4]
    assert np.array_equal(shift(shift(x, (3, -5)), (-3, 5)), x)
    moved = shift(x, (2, 3), "zero")
    assert np.array_equal(moved[:, 2:, 3:], x[:, :-2, :-3]) and not moved[:, :2].any() and not moved[:, :, :3].any()
    per_image = shift(x, np.array([[0, 0], [1, 0], [0, 1], [8, 8]]))
    assert np.array_equal(per_image[0], x[0]) and np.array_equal(per_image[3], np.roll(x[3], (8, 8), axis=(0, 1)))
    assert shift(x[0], (1, 1)).shape == (32, 32, 3)
    with pytest.raises(TransformError, match="unknown shift mode"):
        shift(x, (1, 1), "reflect")
    with pytest.raises(TransformError, match="uint8"):
        shift(x.astype(np.float32), (1, 1))


def test_filters_keep_what_they_say(test_images):
    x = test_images[0][:8]
    assert np.array_equal(low_pass(x, 32), x) and np.array_equal(high_pass(x, 0), x)  # nothing removed
    flat = low_pass(x, 0)  # only the mean colour is left
    assert np.abs(flat.astype(int) - x.reshape(8, -1, 3).mean(1).round()[:, None, None]).max() <= 1
    high = high_pass(x, 4).astype(float)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(high - high.mean(axis=(1, 2), keepdims=True), axes=(1, 2)), axes=(1, 2)))
    inner = spectrum[:, 15:18, 15:18]  # |f| <= 1.5 bins around the centre: removed, up to rounding and clipping
    assert inner.mean() < 0.02 * spectrum.mean() * 9
    smoother = [np.abs(np.diff(low_pass(x, r).astype(int), axis=2)).mean() for r in (12, 8, 4, 2)]
    assert smoother == sorted(smoother, reverse=True)  # lower radius, smoother image
    with pytest.raises(TransformError, match="radius"):
        filtered(x, -1, "low")
    with pytest.raises(TransformError, match="unknown filter"):
        filtered(x, 2, "band")


# --------------------------------------------------------------------------------------
# Counts and the results file
# --------------------------------------------------------------------------------------
def test_counts_and_intervals():
    c = Count(900, 1000)
    low, high = c.interval()
    assert low < 0.9 < high and 0.017 < c.half_width() < 0.02
    assert Count(0, 50).interval()[0] == 0 and Count(50, 50).interval()[1] == pytest.approx(1)
    assert pooled([Count(1, 2), Count(3, 4)]) == Count(4, 6)
    assert c.text() == "90.0 % ± 1.9"
    with pytest.raises(ValueError):
        Count.from_list([5, 3])


def test_paired_differences_have_honest_intervals():
    """Newcombe's paired interval covers the true difference ~95 % of the time on correlated
    models (simulated), and is built from the discordant trials only."""
    rng = np.random.default_rng(7)
    n, runs, covered, widths = 400, 2000, 0, []
    p_a, p_b = 0.85 * 0.95 + 0.15 * 0.05, 0.85 * 0.92 + 0.15 * 0.08  # flips of a shared outcome
    for _ in range(runs):
        shared = rng.random(n) < 0.85
        a, b = shared ^ (rng.random(n) < 0.05), shared ^ (rng.random(n) < 0.08)
        d = paired_difference(a, b)
        covered += d.low <= p_a - p_b <= d.high
        widths.append(d.high - d.low)
    assert 0.93 <= covered / runs <= 0.97
    # Pairing pays: narrower than either model's own interval (Wilson, n=400: about +-3.4 points each).
    assert np.median(widths) / 2 < Count(round(p_a * n), n).half_width()
    a = np.array([1] * 10 + [1] * 15 + [0] * 5 + [0] * 20, bool)
    b = np.array([1] * 10 + [0] * 15 + [1] * 5 + [0] * 20, bool)
    d = paired_difference(a, b)
    assert (d.a_only, d.b_only, d.n) == (15, 5, 50) and d.estimate == pytest.approx(0.2)
    assert 0 < d.low < 0.2 < d.high < 1 and d.clear and d.text().startswith("+20.0 [+")
    same = paired_difference(a, a)
    assert same.estimate == 0 and same.low <= 0 <= same.high and not same.clear
    flipped = paired_difference(b, a)
    assert flipped.low == pytest.approx(-d.high) and flipped.high == pytest.approx(-d.low)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_difference(a, b[:-1])


def test_outcomes_match_the_counts_and_pair_the_models(lab_dir, test_images):
    images, labels = test_images
    rows = {name: report.evaluate_model(OnnxModel(lab_dir / f"{name}.onnx"), images, labels, TINY)
            for name in ("invariant", "positional")}
    for figures in rows.values():
        outcomes = report.trial_outcomes(figures)
        assert list(outcomes) == report.SUMMARY_HEADERS[1:]
        for column, count in report.summary(figures).items():
            assert outcomes[column].dtype == bool and (int(outcomes[column].sum()), outcomes[column].size) == (count.hits, count.n)
    # The invariant graph keeps every circular shift; the positional one loses exactly its misses.
    document = {"models": {"resnet18": rows["positional"], "invariant": rows["invariant"]}}
    found = report.differences(document)
    circular = found["invariant"]["consistency (circular)"]
    hits, n = rows["positional"]["shift"]["circular"]["consistency"]
    assert (circular.a_only, circular.b_only, circular.n) == (n - hits, 0, n) and circular.clear
    assert report.difference_rows(document)[0][0] == "invariant"
    # A baseline without outcomes (an older file) pairs nothing; tampered outcomes are refused.
    assert report.differences({"models": {"resnet18": {**rows["positional"], "outcomes": None},
                                           "invariant": rows["invariant"]}}) == {}
    flipped = report.trial_outcomes(rows["invariant"])["clean"].copy()
    flipped[0] = not flipped[0]
    tampered = {**rows["invariant"], "outcomes": {**rows["invariant"]["outcomes"], "clean": report._bits(flipped)}}
    with pytest.raises(report.ResultsError, match="do not match its count"):
        report.trial_outcomes(tampered)
    with pytest.raises(report.ResultsError, match="do not match its count"):
        report.trial_outcomes({**rows["invariant"], "outcomes": {**rows["invariant"]["outcomes"], "clean": "!!"}})


def test_results_file_round_trip_and_staleness(lab_dir, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(lab_dir, folder)
    document = report.measure_folder(folder, TINY, progress=False)
    assert set(document["models"]) == {"invariant", "positional"} and document["plan"]["images"] == TINY.images
    assert "JPEG copy" in document["data"] and "logical cores" in document["machine"]
    table = report.markdown_table(document)
    assert "| invariant | " in table and "100.0 % ± " in table and "n per model: 160" in table
    # Re-measuring one model keeps the other's row, unless the plan changed.
    again = report.measure_folder(folder, TINY, names=["invariant"], progress=False)
    assert set(again["models"]) == {"invariant", "positional"}
    assert report.trial_outcomes(again["models"]["positional"]) is not None
    other_plan = report.Plan(**{**TINY.to_dict(), "radii": TINY.radii, "corruptions": TINY.corruptions, "seed": 3})
    assert set(report.measure_folder(folder, other_plan, names=["invariant"], progress=False)["models"]) == {"invariant"}
    serial = report.measure_folder(folder, TINY, progress=False)
    # Two models at once, each in its own process: the same counts, trial for trial.
    parallel = report.measure_folder(folder, TINY, progress=False, jobs=2)
    for name, row in serial["models"].items():
        assert {k: v for k, v in row.items() if k != "seconds"} == \
            {k: v for k, v in parallel["models"][name].items() if k != "seconds"}
    assert parallel["prepare_seconds"] >= 0 and "Measured in" in report.markdown_table(parallel)
    # The time a plan should take, from the last run's speed on this machine; unknown elsewhere.
    estimate = report.estimate_seconds(TINY, parallel, ["invariant"])
    assert set(estimate) == {"invariant", "inputs"} and estimate["invariant"] == parallel["models"]["invariant"]["seconds"]
    double = report.Plan(**{**TINY.to_dict(), "radii": TINY.radii, "corruptions": TINY.corruptions,
                            "images": 2 * TINY.images})
    scale = double.evaluations / TINY.evaluations
    assert report.estimate_seconds(double, parallel, ["invariant"])["invariant"] == pytest.approx(scale * estimate["invariant"])
    assert report.estimate_seconds(TINY, {**parallel, "machine": "another"}, ["invariant"]) is None
    assert report.estimate_seconds(TINY, parallel, ["absent"]) is None
    # A model whose file changed drops out of the current view.
    constructed_model(folder / "positional.onnx", "positional", position_reading=True, seed=5)
    assert set(report.read_results(folder)["models"]) == {"invariant"}
    assert set(report.read_results(folder, current_only=False)["models"]) == {"invariant", "positional"}
    (folder / report.RESULTS_FILE).write_text("{not json")
    with pytest.raises(report.ResultsError, match="python -m robustness"):
        report.read_results(folder)
    assert not list(folder.glob("*.tmp*"))
    with pytest.raises(ValueError, match="no model named 'nope'"):
        report.measure_folder(folder, TINY, names=["nope"], progress=False)


def test_the_command(lab_dir, tmp_path, capsys):
    from robustness.__main__ import main

    folder = tmp_path / "models"
    shutil.copytree(lab_dir, folder)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- robustness:start -->\nold\n<!-- robustness:end -->\nafter\n")
    assert main([str(folder), "--images", "40", "--corruption-images", "5", "--filter-images", "5", "--radii", "4",
                 "--corruptions", "brightness,contrast", "--readme", str(readme), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| positional |" in out and "wrote" in out and "logical cores" in out
    text = readme.read_text()
    assert "old" not in text and "| invariant |" in text and text.endswith("<!-- robustness:end -->\nafter\n")
    written = json.loads((folder / report.RESULTS_FILE).read_text())
    assert set(written["models"]["invariant"]["corruptions"]) == {"brightness", "contrast"}
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), "--no-progress"])
    assert stop.value.code == 2 and "no manifest.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(folder), "--radii", "a,b"])
    assert "--radii takes comma-separated numbers" in capsys.readouterr().err
    # A plan sized for a precision, shown with the command that repeats it, and nothing measured.
    before = (folder / report.RESULTS_FILE).read_bytes()
    assert main([str(folder), "--half-width", "5", "--estimate", "--radii", "4", "--corruptions", "brightness,contrast"]) == 0
    out = capsys.readouterr().out
    assert "classifications per model" in out and f"python -m robustness {folder} --images " in out
    assert "expected time: " in out and (folder / report.RESULTS_FILE).read_bytes() == before
    for bad, message in ((["--half-width", "0"], "--half-width is in points"), (["--jobs", "0"], "--jobs must be"),
                         (["--half-width", "0.1"], "more than the 10,000")):
        with pytest.raises(SystemExit) as stop:
            main([str(folder), *bad, "--estimate"])
        assert stop.value.code == 2 and message in capsys.readouterr().err
