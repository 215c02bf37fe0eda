"""Summary statistics of repeated timings: median and spread, with the sample count (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Median, 10th/90th percentiles (linear interpolation), min, max and count of a sample."""

    median: float
    p10: float
    p90: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stats | None:
        """Statistics of `values`, or None when there are none (nothing was measured)."""
        sample = np.asarray(list(values), dtype=np.float64)
        if sample.size == 0:
            return None
        p10, median, p90 = np.percentile(sample, [10, 50, 90])
        return cls(float(median), float(p10), float(p90), float(sample.min()), float(sample.max()), int(sample.size))

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)
