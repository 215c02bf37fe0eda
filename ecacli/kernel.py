"""The ECA adaptive kernel-size rule (Wang et al., CVPR 2020, eq. 9), in pure Python.

    t = int(|(log2(C) + b) / gamma|),   k = t if t is odd else t + 1

No torch here: `ecacli ksize` and the spec schema use this without paying for a torch import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

DEFAULT_GAMMA = 2.0
DEFAULT_B = 1.0
MAX_CHANNELS = 2**32  # float log2 keeps the rule exact far beyond this (checked to 2**48); no layer is wider


def _exact_log2(channels: int) -> float:
    """log2 that is exact for powers of two (math.log(C, 2) is off by one ulp for some)."""
    if channels & (channels - 1) == 0:
        return float(channels.bit_length() - 1)
    return math.log2(channels)


def _check(channels: int, gamma: float, b: float) -> None:
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"channels must be a positive integer up to 2**32, got {channels!r}")
    if not (isinstance(gamma, Real) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be positive and finite, got {gamma!r}")
    if not (isinstance(b, Real) and math.isfinite(b)):
        raise ValueError(f"b must be a finite number, got {b!r}")


def _scaled(channels: int, gamma: float, b: float) -> float:
    """(log2 C + b) / gamma; a ValueError naming gamma and b when that is beyond any float."""
    value = (_exact_log2(channels) + b) / gamma
    if not math.isfinite(value):
        raise ValueError(f"gamma={gamma!r} and b={b!r} give t = (log2 C + b) / gamma beyond any number; use a larger gamma or a smaller b")
    return value


def kernel_t(channels: int, gamma: float = DEFAULT_GAMMA, b: float = DEFAULT_B) -> int:
    """The rule's intermediate value t = int(|(log2 C + b) / gamma|)."""
    _check(channels, gamma, b)
    return int(abs(_scaled(channels, gamma, b)))


def odd_up(t: int) -> int:
    """The nearest odd integer at or above t (the rule's final step)."""
    return t if t % 2 else t + 1


def kernel_size(channels: int, gamma: float = DEFAULT_GAMMA, b: float = DEFAULT_B) -> int:
    """ECA kernel size k for a layer with `channels` channels."""
    return odd_up(kernel_t(channels, gamma, b))


@dataclass(frozen=True)
class KernelInterval:
    """A maximal run of channel counts [low, high] over which k is constant."""

    low: int
    high: int
    k: int


def _piece(channels: int, gamma: float, b: float) -> tuple[int, bool]:
    """(t, sign of the scaled value): C with equal pieces form one contiguous run."""
    value = _scaled(channels, gamma, b)
    return int(abs(value)), value < 0


def _end_of_piece(start: int, high: int, gamma: float, b: float) -> int:
    """The largest C in [start, high] in the same piece as `start` (binary search).

    The scaled value is monotone in C, so "same piece as start" holds on a prefix.
    """
    target = _piece(start, gamma, b)
    lo, hi = start, high
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _piece(mid, gamma, b) == target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _start_of_piece(end: int, low: int, gamma: float, b: float) -> int:
    """The smallest C in [low, end] in the same piece as `end` (the mirror of `_end_of_piece`)."""
    target = _piece(end, gamma, b)
    lo, hi = low, end
    while lo < hi:
        mid = (lo + hi) // 2
        if _piece(mid, gamma, b) == target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def kernel_run(channels: int, gamma: float = DEFAULT_GAMMA, b: float = DEFAULT_B) -> KernelInterval:
    """The whole run of C (within 1 .. MAX_CHANNELS) around `channels` over which k stays the same."""
    _check(channels, gamma, b)
    k = kernel_size(channels, gamma, b)
    low, high = channels, channels
    while low > 1 and kernel_size(low - 1, gamma, b) == k:
        low = _start_of_piece(low - 1, 1, gamma, b)
    while high < MAX_CHANNELS and kernel_size(high + 1, gamma, b) == k:
        high = _end_of_piece(high + 1, MAX_CHANNELS, gamma, b)
    return KernelInterval(low, high, k)


def kernel_intervals(
    low: int, high: int, gamma: float = DEFAULT_GAMMA, b: float = DEFAULT_B
) -> list[KernelInterval]:
    """The exact runs of C inside [low, high] over which k is constant, in order."""
    _check(low, gamma, b)
    _check(high, gamma, b)
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    intervals: list[KernelInterval] = []
    start = low
    while start <= high:
        end = _end_of_piece(start, high, gamma, b)
        k = kernel_size(start, gamma, b)
        if intervals and intervals[-1].k == k:
            intervals[-1] = KernelInterval(intervals[-1].low, end, k)
        else:
            intervals.append(KernelInterval(start, end, k))
        start = end + 1
    return intervals


def table_widths(low: int, high: int) -> list[int]:
    """The widths a `ksize --channels LOW HIGH` table shows: both ends and every power of two between."""
    widths = {low, high}
    power = 1
    while power <= high:
        if power >= low:
            widths.add(power)
        power *= 2
    return sorted(widths)


