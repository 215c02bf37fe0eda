"""The ECA module as the paper defines it: global average pool, k-tap 1-D conv across channels, sigmoid gate."""

from __future__ import annotations

import torch
from torch import nn


class EcaModule(nn.Module):
    """Scales each channel of x by sigmoid(conv1d_k(mean over H, W of x)), with no bias.

    The conv slides over the channel axis with zero padding (k - 1) / 2, so each gate sees
    its k nearest channels; its weight is named `conv.weight` with shape [1, 1, k] as in the
    paper's released checkpoints.
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd and >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-channel gates of shape [N, C, 1, 1]."""
        pooled = x.mean(dim=(2, 3))
        logits = self.conv(pooled.unsqueeze(1)).squeeze(1)
        return torch.sigmoid(logits)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}"
