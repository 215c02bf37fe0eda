"""ResNet and ECA-ResNet built from a spec, with torchvision's module names plus `eca.conv`.

With `attention.type: none` the state_dict keys and shapes are exactly torchvision's resnetNN;
with ECA each block gains `eca.conv.weight` [1, 1, k], as in the paper's released checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from ecacli.arch import Node
from ecacli.arch.resnet import head_node
from ecacli.layers import tail
from ecacli.layers.build import add_children, build
from ecacli.models.network import Classifier, FeatureExtractor
from ecacli.spec import ResNetSpec


class ResidualBlock(nn.Module):
    """Base of both block types: holds the attention module under its type's name (`eca`, `se`, `cbam`) and runs the tail.

    The tail is norm(conv(u)) -> attention -> += shortcut(x) -> ReLU, with the block's last conv
    and norm named by `tail_names`. Eagerly, `ecacli.layers.tail` may run it fused (same
    numbers, fewer passes); scripted, and wherever the fused forms step aside, the block calls
    each module in turn.
    """

    __constants__ = ["attention_name"]
    __jit_unused_properties__ = ["attention", "last_conv", "last_bn"]
    tail_names: tuple[str, str] = ("", "")

    kind = ""

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: str | None = None, attention: Node | None = None, norm: str = "batch") -> None:
        """The block `ecacli.arch.resnet` describes: `downsample` None, "conv" or "avg"; `attention` the node of its attention module."""
        super().__init__()
        self.attention_name = attention.name if attention is not None else ""
        args = {"in_channels": in_channels, "planes": planes, "stride": stride, "downsample": downsample, "attention": attention, "norm": norm}
        add_children(self, self.kind, args)
        if downsample is None:
            self.downsample = None

    @property
    def attention(self) -> nn.Module | None:
        return getattr(self, self.attention_name) if self.attention_name else None

    @property
    def last_conv(self) -> nn.Module:
        return getattr(self, self.tail_names[0])

    @property
    def last_bn(self) -> nn.Module:
        return getattr(self, self.tail_names[1])

    def attend(self, out: torch.Tensor) -> torch.Tensor:
        """The attention module applied to `out` (unchanged without attention), found by name so TorchScript compiles it too."""
        for name, module in self.named_children():
            if name == self.attention_name:
                out = module(out)
        return out

    def residual(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """relu(out + shortcut(x)), the add in place as torchvision's blocks do it."""
        if self.downsample is not None:
            x = self.downsample(x)
        out += x
        return self.relu(out)

    @torch.jit.unused
    def fused_tail(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """The tail on the path `choose_tail_path` picks, or None for the module path (the caller runs it)."""
        call = tail.TailCall(self.last_conv, self.last_bn, self.attention, self.relu, u, x)
        path = tail.choose_tail_path(call)
        return None if path is tail.TailPath.MODULE else tail.run_tail(path, call, self.downsample)


class BasicBlock(ResidualBlock):
    """Two 3x3 convs; attention after bn2, before the residual add."""

    kind = "BasicBlock"
    expansion = 1
    tail_names = ("conv2", "bn2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.relu(self.bn1(self.conv1(x)))
        if not torch.jit.is_scripting():
            fused = self.fused_tail(u, x)
            if fused is not None:
                return fused
        return self.residual(self.attend(self.bn2(self.conv2(u))), x)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (stride here, as torchvision's v1.5), 1x1 expand; attention after bn3."""

    kind = "Bottleneck"
    expansion = 4
    tail_names = ("conv3", "bn3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.relu(self.bn1(self.conv1(x)))
        u = self.relu(self.bn2(self.conv2(u)))
        if not torch.jit.is_scripting():
            fused = self.fused_tail(u, x)
            if fused is not None:
                return fused
        return self.residual(self.attend(self.bn3(self.conv3(u))), x)


class ECAResNet(Classifier):
    """A ResNet whose blocks carry the attention the spec names (or none), built from the spec's description in `ecacli.arch.resnet`."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        add_children(self, "ECAResNet", {"spec": spec})
        self.num_features = spec.stage_outputs[-1]
        init_weights(self, spec.zero_init_residual)
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # `input`: the name graph exports give the tensor
        return self.forward_head(self.forward_features(input))

    def reset_classifier(self, num_classes: int) -> None:
        self._respec(num_classes)
        device = self.layer4[0].conv1.weight.device
        self.fc = build(head_node(self.spec, self.num_features)).to(device)


class ResNetFeatures(FeatureExtractor):
    """A ResNet trunk returning the feature maps of the levels `out_indices` names (0: the stem's ReLU, 1-4: the stages), with the classifier model's names."""

    __constants__ = ["return_names"]

    def __init__(self, spec: ResNetSpec, out_indices: tuple[int, ...]) -> None:
        super().__init__()
        self.spec = spec
        self.init_levels(spec, out_indices)
        add_children(self, "ResNetFeatures", {"spec": spec, "out_indices": out_indices})
        init_weights(self, spec.zero_init_residual)
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for name, module in self.named_children():
            x = module(x)
            if name in self.return_names:
                features.append(x)
        return features


def init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal convs, unit BatchNorm; with zero_init_residual, each block's last BN scale at zero."""
    if any(p.is_meta for p in model.parameters()):
        return  # shapes only: nothing to initialise (and meta init would pull in torch._dynamo)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, ResidualBlock) and isinstance(getattr(module.last_bn, "weight", None), nn.Parameter):
                nn.init.zeros_(module.last_bn.weight)
