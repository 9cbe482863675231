"""Results tables and plotly figures built from model cards (see ``training.checkpoint``).

The functions take typed cards (:class:`serving.cards.RunCard`, e.g.
``training.checkpoint.load_card``) so the dashboard can reuse them:

* :func:`results_table` - the papers' layout: one row per stride tuple, one column per
  variant, cells ``mean ± std`` over seeds, last row the mean over stride tuples;
* :func:`table_markdown` / :func:`table_csv` - render it;
* :func:`curves_figure` - accuracy and loss per epoch (train dashed, test solid);
* :func:`stride_figure` - the strides a DiffStride model learned, per layer, over epochs.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs

from serving.cards import RunCard
from serving.files import atomic_write, atomic_write_text
from serving.variants import VARIANT_LABELS, variant_rank

__all__ = [
    "curves_figure",
    "results_markdown",
    "results_table",
    "stride_figure",
    "strides_label",
    "table_csv",
    "table_markdown",
    "write_report",
]

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
MEAN_ROW = "mean"


def _num(value: float) -> str:
    return f"{int(value)}" if float(value).is_integer() else f"{value:g}"


def strides_label(strides: Sequence[float]) -> str:
    """``[1, 1, 2, 2, 2]`` -> ``"(1, 1, 2, 2, 2)"`` (the papers' row labels)."""
    return "(" + ", ".join(_num(s) for s in strides) + ")"


def _stats(values: Sequence[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0  # sample std over seeds
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def _seed(card: RunCard) -> int:
    return card.seed or 0  # a card without a seed counts as seed 0


def _ordered_variants(cards: Iterable[RunCard], variants: Sequence[str] | None) -> list[str]:
    present = {c.variant for c in cards}
    if variants is not None:
        return [v for v in variants if v in present]
    return sorted(present, key=lambda v: (variant_rank(v), v))


def results_table(
    cards: Sequence[RunCard],
    metric: str = "test_acc",
    *,
    dataset: str | None = None,
    variants: Sequence[str] | None = None,
    finished_only: bool = True,
    keep_empty: bool = False,
) -> list[dict]:
    """The papers' table as a list of rows (no pandas).

    Args:
        cards: model cards; only ``dataset`` (if given) and, by default, finished runs count.
        metric: a card field holding a number (``test_acc``, ``test_loss``).
        variants: column order (default: table order, ``serving.variants``; present ones only).
        keep_empty: keep every column of ``variants`` even without runs.

    Returns rows ``{"strides": "(1, 1, 2, 2, 2)", "strides_tuple": [...], "cells": {variant:
    {"mean", "std", "n", "values", "seeds"} or None}}`` in first-seen order of the stride
    tuples, then a final row with ``"strides": "mean"``: per variant the mean over the
    rows of the cell means; its std is the std over seeds of the per-seed row averages
    when every row has the same seeds (else 0). Accuracies stay fractions in [0, 1].
    """
    selected = [c for c in cards if (dataset is None or c.dataset == dataset)
                and (not finished_only or c.is_finished) and isinstance(getattr(c, metric, None), (int, float))]
    columns = list(variants) if keep_empty and variants is not None else _ordered_variants(selected, variants)
    grid: dict[tuple, dict[str, dict[int, float]]] = {}
    for card in selected:
        if card.variant not in columns:
            continue
        key = tuple(float(s) for s in card.strides)
        grid.setdefault(key, defaultdict(dict))[card.variant][_seed(card)] = float(getattr(card, metric))

    rows = []
    for key, by_variant in grid.items():
        cells: dict[str, Any] = {}
        for variant in columns:
            seeds = by_variant.get(variant)
            cells[variant] = _stats([seeds[s] for s in sorted(seeds)]) | {"seeds": sorted(seeds)} if seeds else None
        rows.append({"strides": strides_label(key), "strides_tuple": list(key), "cells": cells})

    mean_cells: dict[str, Any] = {}
    for variant in columns:
        present = [row["cells"][variant] for row in rows if row["cells"][variant]]
        if not present:
            mean_cells[variant] = None
            continue
        means = [cell["mean"] for cell in present]
        seed_sets = {tuple(cell["seeds"]) for cell in present}
        std = 0.0
        if len(seed_sets) == 1 and len(present[0]["seeds"]) > 1:
            per_seed = [sum(cell["values"][i] for cell in present) / len(present) for i in range(len(present[0]["seeds"]))]
            std = _stats(per_seed)["std"]
        mean_cells[variant] = {"mean": sum(means) / len(means), "std": std, "n": len(present), "values": means,
                               "seeds": present[0]["seeds"] if len(seed_sets) == 1 else []}
    if rows:
        rows.append({"strides": MEAN_ROW, "strides_tuple": None, "cells": mean_cells})
    return rows


def _columns(rows: Sequence[dict]) -> list[str]:
    return list(rows[0]["cells"]) if rows else []


def _cell_text(cell: dict | None, percent: bool, digits: int, show_n: bool = False) -> str:
    if not cell:
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{cell['mean'] * scale:.{digits}f}"
    if len(cell.get("seeds") or []) > 1:
        text += f" ± {cell['std'] * scale:.{digits}f}"
    if show_n and cell.get("seeds"):
        text += f" (n={len(cell['seeds'])})"
    return text


def table_markdown(rows: Sequence[dict], *, percent: bool = True, digits: int = 2, labels: bool = True,
                   show_n: bool = False) -> str:
    """Markdown table of :func:`results_table` rows (accuracies in % by default; ``show_n``:
    the number of seeds in every cell, e.g. ``93.10 ± 0.20 (n=3)``)."""
    columns = _columns(rows)
    if not columns:
        return "_no finished runs_\n"
    names = [VARIANT_LABELS.get(v, v) if labels else v for v in columns]
    lines = ["| strides | " + " | ".join(names) + " |", "|---|" + "---:|" * len(columns)]
    for row in rows:
        label = "**mean**" if row["strides"] == MEAN_ROW else row["strides"]
        lines.append(f"| {label} | " + " | ".join(_cell_text(row["cells"][v], percent, digits, show_n) for v in columns) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[dict], *, dataset: str | None = None, percent: bool = True) -> str:
    """CSV of the same table: ``dataset, strides, <variant> mean, <variant> std, <variant> n, ...``."""
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "strides"] + [f"{v} {k}" for v in columns for k in ("mean", "std", "n")])
    scale = 100.0 if percent else 1.0
    for row in rows:
        out = [dataset or "", row["strides"]]
        for v in columns:
            cell = row["cells"][v]
            out += ["", "", 0] if not cell else [f"{cell['mean'] * scale:.4f}", f"{cell['std'] * scale:.4f}", len(cell.get("seeds") or [])]
        writer.writerow(out)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------
def _run_label(card: RunCard) -> str:
    return card.name or f"{card.variant} {strides_label(card.strides)} seed {_seed(card)}"


def curves_figure(cards: Sequence[RunCard], title: str | None = None) -> go.Figure:
    """Accuracy (left) and loss (right) per epoch of every run: test solid, train dashed.

    Returns a ``plotly.graph_objects.Figure`` (one colour and legend group per run).
    """
    # start-up: plotly.subplots loads plotly's validators (~0.1 s); the dashboard imports this module at start
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy", "loss"))
    palette = qualitative.Plotly
    for index, card in enumerate(cards):
        history = card.history or []
        if not history:
            continue
        label, color = _run_label(card), palette[index % len(palette)]
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        for col, metric in ((1, "acc"), (2, "loss")):
            for split, dash in (("test", "solid"), ("train", "dash")):
                fig.add_trace(go.Scatter(
                    x=epochs, y=[h.get(f"{split}_{metric}") for h in history], mode="lines+markers" if len(epochs) < 30 else "lines",
                    name=f"{label} ({split})", legendgroup=label, showlegend=col == 1,
                    line={"color": color, "dash": dash},
                    hovertemplate=f"{label}<br>{split} {metric}: %{{y:.4f}}<br>epoch %{{x}}<extra></extra>",
                ), row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="accuracy", tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title_text="cross-entropy", row=1, col=2)
    fig.update_layout(title=title or "training curves (test solid, train dashed)", template="plotly_white",
                      legend={"groupclick": "togglegroup"}, height=500)
    return fig


def stride_figure(card: RunCard, title: str | None = None) -> go.Figure:
    """The learned strides of each DiffStride layer per epoch: ``s_h`` solid, ``s_w`` dashed.

    Uses ``history[i]["strides"]`` (``{layer: [s_h, s_w]}``). Returns a plotly Figure
    (empty, with a note, for models without learnable strides).
    """
    fig = go.Figure()
    history = [h for h in card.history or [] if h.get("strides")]
    layers = list(history[-1]["strides"]) if history else list(card.learned_strides or {})
    palette = qualitative.Plotly
    for index, layer in enumerate(layers):
        epochs = [h.get("epoch") for h in history if layer in h["strides"]]
        for axis, dash in ((0, "solid"), (1, "dash")):
            fig.add_trace(go.Scatter(
                x=epochs, y=[h["strides"][layer][axis] for h in history if layer in h["strides"]],
                mode="lines+markers" if len(epochs) < 30 else "lines",
                name=f"{layer} {'s_h' if axis == 0 else 's_w'}",
                legendgroup=layer, line={"color": palette[index % len(palette)], "dash": dash},
            ))
    if not layers:
        fig.add_annotation(text=f"{card.variant} has no learnable strides", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title or f"learned strides: {_run_label(card)}", xaxis_title="epoch",
                      yaxis_title="stride", template="plotly_white", height=450)
    return fig


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------
def _write_html(fig, path: Path) -> None:
    # 'directory': one shared plotly.min.js next to the pages (works offline, small pages).
    atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs="directory", full_html=True))
    if not (path.parent / "plotly.min.js").exists():
        atomic_write_text(path.parent / "plotly.min.js", get_plotlyjs())


def results_markdown(cards: Sequence[RunCard], metric: str = "test_acc", title: str | None = None) -> str:
    """One table per dataset, with the data source noted under it (e.g. "CIFAR-10 (JPEG copy)")."""
    parts = [f"# {title}\n"] if title else []
    datasets = sorted({c.dataset for c in cards}, key=lambda d: (d != "cifar10", d))
    for dataset in datasets:
        rows = results_table(cards, metric, dataset=dataset)
        subset = [c for c in cards if c.dataset == dataset and c.is_finished]
        infos = [c.data or {} for c in subset]
        sources = sorted({str(info.get("source") or "?").split(" from ")[0] for info in infos})
        sizes = sorted({(info.get("n_train"), info.get("n_test")) for info in infos}, key=str)
        epochs = sorted({c.epochs for c in subset}, key=str)
        what = "test accuracy (%)" if metric == "test_acc" else metric
        parts.append(f"## {DATASET_LABELS.get(dataset, dataset)}: {what}, mean ± std over seeds\n")
        parts.append(table_markdown(rows, show_n=True))
        if subset:
            parts.append(
                f"\nData: {'; '.join(sources)}; train/test images: {', '.join(f'{a}/{b}' for a, b in sizes)}; "
                f"epochs: {', '.join(str(e) for e in epochs)}; {len(subset)} finished runs.\n"
            )
    if not datasets:
        parts.append("_no finished runs_\n")
    return "\n".join(parts)


def write_report(cards: Sequence[RunCard], out_dir: str | os.PathLike, title: str | None = None) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``curves_<dataset>.html`` and
    ``strides/<name>.html`` (learnable-stride runs) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    atomic_write_text(out / "results.md", results_markdown(cards, title=title))
    written["markdown"] = out / "results.md"
    datasets = sorted({c.dataset for c in cards}, key=lambda d: (d != "cifar10", d))
    # Same columns for every dataset, so the CSV has one header.
    variants = _ordered_variants([c for c in cards if c.is_finished], None)
    csv_text = ""
    for index, dataset in enumerate(datasets):
        text = table_csv(results_table(cards, dataset=dataset, variants=variants, keep_empty=True), dataset=dataset)
        csv_text += text if index == 0 else text.split("\n", 1)[1]
    csv_text = csv_text or table_csv([])
    atomic_write_text(out / "results.csv", csv_text)
    written["csv"] = out / "results.csv"
    for dataset in datasets:
        subset = [c for c in cards if c.dataset == dataset]
        path = out / f"curves_{dataset}.html"
        _write_html(curves_figure(subset, title=f"{DATASET_LABELS.get(dataset, dataset)}: training curves"), path)
        written[f"curves_{dataset}"] = path
    for card in cards:
        if card.learned_strides:
            path = out / "strides" / f"{card.name or _run_label(card)}.html"
            _write_html(stride_figure(card), path)
            written[f"strides/{path.stem}"] = path
    return written
