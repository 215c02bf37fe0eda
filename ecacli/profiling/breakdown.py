"""Where a step's time goes: a torch.profiler run of a few steps, grouped by phase and attention.

Every phase of the step runs in a `record_function` range. Attention gets ranges of two kinds:
a module called as a module gets passive forward hooks (they do not change the path a block
takes, see `ecacli.layers.tail`); a block that runs its tail fused opens `FUSED_RANGE` itself
around the fused norm, gate, add and activation (its last conv and shortcut run outside it).
Backward work belongs to attention when it evaluates an autograd node created inside such a
range (matched by the profiler's sequence numbers). Each operator's self time is summed per
phase, in and out of attention. A fused tail also runs what a plain block runs (BatchNorm, the
residual add, ReLU): its operators are told apart by name (`PLAIN_BLOCK_OPS`), so the ECA share
counts only what ECA adds (pooling, the gate conv, sigmoid, the gating multiply; a fused op
that gates and adds in one, addcmul, counts as ECA's). Times are the operators' CPU time on CPU and the CUDA kernel
time they launch on CUDA; the profiler adds overhead, so read the shares rather than the
absolute times.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.hooks import RemovableHandle

from ecacli.layers.tail import FUSED_RANGE, PASSIVE_HOOK
from ecacli.profiling.device import make_timer
from ecacli.quiet import native_output_silenced
from ecacli.profiling.runner import ProfileConfig, Workload, run_step

RANGE_PREFIX = "ecacli."
ATTENTION = "attention"
FUSED = "fused tail"
FUSED_PLAIN = "fused tail, plain work"
PHASES = ("forward", "backward", "optimizer")
OTHER = "other"
OUTSIDE = "outside the phases"
BACKWARD_NODE = "autograd::engine::evaluate_function: "
BREAKDOWN_STEPS = 3
PART_NAMES = {
    ATTENTION: "attention modules",
    FUSED: "ECA in fused tails",
    FUSED_PLAIN: "BN, add, ReLU in fused tails",
    OTHER: "other",
}
ECA_PARTS = (ATTENTION, FUSED)
"""The parts that are the attention's own work: what a plain block does not run."""
PLAIN_BLOCK_OPS = frozenset(
    f"aten::{name}"
    for name in (
        "batch_norm", "_batch_norm_impl_index", "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
        "native_batch_norm_backward", "cudnn_batch_norm", "cudnn_batch_norm_backward", "miopen_batch_norm", "miopen_batch_norm_backward",
        "add", "add_", "relu", "relu_", "clamp_min", "clamp_min_", "threshold_backward",
    )
)
"""Operators of a fused tail that a plain block runs too: BatchNorm forward and backward, the residual add, ReLU and its gradient."""


@dataclass(frozen=True)
class GroupRow:
    """Time of one phase in one part (attention modules, fused tails, other), per step."""

    phase: str
    part: str
    ms_per_step: float
    share: float


@dataclass(frozen=True)
class OpRow:
    """One operator's self time per step, and how much of it was the attention's own work (`ECA_PARTS`)."""

    name: str
    ms_per_step: float
    share: float
    attention_ms_per_step: float


@dataclass
class Breakdown:
    """A profiled step split by phase and part (attention modules, fused tails, other), with the top operators."""

    spec: str
    steps: int
    clock: str
    total_ms_per_step: float
    groups: list[GroupRow]
    ops: list[OpRow]

    @property
    def attention_share(self) -> float:
        """Share of the step in what the attention adds: attention modules and ECA's work in fused tails (not their BN, add and ReLU)."""
        return sum(g.share for g in self.groups if g.part in {PART_NAMES[p] for p in ECA_PARTS})

    @property
    def plain_tail_share(self) -> float:
        """Share of the step in the BN, add and ReLU of fused tails: work a plain block runs too."""
        return sum(g.share for g in self.groups if g.part == PART_NAMES[FUSED_PLAIN])

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("groups", "ops")},
            "attention_share": self.attention_share,
            "plain_tail_share": self.plain_tail_share,
            "groups": [asdict(g) for g in self.groups],
            "ops": [asdict(o) for o in self.ops],
        }


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every residual block that has one (blocks expose it as `attention`)."""
    return [m.attention for m in model.modules() if isinstance(getattr(m, "attention", None), nn.Module)]


@contextmanager
def attention_ranges(model: nn.Module) -> Iterator[None]:
    """Open an `ecacli.attention` profiler range around every call of an attention module while the context is open.

    The hooks are passive: a block whose tail runs fused keeps running it fused (and marks its
    own `FUSED_RANGE`), so the profile shows the path the model takes unobserved.
    """
    handles = [handle for module in attention_modules(model) for handle in _hook_range(module, RANGE_PREFIX + ATTENTION)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _hook_range(module: nn.Module, name: str) -> list[RemovableHandle]:
    """Passive forward hooks that open a profiler range before `module` runs and close it after."""
    scopes: list[record_function] = []

    def enter(*_: Any) -> None:
        scope = record_function(name)
        scope.__enter__()
        scopes.append(scope)

    def leave(*_: Any) -> None:
        scopes.pop().__exit__(None, None, None)

    for hook in (enter, leave):
        setattr(hook, PASSIVE_HOOK, True)
    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def _phase_range(phase: str) -> record_function:
    return record_function(RANGE_PREFIX + phase)


def _within(intervals: list[tuple[int, int]], start: int) -> bool:
    return any(low <= start < high for low, high in intervals)


def _classify(events: list[Any]) -> Iterator[tuple[Any, str, str]]:
    """(event, phase, part) for every operator event, the part being ATTENTION, FUSED or OTHER.

    Forward: inside an attention or fused-tail range. Backward: inside an autograd node
    evaluation whose sequence number belongs to a node created inside such a range in the
    forward. Ranges are matched by time, not thread, since CUDA runs the backward on its own
    thread while the calling thread waits.
    """
    def spans(name: str) -> list[tuple[int, int]]:
        return [(e.time_range.start, e.time_range.end) for e in events if e.name == name]

    phases = [(low, high, phase) for phase in PHASES for low, high in spans(RANGE_PREFIX + phase)]
    ranges = {ATTENTION: spans(RANGE_PREFIX + ATTENTION), FUSED: spans(FUSED_RANGE)}
    operators = [e for e in events if not e.name.startswith(RANGE_PREFIX)]

    def forward_part(start: int) -> str:
        return next((part for part, intervals in ranges.items() if _within(intervals, start)), OTHER)

    created: dict[int, str] = {}
    for e in operators:
        if e.sequence_nr >= 0 and not e.name.startswith(BACKWARD_NODE):
            created.setdefault(e.sequence_nr, forward_part(e.time_range.start))
    backward = {
        part: [(e.time_range.start, e.time_range.end) for e in operators if e.name.startswith(BACKWARD_NODE) and created.get(e.sequence_nr) == part]
        for part in ranges
    }
    for e in operators:
        start = e.time_range.start
        phase = next((name for low, high, name in phases if low <= start < high), OUTSIDE)
        part = forward_part(start)
        if part == OTHER:
            part = next((p for p, intervals in backward.items() if _within(intervals, start)), OTHER)
        yield e, phase, part


def breakdown(w: Workload, config: ProfileConfig, steps: int = BREAKDOWN_STEPS, top: int = 15) -> Breakdown:
    """Profile `steps` eager steps of `w` (compiled models run eagerly here, so hooks see every module)."""
    device = w.inputs.device
    eager = dataclasses.replace(w, runner=w.model, samples=[])
    timer = make_timer(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with attention_ranges(w.model), native_output_silenced(2), profile(activities=activities) as prof:
        for _ in range(steps):
            run_step(eager, config, timer, annotate=_phase_range)
    use_device = device.type == "cuda"
    group_us: dict[tuple[str, str], float] = defaultdict(float)
    op_us: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e, phase, part in _classify([e for e in prof.events() if e.device_type == DeviceType.CPU]):
        if part == FUSED and e.name in PLAIN_BLOCK_OPS:
            part = FUSED_PLAIN
        us = e.self_device_time_total if use_device else e.self_cpu_time_total
        group_us[(phase, part)] += us
        op_us[e.name][0] += us
        op_us[e.name][1] += us if part in ECA_PARTS else 0.0
    total = sum(group_us.values()) or 1.0
    order = ["forward", "backward", "optimizer", OUTSIDE]
    parts = list(PART_NAMES)
    groups = [
        GroupRow(phase, PART_NAMES[part], us / steps / 1e3, us / total)
        for (phase, part), us in sorted(group_us.items(), key=lambda item: (order.index(item[0][0]), parts.index(item[0][1])))
        if us > 0
    ]
    ops = [
        OpRow(name, us / steps / 1e3, us / total, attention_us / steps / 1e3)
        for name, (us, attention_us) in sorted(op_us.items(), key=lambda item: -item[1][0])[:top]
    ]
    clock = "CUDA kernel time per operator" if use_device else "CPU self time per operator"
    return Breakdown(w.spec.name, steps, clock, total / steps / 1e3, groups, ops)
