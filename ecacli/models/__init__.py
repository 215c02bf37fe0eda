"""Models built from specs."""

from ecacli.models.resnet import BasicBlock, Bottleneck, ECAResNet, build_model

__all__ = ["BasicBlock", "Bottleneck", "ECAResNet", "build_model"]
