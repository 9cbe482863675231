"""Event handlers: Gradio-facing wrappers around :class:`~dashboard.service.DashboardService`.

Each public handler backs one API endpoint (``/classify``, ``/spectra``, ``/compare``,
``/training``, ``/models``). User-facing problems become ``gr.Error`` with a plain sentence
(no traceback in the UI or the server log); anything unexpected is logged with its
traceback and reported as an internal error, and the server keeps serving.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Sequence

import gradio as gr
import numpy as np

from . import figures
from .service import STAGES, Analysis, DashboardService, UserError

__all__ = ["Handlers", "MAX_COMPARE"]

log = logging.getLogger("dashboard")
MAX_COMPARE = 4
TOP_K = 5
VIEW_SCALE = 8  # 32x32 -> 256x256, nearest neighbour


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


class Handlers:
    def __init__(self, service: DashboardService) -> None:
        self.service = service

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
        view = np.asarray(analysis.prediction.model_input, dtype=np.uint8)
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
        return (
            f"**{top}** ({_percent(prob)}) · model `{analysis.model_name}` "
            f"({card.get('variant', '?')}, {card.get('dataset', '?')} test accuracy {_percent(card.get('test_acc'))}) "
            f"· {float(analysis.prediction.latency_ms):.1f} ms"
        )

    # ------------------------------------------------------------------ spectra
    @user_errors
    def spectra(
        self, image: str | None, model: str | None = None, show_features: bool = False, channels: float = 3
    ) -> tuple[Any, Any, list[list[Any]]]:
        """Spectrum grid with crop boxes, optional feature maps, and the layer table."""
        if image is None:
            empty = figures.plot_data(figures.message_figure("Upload an image to see its spectra."))
            return empty, figures.plot_data(figures.message_figure("")), []
        analysis = self.service.analyse(image, model)
        name = analysis.model_name
        grid = self.service.cached_figure(
            ("spectra", analysis.digest, name),
            lambda: figures.plot_data(figures.spectra_figure(self.service.spectrum_panels(analysis))),
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
        return grid, feats, self.service.layer_rows(name)

    def spectra_ui(self, image: str | None, model: str | None, show_features: bool, channels: float):
        """Browser chain after classify: like :meth:`spectra`, but clears instead of raising."""
        try:
            return self.spectra(image, model, show_features, channels)
        except gr.Error:
            empty = figures.plot_data(figures.message_figure("No result for this input."))
            return empty, figures.plot_data(figures.message_figure("")), []

    # ------------------------------------------------------------------ compare
    @user_errors
    def compare(self, image: str | None, models: Sequence[str] | str | None) -> tuple[dict, list[list[Any]], Any, Any]:
        """The same image through 2-4 models of one dataset."""
        if isinstance(models, str):
            models = [models]
        names = list(dict.fromkeys(m for m in (models or []) if m))
        if not 2 <= len(names) <= MAX_COMPARE:
            raise UserError(f"Choose between 2 and {MAX_COMPARE} models to compare (got {len(names)}).")
        cards = {n: self.service.card(n) for n in names}
        datasets = {n: str(c.get("dataset")) for n, c in cards.items()}
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
            cost = card.get("cost") or {}
            top, prob = analysis.topk[0]
            latency = float(analysis.prediction.latency_ms)
            results.append({
                "name": name, "variant": card.get("variant"), "dataset": card.get("dataset"),
                "topk": [[c, round(p, 6)] for c, p in analysis.topk[:TOP_K]],
                "latency_ms": round(latency, 3), "flops": cost.get("flops"), "params": cost.get("params"),
                "test_acc": card.get("test_acc"), "strides": {s: list(v) for s, v in per_stage.items()},
                "resolution": resolution,
            })
            table.append([
                name, card.get("variant"), top, round(100 * prob, 1),
                None if card.get("test_acc") is None else round(100 * float(card["test_acc"]), 2),
                None if cost.get("flops") is None else round(cost["flops"] / 1e6, 1),
                None if cost.get("params") is None else round(cost["params"] / 1e6, 2),
                round(latency, 2),
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

    def compare_labels(self, summary: dict | None) -> list[Any]:
        """Fill the side-by-side label slots from ``/compare``'s JSON (browser only)."""
        models = (summary or {}).get("models") or []
        updates = []
        for slot in range(MAX_COMPARE):
            if slot < len(models):
                m = models[slot]
                updates.append(gr.update(
                    value={c: p for c, p in m["topk"]}, visible=True,
                    label=f"{m['name']} · {m['latency_ms']:.1f} ms",
                ))
            else:
                updates.append(gr.update(value=None, visible=False))
        return updates

    # ------------------------------------------------------------------ training
    @user_errors
    def training(
        self, models: Sequence[str] | str | None = None, stride_model: str | None = None
    ) -> tuple[Any, Any, str, list[list[Any]]]:
        """Curves of the chosen models (all by default), stride trajectories of one model,
        the reproduction table and the per-model overview, all from the model cards."""
        from . import training_views

        if isinstance(models, str):
            models = [models]
        names = [m for m in (self.service.names() if models is None else models) if m]
        if not self.service.names():
            raise UserError(self.service.no_models_message())
        cards = {n: self.service.card(n) for n in names}
        stride_name = stride_model or self.service.default_name()
        return (
            training_views.curves(cards),
            training_views.strides(self.service.card(stride_name), stride_name),
            training_views.reproduction(cards),
            training_views.overview(cards),
        )

    # ------------------------------------------------------------------ models
    def models(self) -> dict:
        """The bundled models (name, variant, dataset, test accuracy, size, training budget), the default
        model, and the skipped files with their reasons."""
        entries = []
        for e in self.service.entries():
            entries.append({
                "name": e.name, "variant": e.variant, "dataset": e.dataset, "test_acc": e.test_acc,
                "size_bytes": e.size_bytes, "file": str(e.file),
            })
        return {
            "models_dir": str(self.service.models_dir),
            "default": self.service.default_name(),
            "models": entries,
            "skipped": [{"file": f, "reason": r} for f, r in self.service.skipped()],
        }


def _stage_strides(card: dict) -> dict[str, tuple[float, float]]:
    """``{stage: (s_h, s_w)}`` from the card's layers (the first downsampling layer of a stage)."""
    out: dict[str, tuple[float, float]] = {}
    for layer in card.get("layers") or []:
        stage = layer.get("stage")
        if stage in out or not layer.get("stride"):
            continue
        s = layer["stride"]
        out[stage] = (float(s[0]), float(s[1]))
    return out
