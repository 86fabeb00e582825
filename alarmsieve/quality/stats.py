"""Binomial proportions with Wilson score intervals (95 % by default)."""

from __future__ import annotations

import math

from pydantic import BaseModel

Z95 = 1.959963984540054


class Proportion(BaseModel):
    """``k`` of ``n``, the share and its Wilson interval; ``rate`` is None when ``n`` is 0 (nothing to measure)."""

    k: int
    n: int
    rate: float | None
    low: float | None
    high: float | None

    def text(self, digits: int = 1) -> str:
        if self.rate is None or self.low is None or self.high is None:
            return f"{self.k}/{self.n} (n/a)"
        pct = f"{{:.{digits}%}}"
        return f"{self.k}/{self.n} {pct.format(self.rate)} [{pct.format(self.low)}, {pct.format(self.high)}]"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials; exact at the edges (k = 0 gives low 0)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (round(low, 6), round(high, 6))


def proportion(k: int, n: int) -> Proportion:
    if n == 0:
        return Proportion(k=k, n=n, rate=None, low=None, high=None)
    low, high = wilson(k, n)
    return Proportion(k=k, n=n, rate=round(k / n, 6), low=low, high=high)
