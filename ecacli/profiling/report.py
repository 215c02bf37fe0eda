"""The profiling entry point: check the request, build the models, measure them, gather a report."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ecacli.errors import OutOfMemory, is_out_of_memory
from ecacli.profiling.breakdown import Breakdown, breakdown
from ecacli.profiling.device import environment, make_timer, memory_measure, resolve_device
from ecacli.profiling.precision import Precision, assess
from ecacli.profiling.runner import (
    ModelProfile,
    ProfileConfig,
    ProgressCallback,
    Workload,
    count_flops,
    make_workload,
    measure,
    summarize,
)
from ecacli.profiling.stats import Stats
from ecacli.spec import NetworkSpec


@dataclass
class ProfileReport:
    """Header (environment and settings), one profile per model, an optional breakdown, and whether Ctrl-C cut it short."""

    header: dict[str, Any]
    models: list[ModelProfile]
    interrupted: bool = False
    breakdown: Breakdown | None = None
    paired_samples: dict[str, list[dict[str, float]]] | None = None
    """From `profile_paired`: by label, the first model's steps timed in the rounds it shared with that model."""

    def model(self, label: str) -> ModelProfile:
        return next(m for m in self.models if m.label == label)

    def ratio(self, label: str, reference: str, phase: str = "step") -> Stats | None:
        """Per-round ratio of `label`'s phase time to `reference`'s, over the rounds both completed."""
        mine, theirs = self.model(label).samples, self.model(reference).samples
        if self.paired_samples is not None and reference == self.models[0].label and label in self.paired_samples:
            theirs = self.paired_samples[label]
        return Stats.of(a[phase] / b[phase] for a, b in zip(mine, theirs) if phase in a and phase in b)

    def precision(self, label: str, reference: str | None = None) -> dict[str, Precision]:
        """How far to trust `label`'s step time and, given a `reference`, its per-round step ratio to it (`ecacli.profiling.precision`)."""
        step = self.model(label).step_ms
        cut_by_budget = self.header.get("seconds") is not None and step is not None and step.n < self.header["iters"]
        more, cpu = ("--seconds" if cut_by_budget else "--iters"), self.header["device"] == "cpu"
        figures = {"step": ("step time", step)}
        if reference is not None:
            figures["ratio"] = ("step ratio", self.ratio(label, reference))
        return {key: assess(name, stats, more, cpu) for key, (name, stats) in figures.items() if stats is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "header": self.header,
            "interrupted": self.interrupted,
            "models": [m.to_dict() for m in self.models],
            "breakdown": self.breakdown.to_dict() if self.breakdown else None,
        }


def header(config: ProfileConfig, device: torch.device, spec: NetworkSpec) -> dict[str, Any]:
    """Environment and settings, for reproducing the measurement."""
    return {
        **environment(device),
        "spec": spec.name,
        "mode": config.mode,
        "step": config.step_definition(),
        "batch": config.batch,
        "input_shape": config.input_shape(spec),
        "dtype": config.dtype,
        "autocast": config.dtype != "float32",
        "memory_format": "channels_last" if config.channels_last else "contiguous",
        "compile": config.compile,
        "warmup": config.warmup,
        "iters": config.iters,
        "seconds": config.seconds,
        "seed": config.seed,
        "order": "interleaved: one step of each model per round, order rotated every round",
        "timer": make_timer(device, config.clock).name,
        "memory_measure": memory_measure(device),
    }


class out_of_memory_as_error(AbstractContextManager):
    """Turns running out of device memory into an `OutOfMemory` error naming the batch that failed."""

    def __init__(self, config: ProfileConfig, device: torch.device, models: int) -> None:
        self.config, self.device, self.models = config, device, models

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not is_out_of_memory(exc):
            return
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        hints = [f"--batch {max(self.config.batch // 2, 1)}"]
        if self.config.dtype == "float32":
            hints.append("--dtype bfloat16")
        if self.config.train:
            hints.append("--mode eval")
        if self.models > 1:
            hints.append(f"one model at a time (the {self.models} models timed together all stay in memory)")
        tries = hints[0] if len(hints) == 1 else f"{', '.join(hints[:-1])} or {hints[-1]}"
        raise OutOfMemory(
            f"out of memory on {self.device} at --batch {self.config.batch} "
            f"({self.config.mode}, {self.config.dtype}, input {self.config.side_text()}). Try {tries}."
        ) from None


def _set_up(entries: Sequence[tuple[str, NetworkSpec]], config: ProfileConfig) -> tuple[torch.device, dict[str, tuple[int, int]]]:
    """Check the request and set the device up; returns (device, FLOPs by label), counted before anything is built."""
    config.validate()
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    return device, {label: count_flops(spec, config) for label, spec in entries}


def prepare(
    entries: Sequence[tuple[str, NetworkSpec]], config: ProfileConfig, models: Mapping[str, nn.Module] | None = None
) -> tuple[torch.device, list[Workload], dict[str, tuple[int, int]]]:
    """Check the request, then build every model on its device; returns (device, workloads, FLOPs by label).

    `models` gives, by label, a model to measure instead of the spec's own build (another
    implementation of the same network); FLOPs are still counted on the spec's model.
    """
    device, flops = _set_up(entries, config)
    with out_of_memory_as_error(config, device, len(entries)):
        workloads = [make_workload(label, spec, config, device, (models or {}).get(label)) for label, spec in entries]
    return device, workloads, flops


def profile(
    entries: Sequence[tuple[str, NetworkSpec]],
    config: ProfileConfig,
    progress: ProgressCallback | None = None,
    with_breakdown: bool = False,
) -> ProfileReport:
    """Measure every (label, spec) model interleaved in this process (see `ecacli.profiling.runner`).

    With `with_breakdown`, the first model is then profiled with torch.profiler. Ctrl-C stops the
    measurement and returns what was measured, with `interrupted` set.
    """
    device, workloads, flops = prepare(entries, config)
    with out_of_memory_as_error(config, device, len(workloads)):
        interrupted = measure(workloads, config, device, progress)
        details = None
        if with_breakdown and not interrupted:
            try:
                details = breakdown(workloads[0], config)
            except KeyboardInterrupt:
                interrupted = True
    models = [summarize(w, config, flops[w.label]) for w in workloads]
    return ProfileReport(header(config, device, entries[0][1]), models, interrupted, details)


def profile_paired(entries: Sequence[tuple[str, NetworkSpec]], config: ProfileConfig, progress: ProgressCallback | None = None) -> ProfileReport:
    """Measure every model after the first interleaved with the first, one pair at a time, so at most
    two models are built at once however many are compared; `ratio(label, first)` is per round of
    that pair. The first model's figures cover all its rounds. Ctrl-C stops the measurement: the
    report then holds the models measured so far, with `interrupted` set.
    """
    device, flops = _set_up(entries, config)
    (first_label, first_spec), others = entries[0], list(entries[1:])
    pairs = max(len(others), 1)
    steps_per_pair = {"warm-up": config.warmup * min(len(entries), 2), "timing": config.iters * min(len(entries), 2)}

    def paired_progress(index: int) -> ProgressCallback | None:
        if progress is None:
            return None
        return lambda phase, done, total: progress(phase, index * steps_per_pair[phase] + done, pairs * steps_per_pair[phase])

    with out_of_memory_as_error(config, device, min(len(entries), 2)):
        first = make_workload(first_label, first_spec, config, device)
        if not others:
            interrupted = measure([first], config, device, paired_progress(0))
            return ProfileReport(header(config, device, first_spec), [summarize(first, config, flops[first_label])], interrupted)
        models, paired, first_samples, interrupted = [], {}, [], False
        for index, (label, spec) in enumerate(others):
            other = make_workload(label, spec, config, device)
            first.samples = []
            interrupted = measure([first, other], config, device, paired_progress(index))
            paired[label], first_samples = first.samples, first_samples + first.samples
            models.append(summarize(other, config, flops[label]))
            del other
            if interrupted:
                break
        first.samples = first_samples
    first_model = summarize(first, config, flops[first_label])
    return ProfileReport(header(config, device, first_spec), [first_model, *models], interrupted, paired_samples=paired)
