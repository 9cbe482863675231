"""Training tab: curves, stride trajectories and the reproduction table from the model cards.

The figures and the table come from ``training/report.py`` (``curves_figure``,
``stride_figure``, ``results_markdown``); this module only selects cards and adds the
per-model overview rows.
"""
from __future__ import annotations

from typing import Any

from .figures import message_figure, plot_data

__all__ = ["curves", "strides", "reproduction", "overview", "OVERVIEW_HEADERS"]

OVERVIEW_HEADERS = ["model", "variant", "dataset", "strides (init)", "learned strides (per layer, h×w)", "epochs", "test acc (%)", "data"]


def _named(name: str, card: dict) -> dict:
    """The card as ``training.report`` expects it: a ``name``, and ``data.source`` a string."""
    data = dict(card.get("data") or {})
    data["source"] = data.get("source") or "unknown source"
    return {**card, "name": card.get("name") or name, "data": data}


def curves(cards: dict[str, dict]) -> Any:
    if not any(card.get("history") for card in cards.values()):
        return plot_data(message_figure("No training history in the selected model cards.", 300))
    from training.report import curves_figure

    return curves_figure([_named(n, c) for n, c in cards.items()], title="Training curves (test solid, train dashed)")


def strides(card: dict | None, name: str | None) -> Any:
    if card is None:
        return plot_data(message_figure("Choose a model.", 300))
    if not any(h.get("strides") for h in card.get("history") or []):
        learned = card.get("learned_strides") or {}
        what = "its card has no per-epoch history" if learned else "it has no learnable strides"
        return plot_data(message_figure(f"No stride trajectory for '{name}' ({card.get('variant')}): {what}.", 300))
    from training.report import stride_figure

    return stride_figure(_named(name or "?", card))


def reproduction(cards: dict[str, dict]) -> str:
    """The papers' table (mean ± std over seeds per stride tuple and variant), from the cards."""
    if not cards:
        return "_No model selected._"
    from training.report import results_markdown

    text = results_markdown([_named(n, c) for n, c in cards.items()])
    unfinished = [n for n, c in cards.items() if c.get("epochs") is None or c.get("epoch") != c.get("epochs")]
    if unfinished:
        text += f"\n_Not in the table (training unfinished or no history): {', '.join(unfinished)}._\n"
    return text


def overview(cards: dict[str, dict]) -> list[list[Any]]:
    rows = []
    for name, card in cards.items():
        data = card.get("data") or {}
        acc = card.get("test_acc")
        learned = card.get("learned_strides") or {}
        rows.append([
            name,
            card.get("variant"),
            card.get("dataset"),
            ", ".join(f"{float(s):g}" for s in card.get("strides") or []),
            ", ".join(f"{v[0]:.2f}×{v[1]:.2f}" for v in learned.values()) or "—",
            f"{card.get('epoch', 0)}/{card.get('epochs', 0)}",
            None if acc is None else round(100 * float(acc), 2),
            f"{data.get('source') or '?'} ({data.get('n_train', '?')} train / {data.get('n_test', '?')} test)",
        ])
    return rows
