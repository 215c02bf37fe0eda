"""ECA-NS, the paper's non-shared ablation: each channel's gate has k weights of its own over its channel window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ecacli.layers.build import add_children


class WindowConv(nn.Conv1d):
    """[N, 1, C] pooled channels -> [N, C, 1]: channel c's k taps over channels c - (k-1)/2 .. c + (k-1)/2, zero-padded at both ends.

    A grouped conv (one k-tap filter per channel, weight [C, 1, k], no bias) over each
    channel's window of the padded vector.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.kernel_size[0] - 1) // 2
        windows = F.pad(x, (pad, pad)).unfold(-1, self.kernel_size[0], 1)[:, 0]
        return self._conv_forward(windows, self.weight, self.bias)


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
