"""ecacli: ECA-Net specs (ResNets, MobileNetV2, torchvision and timm bases), builder, attention for any network, reports, checkpoints and exports.

`from ecacli import create_model, list_models, load_spec, build_model, attach, kernel_size` works without the CLI. Names that
need torch are imported on first use, so importing ecacli (and `ecacli ksize`) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "kernel_size": "ecacli.kernel",
    "load_spec": "ecacli.spec_loader",
    "NetworkSpec": "ecacli.spec",
    "ResNetSpec": "ecacli.spec",
    "MobileNetV2Spec": "ecacli.spec",
    "build_model": "ecacli.models",
    "ECAResNet": "ecacli.models",
    "EcaModule": "ecacli.layers",
    "load_model": "ecacli.checkpoints",
    "create_model": "ecacli.factory",
    "list_models": "ecacli.factory",
    "export_model": "ecacli.deploy",
    "attach": "ecacli.attachment",
    "insertion_points": "ecacli.attachment",
}

__all__ = ["__version__", *_LAZY]


def __dir__() -> list[str]:
    """The public names (those imported on first use included) and the module's dunder attributes."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ecacli' has no attribute {name!r}")
