"""The variant catalogue: each model variant's name, its label in tables, and its place.

The one list of variant names, in table order. It lives on the torch-free floor because
readers that never build a model need it too (results tables, the GPU-window planner, the
dashboard); :data:`hybrid_model.VARIANTS` gives each of these names its layers and checks,
when imported, that it covers exactly this list.
"""
from __future__ import annotations

__all__ = ["PAPER_VARIANTS", "VARIANT_LABELS", "VARIANT_NAMES", "variant_rank"]

#: Every variant, in table order, with its column label.
VARIANT_LABELS: dict[str, str] = {
    "resnet18": "ResNet-18 (strided conv)",
    "spectral": "Spectral pooling",
    "diffstride": "DiffStride",
    "hybrid": "Hybrid (DiffStride + spectral)",
    "diffstride2": "DiffStride-DiffStride",
    # Ablation: the hybrid's head replaced by the constant it multiplies GAP's output by.
    "diffstride_scaled": "DiffStride + head scale (ablation)",
}
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANT_LABELS)
#: The five variants of the papers' tables (the others are ablations).
PAPER_VARIANTS: tuple[str, ...] = VARIANT_NAMES[:5]


def variant_rank(name: str) -> int:
    """A sort key: a variant's place in table order; unknown names after every known one."""
    return VARIANT_NAMES.index(name) if name in VARIANT_NAMES else len(VARIANT_NAMES)
