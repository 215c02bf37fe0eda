"""ECA-NS, the paper's non-shared ablation: each channel's gate has k weights of its own over its channel window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ecacli.layers.build import add_children


class WindowConv(nn.Conv1d):
    """[N, 1, C] pooled channels -> [N, C, 1]: channel c's k taps over channels c - (k-1)/2 .. c + (k-1)/2, zero-padded at both ends.

    A grouped conv (one k-tap filter per channel, weight [C, 1, k], no bias) over each
    channel's window of the padded vector, written as k shifted slices of it so that every
    exporter and runtime takes it.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        channels = x.shape[-1]
        padded = F.pad(x[:, 0, :], ((k - 1) // 2, (k - 1) // 2))
        out = padded[:, 0:channels] * self.weight[:, 0, 0]
        for tap in range(1, k):
            out = out + padded[:, tap : tap + channels] * self.weight[:, 0, tap]
        return out.unsqueeze(-1)


class EcaNsModule(nn.Module):
    """x * sigmoid(window_conv(mean over H, W of x)), with a separate k-tap filter per channel (k x C weights, named `conv.weight`)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd and >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        add_children(self, "EcaNsModule", {"channels": channels, "kernel_size": kernel_size})

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample, per-channel gates of x, shaped [N, C, 1, 1]."""
        return torch.sigmoid(self.conv(x.mean(dim=(2, 3)).unsqueeze(1))).unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}"
