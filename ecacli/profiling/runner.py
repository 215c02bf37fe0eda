"""Timed training or inference steps of one or more spec models, interleaved in one process.

`ecacli.profiling.profile([(label, spec), ...], config)` builds every model with
`make_workload`, warms each up, reads its peak memory over one untimed step, then times them in
rounds, one step of each per round with the order rotated every round (A B, B A, A B, ...),
so that clock drift, thermal state and cache effects fall on all models alike. A step is:

- train: forward with cross-entropy on random labels (autocast for half dtypes), backward,
  then an SGD step (momentum 0.9); gradients are released after the step (set_to_none).
  float16 on CUDA scales the loss with a GradScaler, as real float16 training does.
- eval: forward under torch.inference_mode (torch.no_grad with --compile).

Each phase is timed separately (see `ecacli.profiling.device` for the clocks), and the step
time is read from the first mark to the last, so step = forward + backward + optimizer.

The first warm-up step of each model records which tail path its blocks took (`tail_paths`).

With a time budget (`seconds`), warm-up stops once a quarter of it is spent (after one round at
least) and timing once all of it is (after `MIN_TIMED_ROUNDS` at least), or after `iters` rounds.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ecacli.errors import UserError, check_seed, first_line
from ecacli.layers.tail import recording_paths
from ecacli.models import build_model
from ecacli.profiling.device import make_timer, step_peak_bytes, synchronize
from ecacli.profiling.stats import Stats
from ecacli.spec import MAX_BATCH, NetworkSpec, check_input_size

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("train", "eval")
SGD_LR, SGD_MOMENTUM = 0.01, 0.9
MAX_STEPS = 1_000_000
THREADS_PER_CORE = 4


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def max_threads() -> int:
    """The most CPU threads a profile may ask for: THREADS_PER_CORE per usable core, so an oversubscribed run still ends."""
    return THREADS_PER_CORE * usable_cores()

MAX_SECONDS = 7 * 24 * 3600.0
MIN_TIMED_ROUNDS = 3
WARMUP_SHARE = 0.25

ProgressCallback = Callable[[str, int, int], None]
"""Called as progress(phase, done, total) with phase 'warm-up' or 'timing'."""
Annotate = Callable[[str], AbstractContextManager]


@dataclass(frozen=True)
class ProfileConfig:
    """How to measure: device, input, numeric format, step kind and repetitions."""

    device: str = "cpu"
    batch: int = 32
    input_size: int | None = None
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False
    mode: Literal["train", "eval"] = "train"
    warmup: int = 5
    iters: int = 20
    seed: int = 0
    threads: int | None = None
    cudnn_benchmark: bool = False
    clock: Literal["wall", "cpu"] = "wall"
    seconds: float | None = None

    def validate(self) -> None:
        """Raise a UserError naming the first option that cannot work."""
        bounded = (("--batch", self.batch, MAX_BATCH), ("--iters", self.iters, MAX_STEPS), ("--warmup", self.warmup, MAX_STEPS))
        for option, value, largest in bounded:
            if value is not None and not 1 <= value <= largest:
                raise UserError(f"{option} must be a positive integer, got {_short_number(value)} (at most {largest:,}).")
        most_threads = max_threads()
        if self.threads is not None and not 1 <= self.threads <= most_threads:
            raise UserError(f"--threads must be from 1 to {most_threads:,} ({THREADS_PER_CORE} per CPU core this process may use, of which there are {usable_cores()}), got {_short_number(self.threads)}.")
        check_seed(self.seed, "--seed")
        if self.seconds is not None and not (math.isfinite(self.seconds) and 0 < self.seconds <= MAX_SECONDS):
            raise UserError(f"--seconds must be a positive number of seconds up to {MAX_SECONDS:,.0f} (a week), got {self.seconds}.")
        if self.input_size is not None:
            check_input_size(self.input_size)
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype '{self.dtype}' is not supported; use {', '.join(DTYPES)}.")
        if self.mode not in MODES:
            raise UserError(f"--mode '{self.mode}' is not supported; use train or eval.")
        if self.clock not in ("wall", "cpu") or (self.clock == "cpu" and self.device != "cpu"):
            raise UserError(f"clock '{self.clock}' is not supported here; use wall, or cpu with the CPU device (CUDA steps are timed with CUDA events).")

    @property
    def train(self) -> bool:
        return self.mode == "train"

    def side_text(self) -> str:
        return f"{self.input_size} px" if self.input_size else "the spec's size"

    def side(self, spec: NetworkSpec) -> int:
        return self.input_size or spec.input_size

    def input_shape(self, spec: NetworkSpec) -> list[int]:
        return spec.input_shape(self.batch, self.input_size)

    def step_definition(self) -> str:
        if not self.train:
            return "forward under " + ("torch.no_grad" if self.compile else "torch.inference_mode")
        return f"forward + cross-entropy, backward, SGD step (momentum {SGD_MOMENTUM})"


def _short_number(value: int) -> str:
    """An integer for a message: as it is, or its digit count when it is too long to read."""
    digits = len(str(abs(value))) if value.bit_length() < 10_000 else int(value.bit_length() * 0.30103) + 1
    return str(value) if digits <= 24 else f"an integer of {digits:,} digits"


@dataclass
class Workload:
    """One model with its synthetic batch and optimizer, and the measurements taken of it."""

    label: str
    spec: NetworkSpec
    model: nn.Module
    runner: Callable[[torch.Tensor], torch.Tensor]
    inputs: torch.Tensor
    target: torch.Tensor
    optimizer: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler | None
    samples: list[dict[str, float]] = field(default_factory=list)
    warmup_steps: int = 0
    step_peak: int | None = None
    compile_s: float | None = None
    tail_paths: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelProfile:
    """What was measured of one model; times in milliseconds, memory in bytes."""

    label: str
    spec: str
    attention: str
    input_shape: list[int]
    forward_ms: Stats | None
    backward_ms: Stats | None
    optimizer_ms: Stats | None
    step_ms: Stats | None
    images_per_s: float | None
    flops_per_image: int
    forward_flops_per_image: int
    achieved_flops_per_s: float | None
    peak_memory_bytes: int | None
    state_bytes: int
    step_peak_bytes: int | None
    compile_s: float | None
    warmup_steps: int = 0
    tail_paths: dict[str, int] = field(default_factory=dict)
    """How many block calls took each tail path (`ecacli.layers.tail.TailPath`) in the first warm-up step; under torch.compile, per traced block."""
    samples: list[dict[str, float]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "samples"}
        for name in ("forward_ms", "backward_ms", "optimizer_ms", "step_ms"):
            data[name] = data[name].to_dict() if data[name] else None
        return data


def without_attention(spec: NetworkSpec) -> NetworkSpec:
    """The same network with `attention.type: none`: the plain ResNet to compare against."""
    return type(spec).model_validate({**spec.to_yaml_dict(), "attention": {"type": "none"}})


def _no_annotation(phase: str) -> AbstractContextManager:
    return nullcontext()


def count_flops(spec: NetworkSpec, config: ProfileConfig) -> tuple[int, int]:
    """(step FLOPs, forward FLOPs) for one batch, counted by FlopCounterMode on the meta device.

    Counting on meta tensors costs no memory or time, and doubles as the check that the network
    accepts the input size: a shape error here becomes a UserError before anything is built.
    """
    with torch.device("meta"):
        model = build_model(spec)
        inputs = torch.empty(config.input_shape(spec))
    model.train(config.train)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.set_grad_enabled(config.train):
            logits = model(inputs)
            forward = counter.get_total_flops()
            if config.train:
                F.cross_entropy(logits, torch.zeros(config.batch, dtype=torch.long, device="meta")).backward()
    except (RuntimeError, ValueError) as exc:
        raise UserError(
            f"--input-size {config.side(spec)} with --batch {config.batch}: the network '{spec.name}' cannot take "
            f"input {config.input_shape(spec)} ({first_line(exc)}). Use a larger input size or batch."
        ) from None
    return counter.get_total_flops(), forward


def make_workload(label: str, spec: NetworkSpec, config: ProfileConfig, device: torch.device, model: nn.Module | None = None) -> Workload:
    """Build `spec`'s model (or take `model`, another implementation of it) on `device` with a seeded synthetic batch, random labels and (train) its optimizer."""
    torch.manual_seed(config.seed)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = (build_model(spec) if model is None else model).to(device=device, memory_format=memory_format)
    model.train(config.train)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = torch.randn(config.input_shape(spec), generator=generator).to(device=device, memory_format=memory_format)
    # a headless model (num_classes 0) returns pooled features: its training loss takes them as scores, target 0
    target = (torch.randint(0, spec.num_classes, (config.batch,), generator=generator) if spec.num_classes else torch.zeros(config.batch, dtype=torch.long)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM) if config.train else None
    scaler = torch.amp.GradScaler("cuda") if config.train and config.dtype == "float16" and device.type == "cuda" else None
    runner = torch.compile(model) if config.compile else model
    return Workload(label, spec, model, runner, inputs, target, optimizer, scaler)


def run_step(w: Workload, config: ProfileConfig, timer: Any, annotate: Annotate = _no_annotation) -> dict[str, float]:
    """One timed step of `w`; returns milliseconds per phase and for the whole step."""
    device_type = w.inputs.device.type
    autocast = torch.autocast(device_type, dtype=DTYPES[config.dtype]) if config.dtype != "float32" else nullcontext()
    if w.optimizer is None:
        no_grad = torch.no_grad() if config.compile else torch.inference_mode()
        timer.begin()
        with no_grad, autocast, annotate("forward"):
            w.runner(w.inputs)
        timer.mark("forward")
        return timer.finish()
    timer.begin()
    with autocast, annotate("forward"):
        loss = F.cross_entropy(w.runner(w.inputs), w.target)
    timer.mark("forward")
    with annotate("backward"):
        (w.scaler.scale(loss) if w.scaler else loss).backward()
    timer.mark("backward")
    with annotate("optimizer"):
        if w.scaler:
            w.scaler.step(w.optimizer)
            w.scaler.update()
        else:
            w.optimizer.step()
    timer.mark("optimizer")
    w.optimizer.zero_grad(set_to_none=True)
    return timer.finish()


def rotated(workloads: list[Workload], round_index: int) -> list[Workload]:
    """The workloads in this round's order: rotated by one each round, so none always runs first."""
    start = round_index % len(workloads)
    return workloads[start:] + workloads[:start]


class Budget:
    """The time budget of a measurement (`ProfileConfig.seconds`): when to stop warming up and timing."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def spent(self, share: float = 1.0) -> bool:
        return self.seconds is not None and time.perf_counter() - self.start >= share * self.seconds

    def stop_warmup(self, rounds_done: int) -> bool:
        return rounds_done >= 1 and self.spent(WARMUP_SHARE)

    def stop_timing(self, rounds_done: int) -> bool:
        return rounds_done >= MIN_TIMED_ROUNDS and self.spent()


def measure(workloads: list[Workload], config: ProfileConfig, device: torch.device, progress: ProgressCallback | None = None) -> bool:
    """Warm up, read each model's peak memory over one untimed step, then time up to `config.iters`
    interleaved rounds (fewer when `config.seconds` runs out); True when Ctrl-C stopped it early.

    A step cut short by Ctrl-C is discarded, so every kept sample is a whole step.
    """
    timer = make_timer(device, config.clock)
    report = progress or (lambda phase, done, total: None)
    budget = Budget(config.seconds)
    try:
        total = config.warmup * len(workloads)
        for i in range(config.warmup):
            if budget.stop_warmup(i):
                break
            for j, w in enumerate(rotated(workloads, i)):
                synchronize(device)
                start = time.perf_counter()
                if i == 0:  # the first warm-up step tells which tail path each block took
                    with recording_paths() as paths:
                        run_step(w, config, timer)
                    w.tail_paths = dict(Counter(path.value for path in paths))
                else:
                    run_step(w, config, timer)
                w.warmup_steps += 1
                if i == 0 and config.compile:
                    w.compile_s = time.perf_counter() - start
                report("warm-up", i * len(workloads) + j + 1, total)
        for w in workloads:
            w.step_peak = step_peak_bytes(device, partial(run_step, w, config, timer))
        total = config.iters * len(workloads)
        for i in range(config.iters):
            if budget.stop_timing(i):
                break
            for j, w in enumerate(rotated(workloads, i)):
                w.samples.append(run_step(w, config, timer))
                report("timing", i * len(workloads) + j + 1, total)
    except KeyboardInterrupt:
        return True
    return False


def state_bytes(w: Workload) -> int:
    """Bytes of the tensors a model keeps between steps: weights, buffers, optimizer state, input batch, labels."""
    tensors = [*w.model.parameters(), *w.model.buffers(), w.inputs, w.target]
    if w.optimizer is not None:
        tensors += [v for state in w.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _phase_stats(w: Workload, phase: str) -> Stats | None:
    return Stats.of(s[phase] for s in w.samples if phase in s)


def summarize(w: Workload, config: ProfileConfig, flops: tuple[int, int]) -> ModelProfile:
    step = _phase_stats(w, "step")
    step_flops, forward_flops = flops
    resident = state_bytes(w)
    return ModelProfile(
        label=w.label,
        spec=w.spec.name,
        attention=w.spec.attention.type,
        input_shape=config.input_shape(w.spec),
        forward_ms=_phase_stats(w, "forward"),
        backward_ms=_phase_stats(w, "backward"),
        optimizer_ms=_phase_stats(w, "optimizer"),
        step_ms=step,
        images_per_s=config.batch / (step.median / 1e3) if step else None,
        flops_per_image=step_flops // config.batch,
        forward_flops_per_image=forward_flops // config.batch,
        achieved_flops_per_s=step_flops / (step.median / 1e3) if step else None,
        peak_memory_bytes=resident + w.step_peak if w.step_peak is not None else None,
        state_bytes=resident,
        step_peak_bytes=w.step_peak,
        compile_s=w.compile_s,
        warmup_steps=w.warmup_steps,
        tail_paths=dict(w.tail_paths),
        samples=list(w.samples),
    )
