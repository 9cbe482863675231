"""Event handlers: Gradio-facing wrappers around :class:`~dashboard.service.DashboardService`.

Each public handler backs one API endpoint (/classify, /spectra, /compare, /training,
/models). User-facing problems become a gr.Error with a plain sentence (no traceback in the
UI or the server log); anything unexpected is logged with its traceback and reported as an
internal error, and the server keeps serving.

The ``*_ui`` / ``*_view`` methods serve the browser only: they never raise (the upload's
error toast comes once, from the classify event) and always return outputs that belong to
the image and models on screen, or clear them.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from serving import STAGES
from serving.cards import RunCard

from . import figures, robustness_views, training_views
from .service import Analysis, DashboardService, UserError
from .training_views import budget

__all__ = ["Handlers", "MAX_COMPARE", "COMPARE_TAB", "ROBUSTNESS_TAB", "LAYER_HEADERS", "COMPARE_HEADERS"]

log = logging.getLogger("dashboard")
MAX_COMPARE = 4
TOP_K = 5
VIEW_SCALE = 8  # 32x32 -> 256x256, nearest neighbour
COMPARE_TAB = "Compare"
ROBUSTNESS_TAB = "Robustness"
LAYER_HEADERS = ["layer", "stage", "kind", "stride s (h × w)", "size in → out (effective stride)",
                 "frequencies kept: h (full axis) · w (half spectrum, rfft)"]
COMPARE_HEADERS = ["model", "top-1 (p %)", "test acc (%)", "trained", "GFLOPs", "params (M)",
                   "map size per stage (stem → …)"]


def user_errors(fn: Callable) -> Callable:
    """Turn :class:`UserError` into a ``gr.Error`` the UI shows; log anything else."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - last line of defence, the server keeps serving
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Internal error ({type(exc).__name__}): {exc}", print_exception=False) from None

    return wrapper


def _percent(value: Any) -> str:
    try:
        return f"{100.0 * float(value):.2f}%"
    except (TypeError, ValueError):
        return "n/a"


def _digest(path: Path) -> str:
    """The content digest the service keys analyses by (blake2b-128 of the file's bytes)."""
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


class Handlers:
    """Args:
        service: the models and their cached analyses.
        examples: the bundled example images, named ``<index>_<label>.png``: an upload with
            the same bytes is shown with its true label.
    """

    def __init__(self, service: DashboardService, examples: Sequence[Path] = ()) -> None:
        self.service = service
        self.true_labels: dict[str, str] = {}
        for path in examples:
            index, _, label = path.stem.partition("_")
            if label:
                self.true_labels[_digest(path)] = f"{label} (CIFAR-10 test image #{int(index)})" \
                    if index.isdigit() else label

    def true_label(self, digest: str) -> str | None:
        return self.true_labels.get(digest)

    # ------------------------------------------------------------------ classify
    @user_errors
    def classify(self, image: str | None, model: str | None = None) -> dict[str, float]:
        """Top-5 classes of one image, as {class: probability}."""
        analysis = self.service.analyse(image, model)
        return {c: p for c, p in analysis.topk[:TOP_K]}

    def classify_ui(self, image: str | None, model: str | None) -> dict[str, float] | None:
        """The browser's automatic run on upload/model change: a cleared image clears the label."""
        if image is None:
            return None
        return self.classify(image, model)

    def drop_rejected_input(self, image: str | None, model: str | None) -> Any:
        """After a failed classify: clear the input when the upload was the problem (no
        broken-image icon stays), keep it when the model was (an unknown name)."""
        if image is None:
            return gr.skip()
        try:
            self.service.model(model)
        except UserError:
            return gr.skip()
        return None

    @user_errors
    def views(self, image: str | None, model: str | None) -> tuple[Any, Any, str]:
        """Bar chart of the top-5, the 32x32 image as the model sees it, a one-line summary."""
        if image is None:
            return figures.plot_data(figures.message_figure("Upload an image to classify.", 250)), None, ""
        analysis = self.service.analyse(image, model)
        bar = self.service.cached_figure(
            ("bar", analysis.digest, analysis.model_name),
            lambda: figures.plot_data(figures.topk_figure(analysis.topk[:TOP_K])),
        )
        view = np.asarray(analysis.summary.model_input, dtype=np.uint8)
        view = view.repeat(VIEW_SCALE, axis=0).repeat(VIEW_SCALE, axis=1)
        return bar, view, self._summary(analysis)

    def views_ui(self, image: str | None, model: str | None) -> tuple[Any, Any, str]:
        """Browser chain after classify: on failure (already reported by classify) clear the
        views instead of leaving the previous image's results on screen."""
        try:
            return self.views(image, model)
        except gr.Error:
            return figures.plot_data(figures.message_figure("No result for this input.", 250)), None, ""

    def _summary(self, analysis: Analysis) -> str:
        card = self.service.card(analysis.model_name)
        top, prob = analysis.topk[0]
        truth = self.true_label(analysis.digest)
        lines = [f"**Prediction: {top}** ({_percent(prob)})"]
        if truth:
            verdict = "correct" if truth.split(" ")[0] == top else "wrong"
            lines.append(f"**True label: {truth}** · {verdict}")
        lines.append(
            f"Model `{analysis.model_name}` ({card.variant or '?'}): {card.dataset or '?'} test accuracy "
            f"{_percent(card.test_acc)}; trained {budget(card)}"
        )
        lines.append(f"Model run time for this image: {float(analysis.summary.latency_ms):.1f} ms (ONNX Runtime, CPU)")
        lines.append("Model input: the image as the model sees it, 32×32 (centre crop, resized), shown enlarged ×8.")
        return "\n\n".join(lines)

    # ------------------------------------------------------------------ spectra
    @user_errors
    def spectra(
        self, image: str | None, model: str | None = None, show_features: bool = False, channels: float = 3,
        viewport: float | None = None,
    ) -> tuple[Any, Any, list[list[Any]]]:
        """Spectrum grid with crop boxes, optional feature maps, and the layer table."""
        name = self.service.entry(model).name
        if image is None:
            empty = figures.plot_data(figures.message_figure("Upload an image to see its spectra."))
            return empty, figures.plot_data(figures.message_figure("")), self.layer_rows(name)
        analysis = self.service.analyse(image, model)
        panels_n = len(STAGES) + 1
        cols = figures.spectra_columns(viewport, panels_n)
        grid = self.service.cached_figure(
            ("spectra", analysis.digest, name, cols),
            lambda: figures.plot_data(figures.spectra_figure(self.service.spectrum_panels(analysis), cols=cols)),
        )
        channels = int(max(0, min(8, round(float(channels or 0)))))
        if show_features:
            feats = self.service.cached_figure(
                ("features", analysis.digest, name, channels),
                lambda: figures.plot_data(
                    figures.feature_maps_figure(
                        {s: f for s, f in self.service.feature_maps(analysis).items() if s in STAGES}, channels,
                    )
                ),
            )
        else:
            feats = figures.plot_data(figures.message_figure("Tick “Show feature maps” to draw them.", 120))
        return grid, feats, self.layer_rows(name)

    def spectra_ui(self, image: str | None, model: str | None, show_features: bool, channels: float,
                   viewport: float | None = None) -> tuple[Any, Any]:
        """Browser: the spectrum grid (as many columns as the window fits) and the feature
        maps; clears instead of raising (the upload's error was shown once already)."""
        try:
            grid, feats, _ = self.spectra(image, model, show_features, channels, viewport)
            return grid, feats
        except gr.Error:
            return (figures.plot_data(figures.message_figure("No result for this input.")),
                    figures.plot_data(figures.message_figure("")))

    def layer_table(self, model: str | None) -> list[list[Any]]:
        """Browser: the layer table depends on the model only, so it shows before any upload."""
        try:
            return self.layer_rows(self.service.entry(model).name)
        except UserError:
            return []

    def layer_rows(self, name: str) -> list[list[Any]]:
        """One row per downsampling layer: the stride S, the sizes with the *effective*
        stride (in/out, below S for DiffStride: its ramp keeps extra bins), and the kept
        frequencies (the width axis is the half spectrum of the real FFT: size//2 + 1 bins)."""
        rows = []
        for layer in self.service.card(name).downsampling_layers():
            stride = layer.get("stride") or [1, 1]
            size_in, size_out = layer.get("in_size"), layer.get("out_size")
            sizes = f"{_size(size_in)} → {_size(size_out)}"
            if size_in and size_out:
                sizes += f" ({_ratio(size_in[0], size_out[0])} × {_ratio(size_in[1], size_out[1])})"
            crop = layer.get("crop")
            kept = "— (strided convolution: no crop)"
            if crop:
                h, w = crop
                kept = (f"h {h['kept']} of {h['size']} (pass {h['pass_to']:.1f}, cut {h['cut_at']:.1f}) · "
                        f"w {w['kept']} of {w['size'] // 2 + 1} (pass {w['pass_to']:.1f}, cut {w['cut_at']:.1f})")
            rows.append([layer.get("name"), layer.get("stage"), layer.get("kind"),
                         f"{float(stride[0]):.2f} × {float(stride[1]):.2f}", sizes, kept])
        return rows

    # ------------------------------------------------------------------ compare
    @user_errors
    def compare(self, image: str | None, models: Sequence[str] | str | None) -> tuple[dict, list[list[Any]], Any, Any]:
        """The same image through 2-4 models of one dataset."""
        if isinstance(models, str):
            models = [models]
        if models is not None and not isinstance(models, (list, tuple)):  # raw API: a number, an object
            raise UserError(f"'models' must be a list of 2 to {MAX_COMPARE} model names.")
        given = [str(m) for m in (models or []) if m]
        names = list(dict.fromkeys(given))
        if not 2 <= len(names) <= MAX_COMPARE:
            twice = [n for n in names if given.count(n) > 1]
            repeated = f" different: {', '.join(repr(n) for n in twice)} given more than once" if twice else ""
            raise UserError(f"Choose between 2 and {MAX_COMPARE} models to compare (got {len(names)}{repeated}).")
        cards = {n: self.service.card(n) for n in names}
        datasets = {n: str(c.dataset) for n, c in cards.items()}
        if len(set(datasets.values())) > 1:
            listing = ", ".join(f"{n} ({d})" for n, d in datasets.items())
            raise UserError(f"Models to compare must share one dataset; got {listing}.")
        results, table, strides, sizes = [], [], {}, {}
        for name in names:
            analysis = self.service.analyse(image, name)
            card = cards[name]
            shapes = analysis.map_shapes()
            resolution = {s: [int(shapes[s][1]), int(shapes[s][2])] for s in STAGES if s in shapes}
            per_stage = _stage_strides(card)
            cost = card.cost or {}
            top, prob = analysis.topk[0]
            variant = card.variant
            results.append({
                "name": name, "variant": variant, "dataset": card.dataset,
                "topk": [[c, round(p, 6)] for c, p in analysis.topk[:TOP_K]],
                # one run of this image (the first time this model saw it): not a benchmark,
                # so the page does not show it; see benchmarks/ for measured latencies
                "latency_ms": round(float(analysis.summary.latency_ms), 3),
                "flops": cost.get("flops"), "params": cost.get("params"),
                "test_acc": card.test_acc, "training": budget(card),
                "strides": {s: list(v) for s, v in per_stage.items()}, "resolution": resolution,
            })
            table.append([
                name if variant in (None, name) else f"{name} ({variant})",
                f"{top} ({100 * prob:.1f})",
                None if card.test_acc is None else round(100 * float(card.test_acc), 2),
                budget(card, short=True),
                None if cost.get("flops") is None else round(cost["flops"] / 1e9, 2),
                None if cost.get("params") is None else round(cost["params"] / 1e6, 2),
                " → ".join(str(h) if h == w else f"{h}×{w}" for h, w in resolution.values()),
            ])
            strides[name] = per_stage
            sizes[name] = {s: tuple(v) for s, v in resolution.items()}
        stages = [s for s in STAGES if any(s in v for v in sizes.values())]
        return (
            {"models": results},
            table,
            figures.strides_figure(strides, stages),
            figures.resolution_figure(sizes, stages),
        )

    @staticmethod
    def compare_key(image: str | None, models: Sequence[str] | None) -> str:
        """What the Compare outputs on screen belong to (the image file and the models)."""
        return f"{image}|{'|'.join(models or [])}"

    def compare_cleared(self, message: str) -> list[Any]:
        """Browser Compare outputs with nothing computed: status, table, plots, labels, key."""
        empty = figures.plot_data(figures.message_figure(""))
        return ([message, [], empty, empty] + [gr.update(value=None, visible=False)] * MAX_COMPARE + [""])

    def compare_view(self, image: str | None, models: Sequence[str] | None) -> list[Any]:
        """Browser Compare: status line, table, plots, the side-by-side labels and the key
        of what they show. Problems go in the status line (no toast: an upload's problem
        was reported once already; a selection problem is shown where it is fixed)."""
        models = list(models or [])
        if image is None:
            return self.compare_cleared("Upload an image (or pick an example) to compare the models on it.")
        try:
            summary, table, strides, resolution = self.compare(image, models)
        except gr.Error as exc:
            return self.compare_cleared(f"⚠️ {exc.message}")
        labels = []
        for slot in range(MAX_COMPARE):
            if slot < len(summary["models"]):
                m = summary["models"][slot]
                labels.append(gr.update(value={c: p for c, p in m["topk"]}, visible=True, label=m["name"]))
            else:
                labels.append(gr.update(value=None, visible=False))
        digest = self.service.analyse(image, summary["models"][0]["name"]).digest
        truth = self.true_label(digest)
        status = f"Same image through {len(models)} models" + (f" · true label: **{truth}**" if truth else "")
        return [status, table, strides, resolution] + labels + [self.compare_key(image, models)]

    def compare_auto(self, image: str | None, models: Sequence[str] | None, active_tab: str | None,
                     shown: str | None) -> list[Any]:
        """Browser, after the image or the model choice changed: recompute when Compare is
        on screen; otherwise clear (no model runs for a tab nobody looks at), so that
        opening Compare later recomputes and nothing stale is ever shown."""
        if active_tab == COMPARE_TAB:
            if shown == self.compare_key(image, models):
                return [gr.skip()] * (5 + MAX_COMPARE)
            return self.compare_view(image, models)
        if not shown:
            return [gr.skip()] * (5 + MAX_COMPARE)
        return self.compare_cleared("Open this tab again to compare the models on the current image.")

    def select_tab(self, image: str | None, models: Sequence[str] | None, shown: str | None,
                   evt: gr.SelectData) -> list[Any]:
        """Browser tab click: remember the tab; Compare runs only when what it shows is not
        for the current image and models (other tabs run nothing)."""
        tab = str(evt.value)
        if tab != COMPARE_TAB:
            return [tab] + [gr.skip()] * (5 + MAX_COMPARE)
        return [tab] + self.compare_auto(image, models, COMPARE_TAB, shown)

    # ------------------------------------------------------------------ training
    @user_errors
    def training(
        self, models: Sequence[str] | str | None = None, stride_model: str | None = None
    ) -> tuple[Any, Any, str, list[list[Any]]]:
        """Curves of the chosen models (all by default), stride trajectories of one model,
        the reproduction table and the per-model overview, all from the model cards."""
        names = self._chosen_names(models)
        cards = {n: self.service.card(n) for n in names}
        stride_name = stride_model or self.service.default_name()
        return (
            training_views.curves(cards),
            training_views.strides(self.service.card(stride_name), stride_name),
            training_views.reproduction(cards),
            training_views.overview(cards),
        )

    # ------------------------------------------------------------------ robustness
    def _chosen_names(self, models: Sequence[str] | str | None) -> list[str]:
        """The models a tab was asked for (all by default), each known, or a clear UserError."""
        if not self.service.names():
            raise UserError(self.service.no_models_message())
        if isinstance(models, str):
            models = [models]
        names = [m for m in (self.service.names() if models is None else models) if m]
        unknown = [n for n in names if n not in self.service.names()]
        if unknown:
            raise UserError(f"Unknown model '{unknown[0]}'; the available models are {', '.join(self.service.names())}.")
        return names

    @user_errors
    def robustness(self, models: Sequence[str] | str | None = None,
                   corruption: str | None = None) -> tuple[str, list[list[str]], list[list[str]], Any, Any, Any]:
        """The measured figures of the chosen models (all by default): a note on what was
        measured, the summary table, the paired differences from the baseline, accuracy vs
        shift, vs filter radius and vs severity of the chosen corruption (default: the mean
        of all corruptions)."""
        names = self._chosen_names(models)
        document = self.service.robustness()
        return (
            robustness_views.measured_note(document, names),
            robustness_views.summary_table(document, names),
            robustness_views.paired_table(document, names),
            robustness_views.shift_figure(document, names),
            robustness_views.frequency_figure(document, names),
            robustness_views.corruption_figure(document, names, corruption or robustness_views.MEAN_OF_ALL),
        )

    @user_errors
    def robustness_probe(self, image: str | None, models: Sequence[str] | str | None = None,
                         family: str = "shift (circular)") -> tuple[Any, Any, list[list[str]]]:
        """One image transformed step by step (a shift, a filter or a corruption):
        the steps as one picture, each model's confidence per step, and a table of top classes."""
        if image is None:
            raise UserError("Upload an image (or pick an example) to probe it.")
        names = self._chosen_names(models)
        if not names:
            raise UserError("Tick at least one model to probe the image with.")
        labels, picture, results = self.service.probe(image, names, family)
        return picture, robustness_views.probe_figure(labels, results, family), robustness_views.probe_rows(labels, results)

    def robustness_probe_tab(self, image: str | None, models: Sequence[str] | None, family: str,
                             evt: gr.SelectData) -> tuple[Any, Any, list[list[str]]]:
        """Browser tab click: opening Robustness probes the current image; other tabs change nothing."""
        if str(evt.value) != ROBUSTNESS_TAB:
            return gr.skip(), gr.skip(), gr.skip()
        return self.robustness_probe_ui(image, models, family, ROBUSTNESS_TAB)

    def robustness_probe_ui(self, image: str | None, models: Sequence[str] | None, family: str,
                            active_tab: str | None = ROBUSTNESS_TAB) -> tuple[Any, Any, list[list[str]]]:
        """The browser's automatic probe, while the Robustness tab is open: cleared (never an
        error toast) without an image or a model, or on a refused upload, which the Classify
        tab already reported."""
        empty = (None, figures.plot_data(figures.message_figure("Upload an image to probe it.", 300)), [])
        if image is None or not models:
            return empty
        if active_tab != ROBUSTNESS_TAB:  # no model runs for a tab nobody looks at
            return None, figures.plot_data(figures.message_figure("Open this tab to probe the current image.", 300)), []
        try:
            return self.robustness_probe(image, models, family)
        except gr.Error as error:
            return None, figures.plot_data(figures.message_figure(str(error.message)[:200], 300)), []

    # ------------------------------------------------------------------ models
    def models(self) -> dict:
        """The bundled models (name, variant, dataset, test accuracy, size, training budget), the default
        model, and the skipped files with their reasons."""
        entries = []
        for e in self.service.entries():
            entries.append({
                "name": e.name, "variant": e.variant, "dataset": e.dataset, "test_acc": e.test_acc,
                "size_bytes": e.size_bytes, "file": str(e.file), "training": budget(e.card),
            })
        return {
            "models_dir": str(self.service.models_dir),
            "default": self.service.default_name(),
            "models": entries,
            "skipped": [{"file": f, "reason": r} for f, r in self.service.skipped()],
        }


def _size(size: Any) -> str:
    return "?" if not size else f"{size[0]}×{size[1]}"


def _ratio(size_in: Any, size_out: Any) -> str:
    try:
        return f"{float(size_in) / float(size_out):.2f}"
    except (TypeError, ValueError, ZeroDivisionError):
        return "?"


def _stage_strides(card: RunCard) -> dict[str, tuple[float, float]]:
    """{stage: (s_h, s_w)} from the card's layers (the first downsampling layer of a stage)."""
    out: dict[str, tuple[float, float]] = {}
    for layer in card.downsampling_layers():
        stage = layer.get("stage")
        if stage in out or not layer.get("stride"):
            continue
        s = layer["stride"]
        out[stage] = (float(s[0]), float(s[1]))
    return out

