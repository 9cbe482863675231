"""Measuring a model's robustness, and the ``robustness.json`` file beside the models.

One :class:`Plan` says how many test images each figure uses; :func:`evaluate_model` runs
it on one ONNX model and returns counts (hits of n), never bare percentages, so every
figure carries its 95 % interval (:mod:`robustness.stats`). Every model sees the same
images, shifts, corruptions and filters (one seed): differences between models are paired.

The figures, per model:

* **clean**: top-1 accuracy on the ``images`` test images of the shift figures;
* **shift consistency** (circular, zero-padded): the share of those images whose top-1
  class is unchanged when the image is shifted by a random offset of 1..8 pixels
  (Chebyshev distance, each distance equally often). Zhang (2019) compares two random
  shifts of one image; here the first of the pair is the unshifted image, which reuses the
  clean prediction and halves the cost (stated in ``docs/robustness.md``);
* **accuracy per shift distance** (0..8 px) from the same predictions;
* **corruptions**: accuracy per corruption and severity, each corruption on its own
  ``corruption_images`` images (the five severities in turn), so the mean over all of them
  is a count of independent trials;
* **frequency**: accuracy after a low-pass and a high-pass filter at each radius, each
  condition on its own ``filter_images`` images.

Beside the counts, each model's row keeps its per-trial outcomes of the summary's columns
(``outcomes``: one bit per trial, in the draw's order), so that two models are compared
trial by trial (:func:`differences`): a paired interval, far narrower than the two models'
own intervals.
"""
from __future__ import annotations

import base64
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from serving.cifar_data import SOURCE_NAMES, first_test_images
from serving.files import atomic_write_json, file_sha256
from serving.manifest import read_manifest
from serving.registry import ModelRegistry
from serving.runtime import OnnxModel

from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .stats import Count, Difference, paired_difference, pooled, trials_for
from .transforms import FILTERS, MAX_SHIFT, SHIFT_MODES, filtered, shift

__all__ = ["BASELINE", "FORMAT", "RESULTS_FILE", "SUMMARY_HEADERS", "TEST_IMAGES", "Inputs", "Plan", "ResultsError",
           "default_jobs", "difference_rows", "differences", "estimate_seconds", "evaluate_model", "last_results",
           "markdown_table", "measure_folder", "plan_for", "planning_rates", "prepare", "read_results", "score", "summary",
           "summary_rows", "trial_outcomes", "write_results"]

RESULTS_FILE = "robustness.json"
FORMAT = 1
BATCH = 100  # images per onnxruntime call: amortises the call; measured peak RSS 1.4 GB with two DiffStride models
TEST_IMAGES = 10_000  # the CIFAR-10 test set
#: The model the others are compared with, trial by trial: the papers' strided ResNet-18.
BASELINE = "resnet18"


class ResultsError(ValueError):
    """A robustness file that cannot be read (one sentence)."""


@dataclass(frozen=True)
class Plan:
    """How many test images each figure uses (see the module docstring)."""

    # Sized for about 30 min for the five bundled models on a 2-core CPU without AVX-512
    # (the DiffStride family's int8 graphs take ~55 ms per image there): the clean, shift
    # and corruption figures get 95 % intervals of +-1.5 to 1.7 points, the filter means
    # about +-7. ``plan_for`` (``--half-width``) sizes a plan for a precision instead.
    images: int = 1500
    corruption_images: int = 200
    filter_images: int = 100
    radii: tuple[float, ...] = (4.0, 8.0)
    corruptions: tuple[str, ...] = CORRUPTIONS
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images", "corruption_images", "filter_images"):
            if int(getattr(self, name)) < len(SEVERITIES):
                raise ValueError(f"{name} must be at least {len(SEVERITIES)}, got {getattr(self, name)}")
        unknown = sorted(set(self.corruptions) - set(CORRUPTIONS))
        if unknown:
            raise ValueError(f"unknown corruption {unknown[0]!r}; expected some of {', '.join(CORRUPTIONS)}")

    def scaled(self, factor: float) -> Plan:
        """The same plan with every image count multiplied by ``factor`` (at least one per severity)."""
        def size(n: int) -> int:
            return max(len(SEVERITIES), round(n * factor))

        return replace(self, images=size(self.images), corruption_images=size(self.corruption_images),
                       filter_images=size(self.filter_images))

    @property
    def evaluations(self) -> int:
        """Images each model classifies under this plan."""
        return (self.images * (1 + len(SHIFT_MODES)) + self.corruption_images * len(self.corruptions)
                + self.filter_images * len(FILTERS) * len(self.radii))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "radii": list(self.radii), "corruptions": list(self.corruptions)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Plan:
        """The plan :meth:`to_dict` wrote (as stored in ``robustness.json``)."""
        return cls(**{**values, "radii": tuple(values["radii"]), "corruptions": tuple(values["corruptions"])})


# --------------------------------------------------------------------------------------
# What every model sees: one draw for all of them
# --------------------------------------------------------------------------------------
def ring_offsets(distance: int) -> np.ndarray:
    """All ``(dy, dx)`` at Chebyshev distance ``distance`` from the origin (8*distance of them)."""
    span = np.arange(-distance, distance + 1)
    grid = np.stack(np.meshgrid(span, span, indexing="ij"), axis=-1).reshape(-1, 2)
    return grid[np.abs(grid).max(axis=1) == distance]


@dataclass(frozen=True)
class Draw:
    """The images and offsets of one plan on one test set."""

    shift_images: np.ndarray  # indices into the test set
    offsets: np.ndarray  # (images, 2): one offset per shift image
    corruption_images: dict[str, np.ndarray]
    filter_images: dict[tuple[str, float], np.ndarray]


def draw(plan: Plan, n_test: int) -> Draw:
    """Random (seeded) disjoint-as-possible image sets for each figure."""
    needed = max(plan.images, plan.corruption_images, plan.filter_images)
    if needed > n_test:
        raise ValueError(f"the plan needs {needed} test images per figure but the test set has {n_test}")
    rng = np.random.default_rng(plan.seed)
    order = rng.permutation(n_test)

    def block(k: int, size: int) -> np.ndarray:  # the k-th block of ``size`` images, wrapping around
        return order[(k * size + np.arange(size)) % n_test]

    distances = 1 + np.arange(plan.images) % MAX_SHIFT
    offsets = np.stack([ring_offsets(int(d))[rng.integers(8 * int(d))] for d in distances])
    conditions = [(kind, float(r)) for kind in FILTERS for r in plan.radii]
    return Draw(
        shift_images=block(0, plan.images),
        offsets=offsets,
        corruption_images={name: block(k, plan.corruption_images) for k, name in enumerate(plan.corruptions)},
        filter_images={c: block(k, plan.filter_images) for k, c in enumerate(conditions)},
    )


def severities(n: int) -> np.ndarray:
    """The severity of each of ``n`` images of a corruption: 1, 2, .., 5, 1, 2, .."""
    return np.asarray(SEVERITIES)[np.arange(n) % len(SEVERITIES)]


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------
Progress = Callable[[int], None]
Batch = tuple[np.ndarray, np.ndarray]  # uint8 images (n, 32, 32, 3) and their labels (n,)


@dataclass(frozen=True)
class Inputs:
    """Every image every model classifies under one plan, transformed once for all models.

    ``images`` x ``labels`` are the shift figures' test images; ``shifted[mode]`` the same
    images moved by ``offsets``; ``corrupted[name]`` one batch per severity (1..5);
    ``filtered[(kind, radius)]`` one batch per filter condition. They do not depend on the
    model, so they are computed once and every model classifies the very same arrays (3 s for
    the 18,492 images of the ±1.5 plan on a 2-core AMD EPYC: cheap next to classification,
    but no longer repeated per model). With ``jobs`` > 1 each worker gets a copy.
    """

    images: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    shifted: dict[str, np.ndarray]
    corrupted: dict[str, list[Batch]]
    filtered: dict[tuple[str, float], Batch]

    @property
    def evaluations(self) -> int:
        """Images each model classifies."""
        return (len(self.images) * (1 + len(self.shifted))
                + sum(len(x) for batches in self.corrupted.values() for x, _ in batches)
                + sum(len(x) for x, _ in self.filtered.values()))

    @property
    def nbytes(self) -> int:
        return self.evaluations * int(np.prod(self.images.shape[1:], dtype=np.int64))


def prepare(plan: Plan, images: np.ndarray, labels: np.ndarray) -> Inputs:
    """The transformed inputs of ``plan`` on the test set ``images`` (uint8 ``(N, 32, 32, 3)``)
    and ``labels`` (``(N,)``): deterministic for the plan's seed."""
    chosen = draw(plan, len(images))
    x = images[chosen.shift_images]
    corrupted = {}
    for k, (name, index) in enumerate(chosen.corruption_images.items()):
        level = severities(len(index))
        corrupted[name] = [(corrupt(images[subset], name, int(severity), seed=plan.seed + k), labels[subset])
                           for severity in SEVERITIES for subset in [index[level == severity]]]
    return Inputs(
        images=x, labels=labels[chosen.shift_images], offsets=chosen.offsets,
        shifted={mode: shift(x, chosen.offsets, mode) for mode in SHIFT_MODES},
        corrupted=corrupted,
        filtered={(kind, radius): (filtered(images[index], radius, kind), labels[index])
                  for (kind, radius), index in chosen.filter_images.items()},
    )


def top1(model: OnnxModel, images: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """The top-1 class of each uint8 image, in batches of :data:`BATCH`."""
    out = []
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        out.append(model.logits(chunk).argmax(axis=1))
        if progress:
            progress(len(chunk))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _count(hits: np.ndarray) -> list[int]:
    return Count(int(np.count_nonzero(hits)), int(hits.size)).to_list()


def _bits(hits: np.ndarray) -> str:
    """Per-trial outcomes as text: one bit per trial, packed, base64 (1,500 trials: 252 characters)."""
    return base64.b64encode(np.packbits(np.asarray(hits, bool)).tobytes()).decode("ascii")


def _unbits(text: str, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text, validate=True), np.uint8))
    if bits.size < n or bits[n:].any():
        raise ValueError(f"{bits.size} bits for {n} trials")
    return bits[:n].astype(bool)


def _shift_figures(model, inputs: Inputs, clean, progress, trials: dict[str, list]) -> dict[str, Any]:
    y, distance = inputs.labels, np.abs(inputs.offsets).max(axis=1)
    figures: dict[str, Any] = {}
    for mode, moved_images in inputs.shifted.items():
        moved = top1(model, moved_images, progress)
        trials[CONSISTENCY[mode]].append(moved == clean)
        figures[mode] = {
            "consistency": _count(moved == clean),
            "accuracy": _count(moved == y),
            "by_distance": [[0, *_count(clean == y)]]
            + [[int(d), *_count(moved[distance == d] == y[distance == d])] for d in range(1, MAX_SHIFT + 1)],
        }
    return figures


def score(model: OnnxModel, inputs: Inputs, progress: Progress | None = None) -> dict[str, Any]:
    """Every figure of one model on prepared ``inputs``, as counts ``[hits, n]`` (see the
    module docstring), with the per-trial ``outcomes`` and the ``seconds`` it took."""
    start = time.perf_counter()
    clean = top1(model, inputs.images, progress)
    trials: dict[str, list[np.ndarray]] = {column: [] for column in SUMMARY_HEADERS[1:]}
    trials["clean"].append(clean == inputs.labels)
    result: dict[str, Any] = {"clean": _count(clean == inputs.labels),
                              "shift": _shift_figures(model, inputs, clean, progress, trials)}
    corruptions = {}
    for name, batches in inputs.corrupted.items():
        rows = []
        for severity, (seen, truth) in zip(SEVERITIES, batches):
            hits = top1(model, seen, progress) == truth
            trials[CORRUPTIONS_MEAN].append(hits)
            rows.append([int(severity), *_count(hits)])
        corruptions[name] = rows
    result["corruptions"] = corruptions
    frequency: dict[str, list] = {kind: [] for kind in FILTERS}
    for (kind, radius), (seen, truth) in inputs.filtered.items():
        hits = top1(model, seen, progress) == truth
        trials[FREQUENCY_MEAN[kind]].append(hits)
        frequency[kind].append([radius, *_count(hits)])
    result["frequency"] = frequency
    result["outcomes"] = {column: _bits(np.concatenate(parts)) for column, parts in trials.items()}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def evaluate_model(model: OnnxModel, images: np.ndarray, labels: np.ndarray, plan: Plan = Plan(),
                   progress: Progress | None = None) -> dict[str, Any]:
    """Every figure of ``plan`` for one model (:func:`prepare`, then :func:`score`).

    ``images``: the test set, uint8 ``(N, 32, 32, 3)``; ``labels``: ``(N,)``.
    """
    return score(model, prepare(plan, images, labels), progress)


# --------------------------------------------------------------------------------------
# The file beside the models
# --------------------------------------------------------------------------------------
def machine() -> str:
    """The CPU's model name and core count (every figure's time is named with its machine)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores"


def write_results(directory: str | os.PathLike, models: dict[str, dict], plan: Plan, data: str,
                  previous: dict | None = None, prepare_seconds: float | None = None) -> Path:
    """Write (atomically) ``directory/robustness.json``: ``models`` (name -> figures, each
    with its file's ``sha256``) merged over the rows of ``previous`` that are still current and
    were measured under the same plan on the same data; ``prepare_seconds``: the time the
    inputs took to transform (once for all models)."""
    previous = previous or {}
    # Rows measured under another plan or on other data are not comparable: they go.
    comparable = previous.get("plan") == plan.to_dict() and previous.get("data") == data
    kept = {name: row for name, row in previous.get("models", {}).items() if comparable and name not in models}
    document = {"format": FORMAT, "plan": plan.to_dict(), "data": data, "machine": machine(),
                "models": {**kept, **models}}
    if prepare_seconds is not None:
        document["prepare_seconds"] = prepare_seconds
    return atomic_write_json(Path(directory) / RESULTS_FILE, document)


def read_results(directory: str | os.PathLike, current_only: bool = True) -> dict | None:
    """``directory/robustness.json`` (``None`` if absent). With ``current_only``, a model's row
    is kept only while the manifest lists that model with the same file hash."""
    path = Path(directory) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ResultsError(f"{path.name} cannot be read ({error}); recompute it with python -m robustness") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("models"), dict):
        raise ResultsError(f"{path.name} is not a robustness file of format {FORMAT}; recompute it with python -m robustness")
    if current_only:
        hashes = {row.get("name"): row.get("sha256") for row in read_manifest(directory).get("models", [])}
        document["models"] = {name: row for name, row in document["models"].items()
                              if row.get("sha256") and hashes.get(name) == row.get("sha256")}
    return document


def last_results(directory: str | os.PathLike, current_only: bool = True) -> dict | None:
    """:func:`read_results`, or ``None`` when the file is absent or cannot be read (it is
    then simply measured again)."""
    try:
        return read_results(directory, current_only)
    except ResultsError:
        return None


# --------------------------------------------------------------------------------------
# Summaries and tables
# --------------------------------------------------------------------------------------
SUMMARY_HEADERS = ["model", "clean", "consistency (circular)", "consistency (zero pad)", "corruptions (mean)",
                   "low-pass (mean)", "high-pass (mean)"]
CONSISTENCY = {"circular": "consistency (circular)", "zero": "consistency (zero pad)"}
CORRUPTIONS_MEAN = "corruptions (mean)"
FREQUENCY_MEAN = {"low": "low-pass (mean)", "high": "high-pass (mean)"}


def summary(figures: dict[str, Any]) -> dict[str, Count]:
    """The headline counts of one model's figures (the table's columns)."""
    corrupt_rows = (Count.from_list(row[1:]) for rows in figures["corruptions"].values() for row in rows)
    return {
        "clean": Count.from_list(figures["clean"]),
        **{CONSISTENCY[mode]: Count.from_list(figures["shift"][mode]["consistency"]) for mode in SHIFT_MODES},
        CORRUPTIONS_MEAN: pooled(corrupt_rows),
        **{FREQUENCY_MEAN[kind]: pooled(Count.from_list(row[1:]) for row in figures["frequency"][kind])
           for kind in FILTERS},
    }


def trial_outcomes(figures: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """Each summary column's per-trial outcomes (``None`` for a row measured without them),
    checked against the column's count."""
    stored = figures.get("outcomes")
    if stored is None:
        return None
    outcomes = {}
    for column, count in summary(figures).items():
        try:
            hits = _unbits(stored[column], count.n)
        except (KeyError, TypeError, ValueError):
            hits = None
        if hits is None or int(hits.sum()) != count.hits:
            raise ResultsError(f"the outcomes of {column!r} do not match its count; recompute with python -m robustness")
        outcomes[column] = hits
    return outcomes


def differences(document: dict, baseline: str = BASELINE,
                order: Sequence[str] | None = None) -> dict[str, dict[str, Difference]]:
    """Per model (other than ``baseline``): each summary column's paired difference from
    ``baseline``, ``model - baseline``. Models without outcomes, and every model when the
    baseline has none, are left out."""
    models = document["models"]
    if baseline not in models or (reference := trial_outcomes(models[baseline])) is None:
        return {}
    found = {}
    for name in [n for n in (order or models) if n in models and n != baseline]:
        outcomes = trial_outcomes(models[name])
        if outcomes is not None:
            found[name] = {column: paired_difference(outcomes[column], reference[column]) for column in outcomes}
    return found


def difference_rows(document: dict, baseline: str = BASELINE, order: Sequence[str] | None = None) -> list[list[str]]:
    """One row per model: ``"+1.2 [−0.3, +2.6]"`` (points, 95 %) per column, against ``baseline``."""
    return [[name, *(d.text() for d in columns.values())]
            for name, columns in differences(document, baseline, order).items()]


def summary_rows(document: dict, order: Sequence[str] | None = None) -> list[list[str]]:
    """One row per model: ``"91.2 % ± 1.4"`` per column of :data:`SUMMARY_HEADERS`."""
    names = [n for n in (order or document["models"]) if n in document["models"]]
    return [[name, *(count.text() for count in summary(document["models"][name]).values())] for name in names]


def _n_line(document: dict) -> str:
    plan = document["plan"]
    return (f"n per model: {plan['images']} test images for clean and each shift consistency; "
            f"{plan['corruption_images']} per corruption ({len(plan['corruptions'])} corruptions × 5 severities, "
            f"{plan['corruption_images'] * len(plan['corruptions'])} in the mean); {plan['filter_images']} per filter "
            f"and radius (radii {', '.join(f'{r:g}' for r in plan['radii'])}; "
            f"{plan['filter_images'] * len(plan['radii'])} per mean). ± is the 95 % (Wilson) interval's half-width.")


def _markdown_rows(rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(SUMMARY_HEADERS) + " |", "|---" + "|---:" * (len(SUMMARY_HEADERS) - 1) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def markdown_table(document: dict, order: Iterable[str] | None = None) -> str:
    """The README's robustness table, with the sample sizes and the data named, and (when the
    outcomes are stored) the paired differences from :data:`BASELINE`."""
    order = list(order) if order else None
    lines = _markdown_rows(summary_rows(document, order))
    seconds = sum(float(row.get("seconds", 0)) for row in document["models"].values())
    seconds += float(document.get("prepare_seconds", 0))
    timing = f" Measured in {seconds / 60:.0f} min on {document['machine']} (`python -m robustness`)."
    text = "\n".join(lines) + f"\n\n{document['data']}; {_n_line(document)}{timing}"
    paired = difference_rows(document, BASELINE, order)
    if paired:
        text += (f"\n\nDifference from `{BASELINE}`, trial by trial on the same images (points; 95 % interval, "
                 "Newcombe's paired score method):\n\n" + "\n".join(_markdown_rows(paired)))
    return text


# --------------------------------------------------------------------------------------
# Planning for a precision
# --------------------------------------------------------------------------------------
def planning_rates(document: dict | None) -> dict[str, float]:
    """Per summary column, the rate to size its sample for: of the measured models, the one
    nearest 50 % (the widest interval), moved towards 50 % by its own half-width so that a
    slightly different rate on a larger sample still fits; 50 % where nothing was measured."""
    rates = dict.fromkeys(SUMMARY_HEADERS[1:], 0.5)
    counts = [summary(row) for row in (document or {}).get("models", {}).values()]
    for column in rates:
        measured = [c for row in counts if (c := row.get(column)) is not None and c.n]
        if measured:
            widest = min(measured, key=lambda c: abs(c.rate - 0.5))
            rates[column] = widest.rate + float(np.clip(0.5 - widest.rate, -widest.half_width(), widest.half_width()))
    return rates


def plan_for(half_width: float, document: dict | None = None, base: Plan = Plan()) -> Plan:
    """``base`` with its image counts sized so that every column of the summary table has a
    95 % interval no wider than ``±half_width`` (a fraction), at the rates of
    :func:`planning_rates` (``document``: the last results, or ``None``)."""
    need = {column: trials_for(rate, half_width) for column, rate in planning_rates(document).items()}
    per_severity = math.ceil(need[CORRUPTIONS_MEAN] / (len(base.corruptions) * len(SEVERITIES)))
    plan = replace(
        base,
        images=max(need["clean"], *(need[column] for column in CONSISTENCY.values())),
        corruption_images=per_severity * len(SEVERITIES),  # the same number at each severity
        filter_images=math.ceil(max(need[column] for column in FREQUENCY_MEAN.values()) / len(base.radii)),
    )
    largest = max(plan.images, plan.corruption_images, plan.filter_images)
    if largest > TEST_IMAGES:
        raise ValueError(f"±{100 * half_width:g} points needs {largest:,} images for one figure, more than the "
                         f"{TEST_IMAGES:,} of the CIFAR-10 test set; ask for a wider interval")
    return plan


def estimate_seconds(plan: Plan, document: dict | None, names: Sequence[str]) -> dict[str, float] | None:
    """Per model of ``names``, the seconds ``plan`` should take, from the speed of its last run
    on this kind of machine (``None`` when a model has no such run), plus ``"inputs"``: the
    transforms, done once."""
    if not document or document.get("machine") != machine():
        return None
    scale = plan.evaluations / Plan.from_dict(document["plan"]).evaluations
    rows = document["models"]
    if any(name not in rows or "seconds" not in rows[name] for name in names):
        return None
    estimate = {name: float(rows[name]["seconds"]) * scale for name in names}
    estimate["inputs"] = float(document.get("prepare_seconds", 0)) * scale
    return estimate


# --------------------------------------------------------------------------------------
# A whole models folder
# --------------------------------------------------------------------------------------
#: The test sets the lab reads, most faithful first (the partial copy has too few images).
SOURCES = ("torchvision", "jpeg")


def test_set(data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """All 10,000 CIFAR-10 test images, labels and how to name them."""
    images, labels, source = first_test_images(10_000, data_dir, sources=SOURCES)
    return images, labels, f"{SOURCE_NAMES[source]} test set"


def default_jobs() -> int:
    """Models measured at once: one per four cores (each session uses up to four threads)."""
    return max(1, (os.cpu_count() or 1) // 4)


def _score_file(path: str, inputs: Inputs, threads: int) -> dict[str, Any]:
    """One model's figures, in a worker process of :func:`measure_folder`."""
    return score(OnnxModel(path, intra_op_threads=threads), inputs)


def measure_folder(directory: str | os.PathLike, plan: Plan = Plan(), names: Sequence[str] | None = None,
                   data_dir: str | os.PathLike | None = None, progress: bool = True, jobs: int = 1) -> dict:
    """Measure ``names`` (default: every model of the folder) and update ``robustness.json``.

    The inputs are transformed once (:func:`prepare`) and every model classifies them;
    ``jobs`` > 1 measures that many models at once, each in its own process with its share
    of the cores (for machines with more than four). Rows of other models that are still
    current are kept. Returns the written document.
    """
    from tqdm import tqdm  # the progress bar only; importing the package stays light

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    registry = ModelRegistry(directory)
    names = list(names or registry.names())
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"no model named {unknown[0]!r} in {directory}; it has {', '.join(registry.names()) or 'none'}")
    images, labels, data = test_set(data_dir)
    start = time.perf_counter()
    inputs = prepare(plan, images, labels)
    prepare_seconds = round(time.perf_counter() - start, 1)
    entries = {name: registry.entry(name) for name in names}
    workers = min(jobs, len(names))
    measured: dict[str, dict] = {}
    with tqdm(total=plan.evaluations * len(names), unit="img", disable=not progress, desc="robustness") as bar:
        if workers == 1:
            for name in names:
                bar.set_postfix_str(name)
                # A session of its own, dropped after the model: the registry would keep every
                # session (and its memory arena, GBs for the DiffStride family) until the end.
                measured[name] = score(OnnxModel(entries[name].path), inputs, bar.update)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            # spawn, not fork: a forked child of a process that has loaded onnxruntime can hang.
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_score_file, str(entries[name].path), inputs, threads): name for name in names}
                for future in as_completed(futures):
                    measured[futures[future]] = future.result()
                    bar.update(plan.evaluations)
    rows = {name: {"file": entry.file, "sha256": file_sha256(entry.path), **measured[name]}
            for name, entry in entries.items()}
    # An unreadable file is replaced.
    write_results(directory, rows, plan, data, last_results(directory), prepare_seconds)
    return read_results(directory, current_only=False)
