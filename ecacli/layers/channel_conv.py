"""Shape helpers every attention module shares, and the ECA gate conv's math where a fused tail needs it by hand.

The gate conv itself is a plain `nn.Conv1d` (what counting and rewriting tools expect); these
functions only pool and broadcast over any number of spatial axes, and give the fused tail the
conv as fusable tensor ops (under torch.compile) and its backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """[N, C, *spatial] -> [N, C]: the mean over every axis after the channels (L, H x W or D x H x W).

    This and `per_channel` read the input's rank, which FX symbolic tracing cannot: a module
    calling them registers them with `torch.fx.wrap` so the traced graph records the call.
    """
    return x.mean(dim=[axis for axis in range(2, x.dim())])


def per_channel(gate: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N, C] -> [N, C, 1, ...]: one value per (sample, channel), broadcastable over `like`'s spatial axes."""
    for _ in range(like.dim() - 2):
        gate = gate.unsqueeze(-1)
    return gate


def graph_recorded(x: torch.Tensor) -> bool:
    """Whether `x` flows through a graph being recorded (torch.jit.trace, FX symbolic tracing, ONNX export, torch.export), which must hold library calls only."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch < 2.7 has none; its torch.export counts as compiling
    return torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy) or torch.onnx.is_in_onnx_export() or exporting()


def channel_windows(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """[N, 1, C] -> [N, 1, C, k]: the k inputs each output position of the gate's conv sees, padded as the conv pads."""
    pad = conv.padding[0]
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, (pad, pad), mode=mode).unfold(-1, conv.kernel_size[0], 1)


def channel_correlation(pooled: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """conv(pooled[:, None, :])[:, 0, :] for the gate's 1-input, 1-output, bias-free conv, as plain tensor ops (for the compiler to fuse)."""
    return channel_windows(pooled[:, None, :], conv)[:, 0] @ conv.weight.view(-1)


def gate_logits(conv: nn.Conv1d, pooled: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """conv(pooled) for a [N, 1, C] input (with `weight` in place of the conv's own if given), computed in pooled's dtype with autocast off: the fused tails keep the [N, C] gate in float32 whatever the activations' dtype."""
    pad = conv.padding[0]
    if conv.padding_mode == "circular" and pad:
        pooled, pad = F.pad(pooled, (pad, pad), mode="circular"), 0
    with torch.autocast(pooled.device.type, enabled=False):
        return F.conv1d(pooled, (conv.weight if weight is None else weight).to(pooled.dtype), None, 1, pad)


def conv1d_backward(conv: nn.Conv1d, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the gate's conv w.r.t. its input [N, 1, C] and weight [1, 1, k], given the output's gradient.

    One call of the convolution's backward (what autograd runs for `conv`); circular padding's
    gradient is folded back from the padded margins onto the channels they copied.
    """
    pad = conv.padding[0]
    circular = conv.padding_mode == "circular" and pad > 0
    padded = F.pad(x, (pad, pad), mode="circular") if circular else x
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad, padded, weight, None, [1], [0 if circular else pad], [1], False, [0], 1, [True, True, False]
    )
    if circular:
        wrapped = grad_x[..., pad:-pad].clone()
        wrapped[..., -pad:] += grad_x[..., :pad]
        wrapped[..., :pad] += grad_x[..., -pad:]
        grad_x = wrapped
    return grad_x, grad_weight
