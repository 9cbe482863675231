"""Training tab: curves, stride trajectories and the reproduction table from the model cards.

The figures and the table come from ``training/report.py`` (``curves_figure``,
``stride_figure``, ``results_markdown``); this module only selects cards and adds the
per-model overview rows.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from serving.cards import RunCard
from training.report import curves_figure, results_markdown, stride_figure

from .figures import message_figure, plot_data

__all__ = ["curves", "strides", "reproduction", "overview", "budget", "clean_source", "OVERVIEW_HEADERS"]

OVERVIEW_HEADERS = ["model", "variant", "test acc (%)", "trained", "strides (init)", "learned strides (per layer, h×w)"]


def clean_source(source: Any) -> str:
    """A card's data source without the folder it was read from ("CIFAR-10 (JPEG copy) from
    /path" -> "CIFAR-10 (JPEG copy)"): server paths do not belong on the page."""
    return str(source or "unknown data").split(" from ")[0].strip()


def budget(card: RunCard, short: bool = False) -> str:
    """How a model was trained, from its card: epochs, images, data, hardware, so that a
    short smoke run is never mistaken for a reproduction of the paper's results."""
    data = card.data or {}
    epochs, done = card.epochs, card.epoch
    n_train = data.get("n_train")
    images = f"{int(n_train):,}" if isinstance(n_train, (int, float)) else "?"
    if short:
        ep = f"{done}/{epochs} ep." if done is not None and done != epochs else f"{epochs} ep."
        return f"{ep} · {images} imgs"
    plural = "" if epochs == 1 else "s"
    if done is not None and epochs is not None and done != epochs:
        runs = f"{done} of {epochs} epochs (unfinished)"
    else:
        runs = f"{epochs if epochs is not None else '?'} epoch{plural}"
    hardware = card.hardware or card.extra.get("device") or (card.config or {}).get("device")
    n_test = data.get("n_test")
    tests = f" / {int(n_test):,} test" if isinstance(n_test, (int, float)) else ""
    return (f"{runs}, {images} train{tests} images of {clean_source(data.get('source'))}; "
            f"hardware {hardware or 'not recorded'}")


def _named(name: str, card: RunCard) -> RunCard:
    """The card as ``training.report`` expects it: a ``name``, and ``data.source`` a string."""
    data = dict(card.data or {})
    data["source"] = data.get("source") or "unknown source"
    return dataclasses.replace(card, name=card.name or name, data=data)


def curves(cards: dict[str, RunCard]) -> Any:
    if not cards:
        return plot_data(message_figure("No model selected: tick one or more models above.", 300))
    if not any(card.history for card in cards.values()):
        return plot_data(message_figure("No training history in the selected model cards.", 300))
    fig = curves_figure([_named(n, c) for n, c in cards.items()],
                        title="Training curves (test: solid line, filled dot; train: dashed, open diamond)")
    _readable_curves(fig, max((len(c.history or []) for c in cards.values()), default=1))
    return fig


def _readable_curves(fig: Any, epochs: int) -> None:
    """Whole-number epoch ticks, train and test told apart by their markers (a one-epoch
    run is a single point, where line dashes do not show), accuracy hovered in %."""
    fig.update_xaxes(tick0=1, dtick=max(1, -(-epochs // 10)), range=[0.5, epochs + 0.5])
    for trace in fig.data:
        name = str(trace.name or "")
        split = "train" if name.endswith("(train)") else "test"
        trace.marker = {"symbol": "diamond-open" if split == "train" else "circle", "size": 9,
                        "line": {"width": 2}}
        run = name.rsplit(" (", 1)[0]
        if trace.xaxis in (None, "x"):
            trace.hovertemplate = f"{run}<br>{split} accuracy: %{{y:.1%}}<br>epoch %{{x}}<extra></extra>"
        else:
            trace.hovertemplate = f"{run}<br>{split} loss: %{{y:.3f}}<br>epoch %{{x}}<extra></extra>"


def strides(card: RunCard | None, name: str | None) -> Any:
    if card is None:
        return plot_data(message_figure("Choose a model.", 300))
    if not any(h.get("strides") for h in card.history or []):
        learned = card.learned_strides or {}
        what = "its card has no per-epoch history" if learned else "it has no learnable strides"
        return plot_data(message_figure(f"No stride trajectory for '{name}' ({card.variant}): {what}.", 300))
    fig = stride_figure(_named(name or "?", card))
    epochs = len(card.history or [])
    fig.update_xaxes(tick0=1, dtick=max(1, -(-epochs // 10)), range=[0.5, epochs + 0.5])
    for trace in fig.data:  # s_h filled, s_w open: distinct even where a run is one point
        trace.marker = {"size": 9, "symbol": "circle-open" if str(trace.name).endswith("s_w") else "circle",
                        "line": {"width": 2}}
    return fig


def reproduction(cards: dict[str, RunCard]) -> str:
    """The papers' table (mean ± std over seeds per stride tuple and variant), from the cards."""
    if not cards:
        return "_No model selected._"
    named = [_named(n, c) for n, c in cards.items()]
    text = results_markdown(named)
    # The table's heading promises "mean ± std over seeds"; say so when every cell is one run.
    cells: dict[tuple, int] = {}
    for card in named:
        key = (card.dataset, card.variant, tuple(card.strides or ()))
        cells[key] = cells.get(key, 0) + 1
    if cells and max(cells.values()) == 1:
        text = text.replace("mean ± std over seeds", "one run (seed) per cell, so no ± std")
    text = re.sub(r"^## ", "#### ", text, flags=re.M)  # under the tab's own heading
    unfinished = [n for n, c in cards.items() if not c.is_finished]
    if unfinished:
        text += f"\n_Not in the table (training unfinished or no history): {', '.join(unfinished)}._\n"
    return text


def overview(cards: dict[str, RunCard]) -> list[list[Any]]:
    rows = []
    for name, card in cards.items():
        acc = card.test_acc
        learned = card.learned_strides or {}
        rows.append([
            name,
            f"{card.variant} ({card.dataset})",
            None if acc is None else round(100 * float(acc), 2),
            budget(card),
            ", ".join(f"{float(s):g}" for s in card.strides or []),
            ", ".join(f"{v[0]:.2f}×{v[1]:.2f}" for v in learned.values()) or "— (fixed strides)",
        ])
    return rows
