"""Models built from specs: `build_model(spec)` for every family (ResNet, MobileNetV2), from its description in `ecacli.arch`."""

from __future__ import annotations

from torch import nn

from ecacli.arch import plan
from ecacli.layers.build import build
from ecacli.models.mobilenetv2 import InvertedResidual, MobileNetV2
from ecacli.models.resnet import BasicBlock, Bottleneck, ECAResNet
from ecacli.spec import NetworkSpec

__all__ = ["BasicBlock", "Bottleneck", "ECAResNet", "InvertedResidual", "MobileNetV2", "build_model"]


def build_model(spec: NetworkSpec) -> nn.Module:
    """Build the model a spec describes (on the current default device; use `torch.device('meta')` for shapes only)."""
    return build(plan(spec))
