"""Robustness tab: the lab's measured figures (``robustness.json``) and the per-upload probe.

Figures are plain Plotly JSON (see :mod:`dashboard.figures`): accuracy against the shift
distance, against the filter radius (low- and high-pass), and against the severity of a
corruption, one line per model with its 95 % interval as error bars; and, for the image on
screen, how each model's top class and confidence move as the image is transformed.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustness.corruptions import SEVERITIES
from robustness.report import BASELINE, SUMMARY_HEADERS, difference_rows, summary_rows
from robustness.stats import Count, pooled

from .figures import FONT, PALETTE, message_figure, plot_data

__all__ = ["SUMMARY_HEADERS", "MEAN_OF_ALL", "PAIRED_LABEL", "summary_table", "paired_table", "shift_figure", "frequency_figure",
           "corruption_figure", "probe_figure", "probe_rows", "PROBE_HEADERS", "measured_note"]

MEAN_OF_ALL = "mean of all corruptions"
PAIRED_LABEL = f"Difference from {BASELINE}, trial by trial on the same images (points, 95 % interval)"
PROBE_HEADERS = ["model", "step", "top class", "confidence", "p(original class)"]
HEIGHT = 380


def _layout(title: str, x_title: str, **extra: Any) -> dict:
    return {
        "title": {"text": title, "font": {"size": 14}}, "font": FONT, "height": HEIGHT,
        # The legend sits below the x-axis title (not on it): a taller bottom margin holds both.
        "margin": {"l": 55, "r": 10, "t": 40, "b": 110},
        "xaxis": {"title": {"text": x_title, "standoff": 4}}, "yaxis": {"title": {"text": "accuracy (%)"}},
        "legend": {"orientation": "h", "y": -0.28, "yanchor": "top"}, **extra,
    }


def _trace(name: str, k: int, xs: Sequence[float], counts: Sequence[Count], dash: str = "solid") -> dict:
    rates = [100 * c.rate for c in counts]
    intervals = [c.interval() for c in counts]
    return {
        "type": "scatter", "mode": "lines+markers", "name": name, "x": list(xs), "y": rates,
        "line": {"color": PALETTE[k % len(PALETTE)], "dash": dash},
        "error_y": {"type": "data", "symmetric": False, "array": [100 * hi - r for (_, hi), r in zip(intervals, rates)],
                    "arrayminus": [r - 100 * lo for (lo, _), r in zip(intervals, rates)], "thickness": 1},
        "customdata": [[c.hits, c.n] for c in counts],
        "hovertemplate": f"{name}<br>%{{x}}: %{{y:.1f}} %% (%{{customdata[0]}} of %{{customdata[1]}})<extra></extra>",
    }


def _selected(document: dict | None, names: Sequence[str]) -> list[str]:
    return [n for n in names if document and n in document["models"]]


def _nothing_to_show(document: dict | None) -> Any:
    text = "Not measured yet: run python -m robustness." if document is None else "No measured model selected."
    return plot_data(message_figure(text, HEIGHT))


def measured_note(document: dict | None, names: Sequence[str]) -> str:
    """What the figures are and which selected models have none (e.g. retrained since)."""
    if document is None:
        return ("No robustness figures for these models yet: run `python -m robustness` (53–57 min for the five "
                "bundled models on a busy 2-core CPU, benchmarks/RESULTS.md), then reload the page.")
    missing = [n for n in names if n not in document["models"]]
    plan = document["plan"]
    text = (f"Measured with `python -m robustness` on the {document['data']} ({plan['images']} images per shift "
            f"figure, {plan['corruption_images']} per corruption, {plan['filter_images']} per filter and radius; "
            "error bars and ± are 95 % intervals). The per-upload view below works on any image.")
    if missing:
        text += f" Not measured (new or changed since): {', '.join(missing)}."
    return text


def summary_table(document: dict | None, names: Sequence[str]) -> list[list[str]]:
    chosen = _selected(document, names)
    return summary_rows(document, chosen) if chosen else []


def paired_table(document: dict | None, names: Sequence[str]) -> list[list[str]]:
    """Each chosen model's paired difference from :data:`robustness.report.BASELINE` per column
    (empty when the baseline or the outcomes were not measured)."""
    chosen = _selected(document, names)
    return difference_rows(document, BASELINE, chosen) if chosen else []


def shift_figure(document: dict | None, names: Sequence[str], mode: str = "circular") -> Any:
    chosen = _selected(document, names)
    if not chosen:
        return _nothing_to_show(document)
    data = []
    for k, name in enumerate(chosen):
        rows = document["models"][name]["shift"][mode]["by_distance"]
        data.append(_trace(name, k, [r[0] for r in rows], [Count.from_list(r[1:]) for r in rows]))
    words = "circular" if mode == "circular" else "zero-padded"
    return plot_data({"data": data, "layout": _layout(f"Accuracy vs {words} shift", "shift distance (px)")})


def frequency_figure(document: dict | None, names: Sequence[str]) -> Any:
    chosen = _selected(document, names)
    if not chosen:
        return _nothing_to_show(document)
    data = []
    for k, name in enumerate(chosen):
        for kind, dash in (("low", "solid"), ("high", "dot")):
            rows = document["models"][name]["frequency"][kind]
            trace = _trace(f"{name} {kind}-pass", k, [r[0] for r in rows], [Count.from_list(r[1:]) for r in rows], dash)
            data.append(trace)
    layout = _layout("Accuracy vs filter radius", "radius (bins): low-pass keeps r ≤ it, high-pass r > it")
    return plot_data({"data": data, "layout": layout})


def corruption_figure(document: dict | None, names: Sequence[str], corruption: str = MEAN_OF_ALL) -> Any:
    chosen = _selected(document, names)
    if not chosen:
        return _nothing_to_show(document)
    data = []
    for k, name in enumerate(chosen):
        figures = document["models"][name]
        table = figures["corruptions"]
        if corruption == MEAN_OF_ALL:
            counts = [pooled(Count.from_list(rows[k][1:]) for rows in table.values()) for k in range(len(SEVERITIES))]
        elif corruption in table:
            counts = [Count.from_list(row[1:]) for row in table[corruption]]
        else:
            return plot_data(message_figure(f"'{corruption}' was not measured.", HEIGHT))
        clean = Count.from_list(figures["clean"])
        data.append(_trace(name, k, [0, *SEVERITIES], [clean, *counts]))
    return plot_data({"data": data, "layout": _layout(f"Accuracy vs severity: {corruption}", "severity (0 = clean)")})


def probe_figure(labels: Sequence[str], results: dict[str, list[dict]], family: str) -> Any:
    """Per model, the probability of the class it gave the untouched image, step by step;
    a hollow marker where its top class changed (hover names the new class)."""
    data = []
    for k, (name, steps) in enumerate(results.items()):
        original = steps[0]["top"]
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": name, "x": list(labels),
            "y": [100 * s["p_original"] for s in steps],
            "line": {"color": PALETTE[k % len(PALETTE)]},
            "marker": {"size": 9, "symbol": ["circle" if s["top"] == original else "circle-open" for s in steps]},
            "customdata": [[s["top"], 100 * s["confidence"]] for s in steps],
            "hovertemplate": f"{name}<br>%{{x}}: p({original}) = %{{y:.1f}} %%<br>top: %{{customdata[0]}} "
                             "(%{customdata[1]:.1f} %)<extra></extra>",
        })
    layout = _layout(f"{family}: probability of each model's original class (hollow: top class changed)", "")
    layout["yaxis"] = {"title": {"text": "probability (%)"}, "range": [0, 102]}
    layout["title"]["font"]["size"] = 12
    return plot_data({"data": data, "layout": layout})


def probe_rows(labels: Sequence[str], results: dict[str, list[dict]]) -> list[list[str]]:
    rows = []
    for name, steps in results.items():
        original = steps[0]["top"]
        for label, s in zip(labels, steps):
            changed = "" if s["top"] == original else " (changed)"
            rows.append([name, label, s["top"] + changed, f"{100 * s['confidence']:.1f} %",
                         f"{100 * s['p_original']:.1f} %"])
    return rows
