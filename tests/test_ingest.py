"""``exports.ingest``'s evaluation budget: one onnxruntime pass over the test images per model.

The int8 gate measures its accuracy drop from the training card's GPU float32 figure
(``compression.test_acc_float32``) instead of a second pass over the fp16 export; the fp16
export runs only on a small agreement sample, unless the card has no figure for the same
test images or the gate fails (then the fp16 file is bundled and evaluated).

The window folders here hold *constant* models: fresh weights (BatchNorm calibrated on real
images) whose classifier bias makes every prediction class 0, so the float, fp16 and int8
accuracies are known exactly (the share of class 0 among the test images) and the gate's
outcome is decided by the card's figure alone.

Also a script: ``python tests/test_ingest.py rehearse OUT`` writes a rehearsal input for
timing ingest at full size: the first GPU window's ``models`` call (its five cards, learned
strides included, so every model has the trained models' feature-map sizes and cost) with
constant weights in place of the trained ones (benchmarks/RESULTS.md, "Ingest time").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.paths import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DATA = REPO_ROOT.parent / "shared" / "data"
FIRST_WINDOW = REPO_ROOT / "results" / "windows" / "2026-11-26-h200" / "call1" / "window.json"
N_TEST, AGREEMENT = 96, 16

needs_data = pytest.mark.skipif(not (DATA / "cifar10_test_jpeg.npz").is_file(),
                                reason="the CIFAR-10 JPEG copy (../shared/data) is not here")


# --------------------------------------------------------------------------------------
# Window folders of constant models
# --------------------------------------------------------------------------------------
def class0_share(n: int, data_dir: Path = DATA) -> float:
    """Accuracy of a model that always answers class 0 on the first ``n`` test images."""
    from exports.quantize import load_cifar10_jpeg

    _, labels, _ = load_cifar10_jpeg("test", n, data_dir)
    return float(np.mean(labels == 0))


def constant_model(card: dict, data_dir: Path = DATA):
    """``card``'s network (its learned strides set) with BatchNorm statistics from 32 real
    training images and a classifier bias that makes class 0 win every image."""
    import torch

    import hybrid_model
    from training.checkpoint import _calibrate_batchnorm, _normalize

    torch.manual_seed(0)
    model = hybrid_model.build_from_card(card)
    for name, module in model.named_modules():
        learned = (card.get("learned_strides") or {}).get(name)
        if isinstance(module, hybrid_model.DiffStride2d) and learned is not None:
            with torch.no_grad():
                module.stride.copy_(torch.tensor(learned[: module.stride.numel()], dtype=torch.float32))
    with np.load(data_dir / "cifar10_partial_train.npz") as data:
        images = data["x"][:32]
    norm = _normalize(card.get("dataset", "cifar10"))
    x = (images.astype(np.float32) / 255.0 - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    _calibrate_batchnorm(model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias[0] += 100.0
    return model.eval()


def write_window(out: Path, cards: list[dict], data_dir: Path = DATA, device: str = "rehearsal") -> Path:
    """A ``models`` call's folder: ``window.json`` and one ``NAME.int8.safetensors`` per card
    (each card finished, its model :func:`constant_model`)."""
    import torch

    from exports.compact import write_compact
    from serving.files import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for card in cards:
        model = constant_model(card, data_dir)
        file = f"{card['name']}.int8.safetensors"
        write_compact(out / file, model.state_dict(), card)
        runs.append({"name": card["name"], "file": file, "status": "finished", "card": card})
    atomic_write_json(out / "window.json", {"mode": "models", "device": device, "torch": torch.__version__,
                                            "started": None, "budget_s": 0, "elapsed_s": None, "runs": runs})
    return out


def small_card(name: str, reference: float, test_images: int) -> dict:
    """A finished quarter-width resnet18 card whose GPU figures say ``reference``."""
    import hybrid_model
    from training.checkpoint import make_card

    options = {"width": 16}
    model = hybrid_model.build_model("resnet18", (1, 1, 2, 2, 2), 10, **options)
    return make_card(model, "resnet18", (1, 1, 2, 2, 2), options=options, name=name, epoch=1, epochs=1, test_acc=reference,
                     history=[{"epoch": 1, "test_acc": reference}], hardware="rehearsal",
                     compression={"test_images": test_images, "test_acc_float32": reference, "test_acc_int8": reference,
                                  "top1_agreement": 1.0, "measured_on": "rehearsal"})


# --------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------
@pytest.fixture
def counted_passes(monkeypatch) -> list[int]:
    """The number of images of every onnxruntime evaluation (``exports.quantize.predictions``,
    which the int8 gate and ``ingest.onnx_accuracy`` both use)."""
    from exports import quantize

    sizes: list[int] = []
    real = quantize.predictions

    def counting(model, x, threads=None):
        sizes.append(len(x))
        return real(model, x, threads)

    monkeypatch.setattr(quantize, "predictions", counting)
    return sizes


def _ingest(tmp_path: Path, card: dict) -> dict:
    from exports import ingest
    from serving.registry import ModelRegistry

    window = write_window(tmp_path / "window", [card])
    models = tmp_path / "models"
    assert ingest.main([str(window), "--models-dir", str(models), "--results-dir", str(tmp_path / "results"),
                        "--data-dir", str(DATA), "--limit-test", str(N_TEST), "--agreement-images", str(AGREEMENT),
                        "--robustness-scale", "0", "--no-docs"]) == 0
    registry = ModelRegistry(models)
    assert registry.names() == ["resnet18"] and not registry.skipped
    return registry.entry("resnet18").card.to_dict()


@needs_data
def test_ingest_makes_one_full_test_pass_per_model(tmp_path, counted_passes):
    share = class0_share(N_TEST)
    card = _ingest(tmp_path, small_card("r18_one_pass", share, N_TEST))
    # exactly one onnxruntime pass over the test images (the bundled int8 file's); the fp16
    # export only ran on the agreement sample
    assert counted_passes.count(N_TEST) == 1, counted_passes
    assert sorted(counted_passes) == [AGREEMENT, N_TEST]
    bundled, gate = card["bundled_accuracy"], card["accuracy_gate"]
    assert card["export"]["precision"] == "int8" and bundled["precision"] == "int8"
    assert card["test_acc"] == bundled["test_acc"] == gate["int8_acc"] == share and bundled["test_images"] == N_TEST
    assert gate["float_acc"] == share and gate["float_source"].startswith("training card: compression.test_acc_float32")
    assert gate["agreement_images"] == AGREEMENT and gate["top1_agreement"] == 1.0 and gate["passed"]
    assert bundled["fp16_file_test_acc"] is None and bundled["agreement_images"] == AGREEMENT
    assert card["float_parity"]["passed"] and card["float_parity"]["n_images"] == 64  # parity: a small sample


@needs_data
def test_failed_gate_bundles_and_evaluates_the_fp16_file(tmp_path, counted_passes):
    share = class0_share(N_TEST)
    card = _ingest(tmp_path, small_card("r18_gate_fails", share + 0.05, N_TEST))  # the GPU says 5 points better
    assert card["export"]["precision"] == "fp16" and not card.get("accuracy_gate")
    assert sorted(counted_passes) == [AGREEMENT, N_TEST, N_TEST]  # int8 (the gate), then the fp16 file bundled
    bundled = card["bundled_accuracy"]
    assert bundled["test_acc"] == bundled["fp16_file_test_acc"] == share and bundled["precision"] == "fp16"


@needs_data
def test_without_a_card_figure_for_the_same_images_the_gate_measures_fp16(tmp_path, counted_passes):
    share = class0_share(N_TEST)
    card = _ingest(tmp_path, small_card("r18_other_count", share, 10_000))  # the GPU counted all 10,000
    assert sorted(counted_passes) == [N_TEST, N_TEST]  # fp16 and int8 over the same images
    gate = card["accuracy_gate"]
    assert gate["float_source"] == "onnxruntime CPU, same images" and gate["agreement_images"] == N_TEST
    assert card["bundled_accuracy"]["fp16_file_test_acc"] == share == card["test_acc"]


def test_gate_reference_needs_the_same_test_images():
    from exports.ingest import gate_reference

    comp = {"test_images": 10_000, "test_acc_float32": 0.87, "measured_on": "cuda"}
    assert gate_reference(comp, 10_000)[0] == 0.87 and "cuda" in gate_reference(comp, 10_000)[1]
    assert gate_reference(comp, 1_000)[0] is None
    assert gate_reference({}, 10_000)[0] is None and gate_reference(None, 10_000)[0] is None


# --------------------------------------------------------------------------------------
# The rehearsal input (a script)
# --------------------------------------------------------------------------------------
def rehearsal_cards(window_json: Path = FIRST_WINDOW, test_images: int = 10_000, data_dir: Path = DATA) -> list[dict]:
    """The first window's finished cards, their GPU figures replaced by the constant
    models' exact accuracy on the first ``test_images`` (what ingest will measure)."""
    share = class0_share(test_images, data_dir)
    cards = []
    for run in json.loads(window_json.read_text())["runs"]:
        card = dict(run["card"])
        card["compression"] = {**(card.get("compression") or {}), "test_images": test_images, "test_acc_float32": share,
                               "test_acc_int8": share, "top1_agreement": 1.0, "measured_on": "rehearsal (constant model)"}
        cards.append(card)
    return cards


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/test_ingest.py", description="write an ingest rehearsal input")
    p.add_argument("command", choices=["rehearse"])
    p.add_argument("out", type=Path, help="folder to write (window.json + five NAME.int8.safetensors)")
    p.add_argument("--window", type=Path, default=FIRST_WINDOW, help="a models call's window.json (its cards)")
    p.add_argument("--test-images", type=int, default=10_000, help="the --limit-test ingest will run with (default: all)")
    p.add_argument("--data-dir", type=Path, default=DATA)
    args = p.parse_args(argv)
    write_window(args.out, rehearsal_cards(args.window, args.test_images, args.data_dir), args.data_dir)
    print(f"wrote {args.out}: python -m exports.ingest {args.out} --models-dir M --results-dir R --no-docs"
          + (f" --limit-test {args.test_images}" if args.test_images != 10_000 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def test_the_robustness_plan_ingest_runs(tmp_path, capsys):
    from exports import ingest
    from robustness.report import Plan, plan_for, read_results
    from serving.paths import BUNDLED_MODELS_DIR

    assert ingest.robustness_plan(tmp_path, 0.0, None) is None  # skipped
    assert ingest.robustness_plan(tmp_path, 0.5, None) == Plan().scaled(0.5)
    blind = ingest.robustness_plan(tmp_path, 1.0, 3.0)  # no results yet: every figure sized for 50 %
    assert blind == plan_for(0.03, None)
    # Sized from the folder's last results, rows of since-replaced models included.
    sized = ingest.robustness_plan(BUNDLED_MODELS_DIR, 1.0, 1.5)
    assert sized == plan_for(0.015, read_results(BUNDLED_MODELS_DIR, current_only=False))
    assert sized.images < plan_for(0.015, None).images
    with pytest.raises(SystemExit) as stop:
        ingest.main([str(tmp_path), "--robustness-half-width", "0"])
    assert stop.value.code == 2 and "--robustness-half-width is in points" in capsys.readouterr().err
