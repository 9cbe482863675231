"""A measured proportion and its 95 % interval: every figure of the lab is a count of n.

Two models measured on the same trials (the lab's design: same images, offsets, noise) are
compared by :func:`paired_difference`, whose interval is much narrower than the two
models' own intervals suggest, because most trials go the same way for both.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["Z95", "Count", "Difference", "paired_difference", "pooled", "trials_for"]

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


def trials_for(rate: float, half_width: float, z: float = Z95) -> int:
    """The fewest trials whose Wilson interval at ``rate`` is no wider than ``±half_width``
    (both as fractions): how large a figure's sample must be for a target precision."""
    if not 0 < half_width < 0.5:
        raise ValueError(f"the half-width must be between 0 and 0.5 (0 and 50 points), got {half_width}")
    if not 0 <= rate <= 1:
        raise ValueError(f"a rate is between 0 and 1, got {rate}")

    def wide(n: int) -> bool:
        return Count(round(rate * n), n).half_width() > half_width

    low, high = 1, 2
    while wide(high):
        low, high = high, high * 2
    while high - low > 1:  # the half-width shrinks as n grows: bisect for the first n that fits
        middle = (low + high) // 2
        low, high = (middle, high) if wide(middle) else (low, middle)
    return high if wide(low) else low


def pooled(counts: Iterable[Count]) -> Count:
    """Independent counts (distinct images) added up."""
    counts = list(counts)
    return Count(sum(c.hits for c in counts), sum(c.n for c in counts))


@dataclass(frozen=True)
class Difference:
    """``rate(a) - rate(b)`` over ``n`` paired trials, with its 95 % interval.

    ``a_only``/``b_only``: trials only ``a``/only ``b`` got right (the discordant pairs, all
    the difference is made of).
    """

    estimate: float
    low: float
    high: float
    n: int
    a_only: int
    b_only: int

    def text(self, digits: int = 1) -> str:
        """``"+1.2 [-0.3, +2.6]"``: the difference and its interval, in points."""
        def points(value: float) -> str:
            return f"{100 * value:+.{digits}f}".replace("-", "−")

        return f"{points(self.estimate)} [{points(self.low)}, {points(self.high)}]"

    @property
    def clear(self) -> bool:
        """Whether the interval excludes 0 (a difference at the 5 % level)."""
        return self.low > 0 or self.high < 0


def paired_difference(a: np.ndarray, b: np.ndarray, z: float = Z95) -> Difference:
    """The difference of two rates measured on the same trials (boolean arrays, one per model).

    Newcombe's hybrid score interval for paired proportions (Newcombe 1998, "Improved
    confidence intervals for the difference between binomial proportions based on paired
    data", method 10; recommended by Fagerland, Lydersen & Laake 2014): each rate's Wilson
    interval, combined with the correlation ``phi`` of the two outcomes.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1 or not a.size:
        raise ValueError(f"paired outcomes need two equal, non-empty 1-d arrays; got shapes {a.shape} and {b.shape}")
    n = a.size
    both, a_only = int(np.count_nonzero(a & b)), int(np.count_nonzero(a & ~b))
    b_only, neither = int(np.count_nonzero(~a & b)), int(np.count_nonzero(~a & ~b))
    first, second = Count(both + a_only, n), Count(both + b_only, n)
    (l1, u1), (l2, u2) = first.interval(z), second.interval(z)
    p1, p2 = first.rate, second.rate
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = (both * neither - a_only * b_only) / math.sqrt(margins) if margins else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    estimate = p1 - p2
    return Difference(estimate, estimate - below, estimate + above, n, a_only, b_only)
