"""How far to trust a measured figure: the one rule that flags a median taken over too few samples or with too wide a spread (no torch).

A figure (a step time, or a per-round ratio such as ECA / plain) is flagged when it has fewer
than `MIN_SAMPLES` samples, or when its p10-p90 span is wider than `MAX_SPREAD` of its median.
The advice names what narrows it: more samples (a longer time budget or more steps), fewer CPU
threads on a shared machine, and a machine left idle while it runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ecacli.profiling.stats import Stats

MIN_SAMPLES = 10
MAX_SPREAD = 0.10
"""Largest (p90 - p10) / median of a figure read as trustworthy."""


@dataclass(frozen=True)
class Precision:
    """How precise one figure is: its sample count and relative spread, whether the rule trusts it, and if not why and what to change."""

    figure: str
    samples: int
    spread: float
    trusted: bool
    problems: tuple[str, ...]
    advice: str | None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["problems"] = list(self.problems)
        return {**data, "min_samples": MIN_SAMPLES, "max_spread": MAX_SPREAD}

    def note(self) -> str:
        """One line for a screen: '<figure>: precise (n samples, p10-p90 span 3.1% of the median)' or what is wrong and what to change."""
        measured = f"{self.samples} samples, p10-p90 span {self.spread:.1%} of the median"
        if self.trusted:
            return f"{self.figure}: precise enough ({measured})."
        return f"{self.figure}: not precise ({'; '.join(self.problems)}). {self.advice}"


def relative_spread(stats: Stats) -> float:
    """(p90 - p10) / |median|; infinite for a zero median with any spread."""
    width = stats.p90 - stats.p10
    if stats.median == 0:
        return 0.0 if width == 0 else float("inf")
    return width / abs(stats.median)


def assess(figure: str, stats: Stats, more_samples: str = "--seconds", cpu: bool = True) -> Precision:
    """Apply the rule to `stats`; `more_samples` is the option that buys more samples (`--seconds` or `--iters`), `cpu` whether thread advice applies."""
    spread = relative_spread(stats)
    problems = []
    if stats.n < MIN_SAMPLES:
        problems.append(f"{stats.n} samples, under {MIN_SAMPLES}")
    if spread > MAX_SPREAD:
        problems.append(f"p10-p90 span {spread:.0%} of the median, over {MAX_SPREAD:.0%}")
    advice = None
    if problems:
        steps = [f"more samples (a larger {more_samples})"]
        if spread > MAX_SPREAD:
            steps += ["fewer threads (--threads 1 or 2)"] if cpu else []
            steps.append("an idle machine")
        advice = "Try " + (", ".join(steps[:-1]) + " or " + steps[-1] if len(steps) > 1 else steps[0]) + "."
    return Precision(figure, stats.n, spread, not problems, tuple(problems), advice)
