"""How a residual block runs its tail, norm(conv(u)) -> attention -> + shortcut -> activation.

`choose_tail_path` is the one decision: the first rule of `TAIL_RULES` that applies to a call
names its path, and `run_tail` runs every path but the module one, which the block runs itself
(it is the only one TorchScript compiles). Every path computes what the module path computes;
the fused ones only do it in fewer passes over memory (see `ecacli.layers.fused_eca`). The
table of paths in docs/design.md is this table.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad
from torch.autograd.profiler import record_function
from torch.nn.modules import module as module_hooks

from ecacli.layers.channel_conv import graph_recorded
from ecacli.layers.fused_eca import fold_terms, folded_bias, folded_residual, gated_residual, library_conv, traced_residual

FUSED_RANGE = "ecacli.fused_tail"
"""The profiler range around a fused tail's work (norm, gate, add, activation; not the conv, not the shortcut)."""

PASSIVE_HOOK = "_ecacli_passive_hook"
"""Attribute marking a hook that only opens or closes a profiler range: it does not make a module observed."""


class TailPath(str, enum.Enum):
    """The ways a block's tail can run."""

    MODULE = "module"
    """conv, norm, attention, += shortcut, activation: each module called in turn, as the reference writes it."""
    FUSED = "fused"
    """One autograd Function for BatchNorm, gate, add and ReLU, saving no BatchNorm output."""
    FOLDED = "folded"
    """Inference: eval BatchNorm folded into the conv's bias and the gating pass."""
    TRACED = "traced"
    """torch.compile: the tail as plain tensor ops that read everything from the conv's output."""


@dataclass(frozen=True)
class TailCall:
    """What the decision reads: the block's modules for the tail, the tail's input `u` and the block's input `x`."""

    conv: nn.Module
    norm: nn.Module
    attention: nn.Module | None
    activation: nn.Module
    u: torch.Tensor
    x: torch.Tensor

    @cached_property
    def fold_terms(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Eval BatchNorm as (scale, bias) for the fold, or None (see `fused_eca.fold_terms`); computed once per call."""
        return fold_terms(self.norm, self.u)  # type: ignore[arg-type]


GLOBAL_HOOKS = (
    module_hooks._global_forward_hooks,
    module_hooks._global_forward_pre_hooks,
    module_hooks._global_backward_hooks,
    module_hooks._global_backward_pre_hooks,
)


def _active(hook_dicts) -> bool:
    return any(not getattr(hook, PASSIVE_HOOK, False) for hooks in hook_dicts for hook in hooks.values())


def _own_hooks(module: nn.Module) -> bool:
    return _active((module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks))


def observed(module: nn.Module) -> bool:
    """Whether calling `module` would run hooks (its own or global ones), profiler-range hooks aside."""
    return _active(GLOBAL_HOOKS) or _own_hooks(module)


def _no_fused_form(call: TailCall) -> bool:
    return call.attention is None or not getattr(call.attention, "fuses_residual", False)


def _recorded(call: TailCall) -> bool:
    return graph_recorded(call.u)


def _other_norm_or_activation(call: TailCall) -> bool:
    norm = call.norm
    return type(norm) is not nn.BatchNorm2d or not norm.affine or type(call.activation) is not nn.ReLU


def _observed(call: TailCall) -> bool:
    return _active(GLOBAL_HOOKS) or any(_own_hooks(m) for m in (call.norm, call.activation, *call.attention.modules()))  # type: ignore[union-attr]


def _compiling(call: TailCall) -> bool:
    return torch.compiler.is_compiling()


def plain(t: torch.Tensor | None) -> bool:
    """Whether `t` is an ordinary tensor: it has storage (torch.func's vmap, grad and jvp wrappers have none) and no forward-mode tangent."""
    if t is None:
        return True
    try:
        t.untyped_storage()
    except (NotImplementedError, RuntimeError):
        return False
    return forward_ad.unpack_dual(t).tangent is None


def _transformed(call: TailCall) -> bool:
    norm, gate_conv = call.norm, call.attention.conv  # type: ignore[union-attr]
    return not all(plain(t) for t in (call.u, call.x, call.conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var, gate_conv.weight))


def _off_cpu(call: TailCall) -> bool:
    return call.u.device.type != "cpu"


def _autograd_or_training(call: TailCall) -> bool:
    return call.norm.training or torch.is_grad_enabled()


def _small(call: TailCall) -> bool:
    u = call.u
    return u.numel() // u.shape[1] * call.conv.out_channels < FOLD_MIN_ELEMENTS  # the block's output: its last conv keeps H, W


def _foldable(call: TailCall) -> bool:
    conv = call.conv
    return library_conv(conv) and not observed(conv) and call.fold_terms is not None


def _always(call: TailCall) -> bool:
    return True


FOLD_MIN_ELEMENTS = 1 << 18
"""Inference blocks whose output has fewer values than this take the module path (see the rule)."""


@dataclass(frozen=True)
class TailRule:
    """One row of the decision: when it applies, the path it gives, and why."""

    when: str
    path: TailPath
    why: str
    applies: Callable[[TailCall], bool]


TAIL_RULES: tuple[TailRule, ...] = (
    TailRule("no attention, or one without a fused form (se, cbam, `impl: reference`)", TailPath.MODULE, "nothing to fuse", _no_fused_form),
    TailRule("torch.jit.trace, FX symbolic tracing, ONNX or torch.export", TailPath.MODULE, "the recorded graph holds the reference's module calls", _recorded),
    TailRule("norm not exactly `BatchNorm2d` with affine parameters (SyncBatchNorm, FrozenBatchNorm2d, GroupNorm, subclasses), or activation not exactly `ReLU`", TailPath.MODULE, "the fused math is BatchNorm2d's and ReLU's", _other_norm_or_activation),
    TailRule("hooks on the norm, the attention, its conv or the activation", TailPath.MODULE, "observers see the reference's calls, inputs and outputs", _observed),
    TailRule("torch.compile", TailPath.TRACED, "the compiler fuses it and saves no BatchNorm output", _compiling),
    TailRule("torch.func transforms (vmap, grad, jvp, ...) or forward-mode AD", TailPath.MODULE, "every transform has rules for the reference's ops", _transformed),
    TailRule("eager on a device other than the CPU (CUDA)", TailPath.MODULE, "the fused forms are measured on CPU only", _off_cpu),
    TailRule("BatchNorm in training mode, or grad mode on", TailPath.FUSED, "one pass less, and no BatchNorm output saved for backward", _autograd_or_training),
    TailRule(f"inference, block output under {FOLD_MIN_ELEMENTS:,} values", TailPath.MODULE, "the fused forms' fixed cost exceeds the pass they save", _small),
    TailRule("inference, a plain Conv2d without hooks, BatchNorm with running statistics, not float16", TailPath.FOLDED, "two passes where BatchNorm, add and ReLU take three", _foldable),
    TailRule("other inference", TailPath.FUSED, "one pass less than the module path", _always),
)


def tail_rule(call: TailCall) -> TailRule:
    """The first rule in `TAIL_RULES` that applies to this call."""
    return next(rule for rule in TAIL_RULES if rule.applies(call))


_recorded_paths: list[TailPath] | None = None


@contextlib.contextmanager
def recording_paths() -> Iterator[list[TailPath]]:
    """A list that receives the path of every tail decision made while the context is open (one per block call; under torch.compile, one per traced block)."""
    global _recorded_paths
    outer, _recorded_paths = _recorded_paths, []
    try:
        yield _recorded_paths
    finally:
        _recorded_paths = outer


def choose_tail_path(call: TailCall) -> TailPath:
    """The path this call takes: its rule's."""
    path = tail_rule(call).path
    if _recorded_paths is not None:
        _recorded_paths.append(path)
    return path


def run_tail(path: TailPath, call: TailCall, downsample: nn.Module | None) -> torch.Tensor:
    """Run a fused path (not the module path), with the block's shortcut projection `downsample` (None: identity).

    The block's conv and shortcut run as module calls outside the `FUSED_RANGE` profiler range,
    so a breakdown counts only the fused norm, gate, add and activation as the tail's.
    """
    conv, norm, attention, u, x = call.conv, call.norm, call.attention, call.u, call.x
    gate_conv = attention.conv  # type: ignore[union-attr]

    def shortcut() -> torch.Tensor:
        return x if downsample is None else downsample(x)

    if path is TailPath.TRACED:
        return traced_residual(norm, gate_conv, conv(u), shortcut())  # type: ignore[arg-type]
    if path is TailPath.FOLDED:
        scale, bias = call.fold_terms  # type: ignore[misc]
        bias = folded_bias(conv, bias, u)  # type: ignore[arg-type]
        z = F.conv2d(u, conv.weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)  # nn.Conv2d's own computation
        identity = shortcut()
        with record_function(FUSED_RANGE):
            return folded_residual(z, scale, gate_conv, identity)
    z = conv(u)
    identity = shortcut()
    with record_function(FUSED_RANGE):
        return gated_residual(norm, gate_conv, z, identity)  # type: ignore[arg-type]
