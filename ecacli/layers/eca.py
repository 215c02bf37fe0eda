"""The ECA module as the paper defines it: global average pool, k-tap 1-D conv across channels, sigmoid gate."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ecacli.layers.build import add_children
from ecacli.layers.channel_conv import per_channel, spatial_mean

torch.fx.wrap("spatial_mean")
torch.fx.wrap("per_channel")

EcaImpl = Literal["fast", "reference"]


class EcaModule(nn.Module):
    """x * sigmoid(conv1d_k(mean of x over its spatial axes)): each channel of x scaled by a gate from its k nearest channels.

    Takes any channel-first feature map, [N, C, L], [N, C, H, W] or [N, C, D, H, W]. The gate conv
    is a plain `nn.Conv1d(1, 1, k, bias=False)` sliding over the channel axis with zero padding
    (k - 1) / 2 (with `circular`, CECA: padding wraps around, so the first and last channels are
    neighbours); its weight is `conv.weight` [1, 1, k], as in the paper's released checkpoints.

    Called as a module it computes exactly that, whatever `impl` says. `impl` only tells a
    residual block whether it may run its BN -> gate -> add -> ReLU tail fused ("fast", see
    `ecacli.layers.tail`), reading this module's conv; "reference" keeps every block on the
    module path.
    """

    def __init__(self, kernel_size: int, circular: bool = False, impl: EcaImpl = "fast") -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd and >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.circular = circular
        self.impl = impl
        self.fuses_residual = impl == "fast"
        add_children(self, "EcaModule", {"kernel_size": kernel_size, "circular": circular, "impl": impl})

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample, per-channel gates of x, shaped [N, C, 1, ...] to broadcast over its spatial axes."""
        logits = self.conv(spatial_mean(x).unsqueeze(1))
        return per_channel(torch.sigmoid(logits)[:, 0, :], x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}, circular={self.circular}, impl={self.impl}"
