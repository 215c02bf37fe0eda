"""MobileNetV2 and ECA-MobileNetV2 built from a spec, with torchvision's module names plus the paper's `conv.{3|4}` ECA."""

from __future__ import annotations

import torch
from torch import nn

from ecacli.arch import KINDS, Node
from ecacli.layers.build import add_children, build
from ecacli.models.network import Classifier, FeatureExtractor
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


class MobileNetV2(Classifier):
    """torchvision's MobileNetV2 layout and names (`features`, `classifier`), its initialisation included, with the spec's attention in every inverted residual."""

    def __init__(self, spec: MobileNetV2Spec) -> None:
        super().__init__()
        self.spec = spec
        add_children(self, "MobileNetV2", {"spec": spec})
        self.num_features = spec.last_channel_width
        init_weights(self)
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # `input`: the name graph exports give the tensor
        return self.forward_head(self.forward_features(input))

    def reset_classifier(self, num_classes: int) -> None:
        self._respec(num_classes)
        device = self.features[0][0].weight.device
        children = KINDS["MobileNetV2"].children({"spec": self.spec})
        self.classifier = build(children[-1]).to(device)
        init_weights(self.classifier)


class MobileNetV2Features(FeatureExtractor):
    """A MobileNetV2 trunk returning the output of each level `out_indices` names (the last inverted residual at each reduction), with the classifier model's names."""

    __constants__ = ["return_names"]

    def __init__(self, spec: MobileNetV2Spec, out_indices: tuple[int, ...]) -> None:
        super().__init__()
        self.spec = spec
        self.init_levels(spec, out_indices)
        add_children(self, "MobileNetV2Features", {"spec": spec, "out_indices": out_indices})
        init_weights(self)
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in self.return_names:
                features.append(x)
        return features


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNetV2 initialisation: Kaiming-normal convs (fan out), unit norms, N(0, 0.01) classifier."""
    if any(p.is_meta for p in model.parameters()):
        return  # shapes only: nothing to initialise
    for module in model.modules():
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
