"""One image, transformed step by step: the dashboard's per-upload view of the lab.

:func:`steps` turns the image a model sees (``(32, 32, 3)`` uint8) into a short sequence of
labelled variants: shifted by 0..8 pixels, low- or high-passed at shrinking / growing radii,
or corrupted at severities 0..5. Every model then classifies the same sequence in one batch.
"""
from __future__ import annotations

import numpy as np

from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .transforms import MAX_SHIFT, TransformError, high_pass, low_pass, shift

__all__ = ["FAMILIES", "LOW_PASS_RADII", "HIGH_PASS_RADII", "steps", "strip"]

#: Low-pass radii from "everything kept" (the spectrum's corner is 16*sqrt(2) ~ 22.6 bins away) down.
LOW_PASS_RADII = (23.0, 16.0, 12.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.0)
HIGH_PASS_RADII = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
SHIFT_FAMILIES = {"shift (circular)": "circular", "shift (zero padding)": "zero"}
FAMILIES: tuple[str, ...] = (*SHIFT_FAMILIES, "low-pass", "high-pass", *CORRUPTIONS)


def steps(image: np.ndarray, family: str, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``[(label, image), ...]``: the first is always the image itself."""
    if family in SHIFT_FAMILIES:
        return [(f"{s} px", shift(image, (s, s), SHIFT_FAMILIES[family])) for s in range(MAX_SHIFT + 1)]
    if family == "low-pass":
        return [(f"r ≤ {r:g}", low_pass(image, r)) for r in LOW_PASS_RADII]
    if family == "high-pass":
        return [(f"r > {r:g}", high_pass(image, r)) for r in HIGH_PASS_RADII]
    if family in CORRUPTIONS:
        return [("clean", np.asarray(image))] + [
            (f"severity {s}", corrupt(image, family, s, seed=seed)) for s in SEVERITIES]
    raise TransformError(f"unknown transform {family!r}; expected one of {', '.join(FAMILIES)}")


def strip(images: list[np.ndarray], scale: int = 3, gap: int = 2) -> np.ndarray:
    """The images side by side (nearest-neighbour upscaled by ``scale``, white gaps): one
    picture the page can show crisp at any width."""
    big = [np.repeat(np.repeat(np.asarray(im), scale, axis=0), scale, axis=1) for im in images]
    height = big[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts = [part for im in big for part in (im, spacer)][:-1]
    return np.concatenate(parts, axis=1)
