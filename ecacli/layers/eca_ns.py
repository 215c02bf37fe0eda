"""ECA-NS, the paper's non-shared ablation: each channel's gate has k weights of its own over its channel window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ecacli.layers.build import add_children
from ecacli.layers.channel_conv import per_channel, spatial_mean

torch.fx.wrap("spatial_mean")
torch.fx.wrap("per_channel")


def channel_neighbourhoods(pooled: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """[N, C] -> [N, C, k]: channel c's window, channels c - (k-1)/2 .. c + (k-1)/2, zero-padded at both ends.

    Built from k shifted slices of the padded vector (not `unfold`), so every exporter takes it.
    """
    channels = pooled.shape[1]
    half = (kernel_size - 1) // 2
    padded = F.pad(pooled, (half, half))
    return torch.stack([padded[:, tap : tap + channels] for tap in range(kernel_size)], dim=-1)


class EcaNsModule(nn.Module):
    """x * sigmoid(conv(windows of the pooled channels)), with a separate k-tap filter per channel.

    The conv is a plain grouped `nn.Conv1d(C, C, k, groups=C, bias=False)` applied to each
    channel's window (weight `conv.weight` [C, 1, k], k x C parameters). Takes any channel-first
    feature map, as `EcaModule` does.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd and >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        add_children(self, "EcaNsModule", {"channels": channels, "kernel_size": kernel_size})

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample, per-channel gates of x, shaped [N, C, 1, ...] to broadcast over its spatial axes."""
        logits = self.conv(channel_neighbourhoods(spatial_mean(x), self.kernel_size))
        return per_channel(torch.sigmoid(logits)[:, :, 0], x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}"
