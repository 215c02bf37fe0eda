"""Squeeze-and-excitation (Hu et al., CVPR 2018), the channel attention ECA is measured against."""

from __future__ import annotations

import torch
from torch import nn

from ecacli.layers.build import add_children


class SeModule(nn.Module):
    """Gates each channel by sigmoid(fc2(relu(fc1(mean over H, W)))), with 1x1 convs that carry biases.

    Named `fc1`/`fc2` as timm's SEModule, so seresnet checkpoints map key for key.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        add_children(self, "SeModule", {"channels": channels, "hidden": hidden})

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-channel gates of shape [N, C, 1, 1]."""
        return torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
