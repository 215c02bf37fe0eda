"""ResNet and ECA-ResNet built from a spec, with torchvision's module names plus `eca.conv`.

With `attention.type: none` the state_dict keys and shapes are exactly torchvision's resnetNN;
with ECA each block gains `eca.conv.weight` [1, 1, k], as in the paper's released checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from ecacli.layers import create_attention
from ecacli.layers import tail
from ecacli.spec import ResNetSpec


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


def make_downsample(in_ch: int, out_ch: int, stride: int, kind: str) -> nn.Sequential:
    """Shortcut projection: strided 1x1 conv + BN, or (timm's 'd' variants) 2x2 avg-pool, 1x1 conv, BN."""
    if kind == "conv":
        return nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
    pool: nn.Module = (
        nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    )
    return nn.Sequential(pool, conv1x1(in_ch, out_ch), nn.BatchNorm2d(out_ch))


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

    def __init__(self, attention: nn.Module | None, attention_name: str) -> None:
        super().__init__()
        self.attention_name = attention_name if attention is not None else ""
        if attention is not None:
            self.add_module(attention_name, attention)

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
        call = tail.TailCall(self.last_conv, self.last_bn, self.attention, self.relu, u)
        path = tail.choose_tail_path(call)
        return None if path is tail.TailPath.MODULE else tail.run_tail(path, call, x, self.downsample)


class BasicBlock(ResidualBlock):
    """Two 3x3 convs; attention after bn2, before the residual add."""

    expansion = 1
    tail_names = ("conv2", "bn2")

    def __init__(self, in_ch: int, planes: int, stride: int, downsample: nn.Module | None, attention: nn.Module | None, attention_name: str = "eca") -> None:
        super().__init__(attention, attention_name)
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.relu(self.bn1(self.conv1(x)))
        if not torch.jit.is_scripting():
            fused = self.fused_tail(u, x)
            if fused is not None:
                return fused
        return self.residual(self.attend(self.bn2(self.conv2(u))), x)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (stride here, as torchvision's v1.5), 1x1 expand; attention after bn3."""

    expansion = 4
    tail_names = ("conv3", "bn3")

    def __init__(self, in_ch: int, planes: int, stride: int, downsample: nn.Module | None, attention: nn.Module | None, attention_name: str = "eca") -> None:
        super().__init__(attention, attention_name)
        out_ch = planes * self.expansion
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.relu(self.bn1(self.conv1(x)))
        u = self.relu(self.bn2(self.conv2(u)))
        if not torch.jit.is_scripting():
            fused = self.fused_tail(u, x)
            if fused is not None:
                return fused
        return self.residual(self.attend(self.bn3(self.conv3(u))), x)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_stem_conv(spec: ResNetSpec) -> nn.Module:
    """The stem's conv1: one conv (imagenet 7x7/2, cifar 3x3/1), or timm's three-conv deep stem."""
    if spec.stem == "imagenet":
        return nn.Conv2d(spec.in_chans, spec.stem_channels[0], 7, stride=2, padding=3, bias=False)
    if spec.stem == "cifar":
        return conv3x3(spec.in_chans, spec.stem_channels[0])
    first, inner, out = spec.stem_channels
    return nn.Sequential(
        conv3x3(spec.in_chans, first, stride=2),
        nn.BatchNorm2d(first),
        nn.ReLU(inplace=True),
        conv3x3(first, inner),
        nn.BatchNorm2d(inner),
        nn.ReLU(inplace=True),
        conv3x3(inner, out),
    )


class ECAResNet(nn.Module):
    """A ResNet whose blocks carry the attention the spec names (or none)."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        stem_out = spec.stem_channels[-1]
        self.conv1 = make_stem_conv(spec)
        self.bn1 = nn.BatchNorm2d(stem_out)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if spec.stem == "cifar" else nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = stem_out
        for stage, (planes, blocks) in enumerate(zip(spec.stage_planes, spec.stage_blocks)):
            layer, in_ch = self._make_stage(spec, stage, in_ch, planes, blocks)
            self.add_module(f"layer{stage + 1}", layer)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, spec.num_classes)
        self._init_weights(spec.zero_init_residual)

    @staticmethod
    def _make_stage(spec: ResNetSpec, stage: int, in_ch: int, planes: int, blocks: int) -> tuple[nn.Sequential, int]:
        block_cls = BLOCKS[spec.block_type]
        out_ch = planes * block_cls.expansion
        stride = 1 if stage == 0 else 2
        layers = []
        for i in range(blocks):
            block_stride = stride if i == 0 else 1
            needs_projection = i == 0 and (block_stride != 1 or in_ch != out_ch)
            downsample = make_downsample(in_ch, out_ch, block_stride, spec.downsample) if needs_projection else None
            attention = create_attention(spec, stage, out_ch)
            layers.append(block_cls(in_ch, planes, block_stride, downsample, attention, spec.attention.module_name))
            in_ch = out_ch
        return nn.Sequential(*layers), out_ch

    def _init_weights(self, zero_init_residual: bool) -> None:
        if self.fc.weight.is_meta:
            return  # shapes only: nothing to initialise (and meta init would pull in torch._dynamo)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, ResidualBlock):
                    nn.init.zeros_(module.last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.forward_features(x))
        return self.fc(torch.flatten(x, 1))


def build_model(spec: ResNetSpec) -> ECAResNet:
    """Build the model a spec describes (on the current default device; use `torch.device('meta')` for shapes only)."""
    return ECAResNet(spec)
