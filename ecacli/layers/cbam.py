"""CBAM (Woo et al., ECCV 2018): channel attention from avg- and max-pooled descriptors, then spatial attention."""

from __future__ import annotations

import torch
from torch import nn

from ecacli.layers.build import add_children


class ChannelGate(nn.Module):
    """A shared two-layer MLP (1x1 convs) over the avg- and max-pooled channels; their sum, through a sigmoid, gates x.

    Both descriptors go through the MLP as one batch of 2N, so each layer runs once.
    """

    def __init__(self, channels: int, hidden: int, bias: bool) -> None:
        super().__init__()
        add_children(self, "ChannelGate", {"channels": channels, "hidden": hidden, "bias": bias})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pooled = torch.cat([x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)])
        logits = self.fc2(self.relu(self.fc1(pooled)))
        return x * torch.sigmoid(logits[:n] + logits[n:])


class SpatialGate(nn.Module):
    """A k x k conv + BN over the channel-wise mean and max maps; through a sigmoid, it gates every position."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        add_children(self, "SpatialGate", {"kernel_size": kernel_size})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(maps)))


class CbamModule(nn.Module):
    """Channel attention, then spatial attention, applied in sequence."""

    def __init__(self, channels: int, hidden: int, spatial_kernel: int = 7, mlp_bias: bool = False) -> None:
        super().__init__()
        add_children(self, "CbamModule", {"channels": channels, "hidden": hidden, "spatial_kernel": spatial_kernel, "mlp_bias": mlp_bias})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
