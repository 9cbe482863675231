"""A measured proportion and its 95 % interval: every figure of the lab is a count of n."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Z95", "Count", "pooled"]

Z95 = 1.959964


@dataclass(frozen=True)
class Count:
    """``hits`` of ``n`` independent trials (correct predictions, unchanged top-1 classes)."""

    hits: int
    n: int

    @property
    def rate(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """Wilson score interval: stays inside [0, 1] and is honest near 0 % and 100 %."""
        if not self.n:
            return float("nan"), float("nan")
        p, n = self.rate, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def half_width(self) -> float:
        low, high = self.interval()
        return (high - low) / 2

    def to_list(self) -> list[int]:
        return [self.hits, self.n]

    @classmethod
    def from_list(cls, pair: Iterable[int]) -> Count:
        hits, n = (int(v) for v in pair)
        if not 0 <= hits <= n:
            raise ValueError(f"a count needs 0 <= hits <= n, got {hits} of {n}")
        return cls(hits, n)

    def text(self, digits: int = 1) -> str:
        """``"91.2 % ± 1.4"`` (the interval's half-width, in points)."""
        return f"{100 * self.rate:.{digits}f} % ± {100 * self.half_width():.{digits}f}"


def pooled(counts: Iterable[Count]) -> Count:
    """Independent counts (distinct images) added up."""
    counts = list(counts)
    return Count(sum(c.hits for c in counts), sum(c.n for c in counts))
