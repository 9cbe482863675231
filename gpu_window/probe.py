"""The protocol probe: which setting of the short protocol costs accuracy. One variant trains
under the protocol and changes of it (``VARIANT[:FLAG=VALUE,...]``), side by side, with a
short stability check of the fragile one; the verdict, ``best.json`` in the work folder, is
what a later ``models --args-from`` call of the same window trains with."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any

from serving.cards import RunCard
from serving.files import atomic_write_json

from .bench import profile_step
from .plan import _train_namespace
from .record import Window, WindowError, work_dir
from .runs import mode_train

if TYPE_CHECKING:  # training.sweep imports torch
    from training.sweep import SweepConfig

#: The probe's default points: protocol v2 as committed, each of the two levers window 2
#: measured only together (they cost 1.3 pt together), lighter label smoothing (+0.02 pt in
#: window 2, one run), and a stability check of the fragile variant, the hybrid, under the
#: protocol at full size: its first 4 epochs (the real 3-epoch warm-up to the peak lr, then
#: one epoch of decay). Window 2's table: docs/gpu-window.md.
PROBE_POINTS = ("resnet18", "resnet18:zero-init-residual=true", "resnet18:no-decay-norm-bias=true",
                "resnet18:label-smoothing=0.1", "hybrid:epochs=4")
#: What the models train with when the hybrid's check under the protocol fails: v1's clip and
#: peak lr, with which the first window trained every variant stably.
STABLE_FALLBACK = {"grad-clip": 1, "lr": 0.2}
#: A setting replaces the protocol only when it beats it by more than this: the same seed's
#: spread on the H200 (resnet18, 88.21 % and 88.69 % in two runs of the first window).
PROBE_MARGIN = 0.005


def _flag_value(text: str) -> Any:
    """``"0.4"`` -> 0.4, ``"true"`` -> True, ``"onecycle"`` -> "onecycle" (JSON where it parses)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_probe_point(text: str) -> tuple[str, dict[str, Any]]:
    """``"resnet18:grad-clip=0,lr=0.4"`` -> ``("resnet18", {"grad-clip": 0, "lr": 0.4})``."""
    variant, _, flags = text.partition(":")
    changes = {}
    for item in filter(None, flags.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise WindowError(f"probe point {text!r}: expected VARIANT[:FLAG=VALUE,...], e.g. resnet18:grad-clip=0,lr=0.4")
        changes[key.strip()] = _flag_value(value.strip())
    return variant.strip(), changes


def probe_name(variant: str, changes: dict[str, Any]) -> str:
    """A run name for a probe point: ``probe_resnet18_base``, ``probe_resnet18_grad-clip0_lr0p4``."""
    label = "_".join(f"{key}{value}" for key, value in changes.items()) or "base"
    return f"probe_{variant}_" + label.replace(".", "p").replace("/", "-")


def choose_setting(rows: list[dict], protocol_args: dict, margin: float = PROBE_MARGIN) -> dict:
    """The probe's verdict: the protocol's args, or those of the most accurate finished
    setting that clips the gradient (unclipped runs are measured, never chosen: the hybrid
    diverges without clipping, docs/training.md "Stability") if it beats the protocol's own
    run by more than ``margin``. ``rows``: ``{"variant", "changes", "args", "test_acc"}``."""
    base = next((r for r in rows if not r["changes"] and r["test_acc"] is not None), None)
    clipped = [r for r in rows if r["test_acc"] is not None and float(r["args"].get("grad-clip") or 0) > 0]
    best = max(clipped, key=lambda r: r["test_acc"], default=None)
    if base is None or best is None or best is base or best["test_acc"] <= base["test_acc"] + margin:
        reason = ("no finished run of the protocol itself" if base is None else
                  f"no clipped setting beat the protocol's {base['test_acc']:.4f} by more than {margin:.3f}")
        return {"args": dict(protocol_args), "changes": {}, "test_acc": None if base is None else base["test_acc"],
                "reason": reason}
    return {"args": best["args"], "changes": best["changes"], "test_acc": best["test_acc"],
            "reason": f"{best['test_acc']:.4f} against the protocol's {base['test_acc']:.4f} (margin {margin:.3f})"}


def trained_stably(card: RunCard) -> bool:
    """A stability check passed: finished, every epoch's training loss and the test loss below
    2 ln C (``training.stability``'s bound), and the test accuracy at least 50 %."""
    bound = 2 * math.log(card.num_classes or 10)
    history = card.history or []
    return (card.is_finished and bool(history) and all(h["train_loss"] < bound for h in history)
            and card.test_loss is not None and card.test_loss < bound and (card.test_acc or 0) >= 0.5)


def apply_checks(verdict: dict, checks: list[dict], protocol_args: dict) -> dict:
    """The verdict, unless a stability check of the protocol itself (a row of another variant
    without changes but its epochs) failed: then :data:`STABLE_FALLBACK` on top of it."""
    failed = [c for c in checks if not {k: v for k, v in c["changes"].items() if k != "epochs"} and not c["stable"]]
    if not failed:
        return verdict
    args = {**verdict["args"], **STABLE_FALLBACK}
    return dict(verdict, args=args, changes={k: v for k, v in args.items() if protocol_args.get(k) != v},
                reason=f"{failed[0]['name']} did not train stably under the protocol: v1's clip and lr instead "
                       f"({verdict['reason']})")


def mode_probe(window: Window, args, protocol: SweepConfig) -> None:
    """Train every probe point concurrently; then the verdict into ``window.json`` and the
    work folder's ``best.json`` (read by a later ``models --args-from`` call)."""
    from training.sweep import ConfigError, Run, flag_args  # torch-free boundary
    from training.train import parse_strides  # torch-free boundary

    strides = parse_strides(args.strides)
    points, protocols, changes_of = [], {}, {}
    for text in args.points:
        variant, changes = parse_probe_point(text)
        name = probe_name(variant, changes)
        merged = dataclasses.replace(protocol, args={**protocol.args, **changes})
        try:
            flag_args(merged.args)  # an unknown flag: one sentence
            _train_namespace(variant, strides, 0, protocol.epochs, merged)  # a bad value: argparse's line
        except ConfigError as error:
            raise WindowError(f"probe point {text!r}: {error}") from None
        except SystemExit:  # argparse has printed why
            raise WindowError(f"probe point {text!r}: not a valid training setting (see the line above)") from None
        points.append(Run(variant, strides, 0, "cifar10", name))
        protocols[name], changes_of[name] = merged, changes
    if len(protocols) != len(points):
        raise WindowError("two probe points have the same name: each point must differ")
    if args.profile_seconds > 0:
        profile_step(window, args.profile_seconds, args.device, protocol)
    mode_train(window, args, points, protocol, compress=False, choose_epochs=True, protocols=protocols)
    rows = []
    for entry in window.record["runs"]:
        card = RunCard.from_dict(entry.get("card") or {})
        rows.append({"name": entry["name"], "variant": entry["variant"], "changes": changes_of[entry["name"]],
                     "args": protocols[entry["name"]].args, "epochs": card.epoch,
                     "test_acc": card.test_acc if card.is_finished else None, "stable": trained_stably(card)})
    main_variant = points[0].variant
    verdict = choose_setting([r for r in rows if r["variant"] == main_variant], protocol.args)
    verdict = apply_checks(verdict, [r for r in rows if r["variant"] != main_variant], protocol.args)
    verdict.update(variant=points[0].variant, epochs=window.record["estimate"]["epochs"], protocol_epochs=protocol.epochs)
    window.record["probe"] = {"rows": rows, "best": verdict}
    window.save()
    atomic_write_json(work_dir(window.mode) / "best.json", verdict)
    table = "\n".join(f"| {r['name']} | {r['epochs'] or 0} | {_accuracy(r['test_acc'])} | {'yes' if r['stable'] else 'no'} |"
                      for r in rows)
    window.log(f"probe:\n| run | epochs | test acc | stable |\n|---|---:|---:|---|\n{table}\nchosen: {verdict['changes'] or 'the protocol'} "
               f"({verdict['reason']}) -> {work_dir(window.mode) / 'best.json'}")


def _accuracy(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"
