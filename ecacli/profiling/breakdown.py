"""Where a step's time goes: a torch.profiler run of a few steps, grouped by phase and attention.

Every phase of the step runs in a `record_function` range, and so does the forward work of
every attention module: a module called as a module gets forward hooks; one that fuses its
block's tail (its last conv, BN, gate, add, ReLU; ECA's "fast" impl) runs inside
`residual_tail`, which is wrapped for the while, with the block's last conv and shortcut
projection (run by that call) kept out. Backward work belongs to attention when it evaluates an autograd node
created inside an attention range (matched by the profiler's sequence numbers). Each
operator's self time is summed per phase, in and out of attention. Times are the operators' CPU
time on CPU and the CUDA kernel time they launch on CUDA; the profiler adds overhead, so read
the shares rather than the absolute times.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.hooks import RemovableHandle

from ecacli.profiling.device import make_timer, native_stderr_silenced
from ecacli.profiling.runner import ProfileConfig, Workload, run_step

RANGE_PREFIX = "ecacli."
ATTENTION = "attention"
SHORTCUT = "shortcut"
LAST_CONV = "last_conv"
PHASES = ("forward", "backward", "optimizer")
OTHER = "other"
OUTSIDE = "outside the phases"
BACKWARD_NODE = "autograd::engine::evaluate_function: "
BREAKDOWN_STEPS = 3
_NOTHING = object()


@dataclass(frozen=True)
class GroupRow:
    """Time of one phase inside or outside the attention modules, per step."""

    phase: str
    part: str
    ms_per_step: float
    share: float


@dataclass(frozen=True)
class OpRow:
    """One operator's self time per step, and how much of it ran inside attention modules."""

    name: str
    ms_per_step: float
    share: float
    attention_ms_per_step: float


@dataclass
class Breakdown:
    label: str
    steps: int
    clock: str
    attention_scope: str
    total_ms_per_step: float
    groups: list[GroupRow]
    ops: list[OpRow]

    @property
    def attention_share(self) -> float:
        return sum(g.share for g in self.groups if g.part == ATTENTION)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("groups", "ops")},
            "attention_share": self.attention_share,
            "groups": [asdict(g) for g in self.groups],
            "ops": [asdict(o) for o in self.ops],
        }


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every residual block that has one (blocks expose it as `attention`)."""
    return [m.attention for m in model.modules() if isinstance(getattr(m, "attention", None), nn.Module)]


def fuses_residual(module: nn.Module) -> bool:
    """Whether the block hands its whole tail (BN, gate, add, ReLU) to this attention module."""
    return bool(getattr(module, "fuses_residual", False))


@contextmanager
def attention_ranges(model: nn.Module) -> Iterator[None]:
    """Wrap every attention module's forward work in a profiler range while the context is open.

    A module called as a module gets forward hooks. One that fuses its block's tail runs inside
    `residual_tail`, wrapped on the instance for the while; the block's shortcut projection and
    last conv, which that call also runs, get ranges of their own so they are not counted as
    attention: a hook on the projection, and the conv's `_conv_forward` wrapped (a hook on the
    conv would change the path the tail takes).
    """
    handles = []
    wrapped: list[tuple[nn.Module, str, Any]] = []  # (owner, attribute, what the instance held before, or _NOTHING)

    def wrap(owner: nn.Module, name: str, range_name: str) -> None:
        wrapped.append((owner, name, vars(owner).get(name, _NOTHING)))
        setattr(owner, name, _in_range(getattr(owner, name), range_name))

    try:
        for block in model.modules():
            module = getattr(block, "attention", None)
            if not isinstance(module, nn.Module):
                continue
            if fuses_residual(module):
                wrap(module, "residual_tail", ATTENTION)
                wrap(block.last_conv, "_conv_forward", LAST_CONV)
                if isinstance(getattr(block, "downsample", None), nn.Module):
                    handles += _hook_range(block.downsample, SHORTCUT)
            else:
                handles += _hook_range(module, ATTENTION)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for owner, name, before in reversed(wrapped):
            if before is _NOTHING:
                delattr(owner, name)
            else:
                setattr(owner, name, before)


def _hook_range(module: nn.Module, name: str) -> list[RemovableHandle]:
    """Forward hooks that open a profiler range before `module` runs and close it after."""
    scopes: list[record_function] = []

    def enter(*_: Any) -> None:
        scope = record_function(RANGE_PREFIX + name)
        scope.__enter__()
        scopes.append(scope)

    def leave(*_: Any) -> None:
        scopes.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def _in_range(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(RANGE_PREFIX + name):
            return method(*args, **kwargs)

    return wrapped


def _phase_range(phase: str) -> record_function:
    return record_function(RANGE_PREFIX + phase)


def _within(intervals: list[tuple[int, int]], start: int) -> bool:
    return any(low <= start < high for low, high in intervals)


def _classify(events: list[Any]) -> Iterator[tuple[Any, str, bool]]:
    """(event, phase, in attention) for every operator event.

    Forward: inside an attention range and not in a shortcut or last-conv range within it. Backward: inside an autograd node evaluation whose
    sequence number belongs to a node created inside an attention range in the forward.
    Ranges are matched by time, not thread, since CUDA runs the backward on its own thread
    while the calling thread waits.
    """
    def spans(name: str) -> list[tuple[int, int]]:
        return [(e.time_range.start, e.time_range.end) for e in events if e.name == RANGE_PREFIX + name]

    phases = [(low, high, phase) for phase in PHASES for low, high in spans(phase)]
    attention, excluded = spans(ATTENTION), spans(SHORTCUT) + spans(LAST_CONV)
    operators = [e for e in events if not e.name.startswith(RANGE_PREFIX)]

    def in_forward_attention(start: int) -> bool:
        return _within(attention, start) and not _within(excluded, start)

    created = {e.sequence_nr for e in operators if e.sequence_nr >= 0 and in_forward_attention(e.time_range.start)}
    backward = [(e.time_range.start, e.time_range.end) for e in operators if e.name.startswith(BACKWARD_NODE) and e.sequence_nr in created]
    for e in operators:
        start = e.time_range.start
        phase = next((name for low, high, name in phases if low <= start < high), OUTSIDE)
        yield e, phase, in_forward_attention(start) or _within(backward, start)


def breakdown(w: Workload, config: ProfileConfig, steps: int = BREAKDOWN_STEPS, top: int = 15) -> Breakdown:
    """Profile `steps` eager steps of `w` (compiled models run eagerly here, so hooks see every module)."""
    device = w.inputs.device
    eager = dataclasses.replace(w, runner=w.model, samples=[])
    timer = make_timer(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with attention_ranges(w.model), native_stderr_silenced(), profile(activities=activities) as prof:
        for _ in range(steps):
            run_step(eager, config, timer, annotate=_phase_range)
    use_device = device.type == "cuda"
    group_us: dict[tuple[str, str], float] = defaultdict(float)
    op_us: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e, phase, in_attention in _classify([e for e in prof.events() if e.device_type == DeviceType.CPU]):
        us = e.self_device_time_total if use_device else e.self_cpu_time_total
        group_us[(phase, ATTENTION if in_attention else OTHER)] += us
        op_us[e.name][0] += us
        op_us[e.name][1] += us if in_attention else 0.0
    total = sum(group_us.values()) or 1.0
    order = ["forward", "backward", "optimizer", OUTSIDE]
    groups = [
        GroupRow(phase, part, us / steps / 1e3, us / total)
        for (phase, part), us in sorted(group_us.items(), key=lambda item: (order.index(item[0][0]), item[0][1] != ATTENTION))
        if us > 0
    ]
    ops = [
        OpRow(name, us / steps / 1e3, us / total, attention_us / steps / 1e3)
        for name, (us, attention_us) in sorted(op_us.items(), key=lambda item: -item[1][0])[:top]
    ]
    clock = "CUDA kernel time per operator" if use_device else "CPU self time per operator"
    fused = any(fuses_residual(m) for m in attention_modules(w.model))
    scope = "attention modules, each fused with its block's last BN, residual add and ReLU (last conv and shortcut projection excluded)" if fused else "attention modules"
    return Breakdown(w.label, steps, clock, scope, total / steps / 1e3, groups, ops)
