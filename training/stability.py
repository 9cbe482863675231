"""The first steps of a training protocol, per variant: ``python -m training.stability``.

Runs the first ``--steps`` optimiser steps of ``training.train`` with the given train flags
(the same parser, defaults, optimiser, schedule and step function), on a small subset of
real CIFAR-10, with the learning-rate schedule sized for the full run it probes
(``--schedule-images``, 50,000 by default), then evaluates on the test subset. It prints
one JSON line per variant: the per-step training loss and gradient norm, the final test
loss/accuracy and whether the run stayed *bounded* (see :func:`is_stable`).

This is how the protocol defaults were chosen (docs/training.md, "Stability"); the test
suite runs it at the defaults.

    python -m training.stability --variants resnet18,hybrid --steps 16 -- --strides 4,1,2,2,2
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hybrid_model import build_model

from .config import VARIANTS
from .data import NUM_CLASSES, GpuLoader, load_cifar
from .train import build_optimizer, evaluate, model_options, parse_args, train_step

__all__ = ["probe", "is_stable", "main"]

#: A run is "bounded" when every training loss and the final test loss stay below this
#: multiple of the loss of a uniform guess (ln C). Diverging runs measured before the fix
#: reached 10-20x on the training side and 500x+ on the test side.
BOUND_FACTOR = 2.0


def is_stable(result: dict[str, Any], factor: float = BOUND_FACTOR) -> bool:
    """Every step's train loss and the final test loss finite and <= ``factor * ln C``."""
    limit = factor * math.log(result["num_classes"])
    losses = result["train_loss"] + [result["test_loss"]]
    return all(math.isfinite(v) and v <= limit for v in losses)


def probe(variant: str, train_flags: Sequence[str], *, steps: int = 16, n_train: int = 2048, n_test: int = 512,
          schedule_images: int = 50_000, data_dir: str | None = None, seed: int = 0) -> dict[str, Any]:
    """The first ``steps`` steps of ``python -m training.train --variant VARIANT TRAIN_FLAGS``.

    The schedule is that of the full run (``schedule_images`` training images, the flags'
    ``--epochs``); the batches come from the first ``n_train`` images. Returns the per-step
    ``train_loss``/``grad_norm``/``lr``, ``test_loss``/``test_acc`` on ``n_test`` images.
    """
    _, args = parse_args(["--variant", variant, "--out", "unused", "--seed", str(seed), *train_flags])
    data = load_cifar(args.dataset, data_dir, limit_train=n_train, limit_test=n_test)
    torch.manual_seed(seed)
    model = build_model(variant, tuple(args.strides), NUM_CLASSES[args.dataset], **model_options(args))
    loader = GpuLoader(data.x_train, data.y_train, args.batch_size, train=True, seed=seed, dataset=args.dataset,
                       pad=args.pad, pad_mode=args.pad_mode, flip=args.flip)
    test_loader = GpuLoader(data.x_test, data.y_test, 2 * args.batch_size, train=False, dataset=args.dataset)
    optimizer, scheduler = build_optimizer(model, args, max(schedule_images // args.batch_size, 1))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    autocast = {"device_type": "cpu", "enabled": False}
    record: dict[str, Any] = {"variant": variant, "flags": list(train_flags), "steps": steps, "n_train": data.n_train,
                              "num_classes": NUM_CLASSES[args.dataset], "train_loss": [], "grad_norm": [], "lr": []}
    t0, epoch = time.perf_counter(), 0
    model.train()
    while len(record["train_loss"]) < steps:
        for x, y in loader.batches(epoch):
            record["lr"].append(optimizer.param_groups[0]["lr"])
            loss, _, norm = train_step(model, model, x, y, criterion, optimizer, scheduler, args, autocast)
            # Before clipping (what the loss asked for); without clipping the gradients are untouched.
            record["grad_norm"].append(float(norm))
            record["train_loss"].append(float(loss.detach()))
            if len(record["train_loss"]) == steps:
                break
        epoch += 1
    record["test_loss"], record["test_acc"] = evaluate(model, test_loader, autocast)
    record["seconds"] = time.perf_counter() - t0
    record["stable"] = is_stable(record)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.stability", description=__doc__.split("\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--n-test", type=int, default=512)
    p.add_argument("--schedule-images", type=int, default=50_000, help="training-set size the lr schedule is sized for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("train_flags", nargs="*", help="flags for training.train (after --)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; expected some of {list(VARIANTS)}")
    for variant in variants:
        result = probe(variant, args.train_flags, steps=args.steps, n_train=args.n_train, n_test=args.n_test,
                       schedule_images=args.schedule_images, data_dir=args.data_dir, seed=args.seed)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
