"""MobileNetV2 and ECA-MobileNetV2 built from a spec, with torchvision's module names plus the paper's `conv.{3|4}` ECA."""

from __future__ import annotations

import torch
from torch import nn

from ecacli.arch import Node
from ecacli.layers.build import add_children
from ecacli.spec import MobileNetV2Spec


class InvertedResidual(nn.Module):
    """Expansion (unless t = 1), depthwise 3x3, linear projection, BN, attention; the input added back where shapes allow (no ReLU after the add)."""

    __constants__ = ["use_res_connect"]

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, attention: Node | None = None, norm: str = "batch") -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        args = {"in_channels": in_channels, "out_channels": out_channels, "stride": stride, "expand_ratio": expand_ratio, "attention": attention, "norm": norm}
        add_children(self, "InvertedResidual", args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 layout and names (`features`, `classifier`), its initialisation included, with the spec's attention in every inverted residual."""

    def __init__(self, spec: MobileNetV2Spec) -> None:
        super().__init__()
        self.spec = spec
        add_children(self, "MobileNetV2", {"spec": spec})
        self._init_weights()

    def _init_weights(self) -> None:
        if self.classifier[1].weight.is_meta:
            return  # shapes only: nothing to initialise
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))
