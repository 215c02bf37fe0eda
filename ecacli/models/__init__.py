"""Models built from specs: `build_model(spec)` for every family (ResNet, MobileNetV2), from its description in `ecacli.arch`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ecacli.arch import plan
from ecacli.errors import OptionError, SpecError, shown
from ecacli.layers.build import build
from ecacli.models.mobilenetv2 import InvertedResidual, MobileNetV2, MobileNetV2Features
from ecacli.models.network import FeatureInfo, check_out_indices
from ecacli.models.resnet import BasicBlock, Bottleneck, ECAResNet, ResNetFeatures
from ecacli.spec import BaseSpec, NetworkSpec
from ecacli.spec_loader import load_spec, spec_from_data

__all__ = [
    "BasicBlock", "Bottleneck", "ECAResNet", "FeatureInfo", "InvertedResidual", "MobileNetV2", "MobileNetV2Features", "ResNetFeatures",
    "build_model", "with_options",
]

DEFAULT_OUT_INDICES = (1, 2, 3, 4)


def with_options(spec: NetworkSpec, frozen_stages: int | None = None, norm_eval: bool | None = None) -> NetworkSpec:
    """The spec with the fine-tuning options given as arguments in place of its own (validated as spec keys would be)."""
    changes = {key: value for key, value in (("frozen_stages", frozen_stages), ("norm_eval", norm_eval)) if value is not None}
    if not changes:
        return spec
    try:
        return spec_from_data({**spec.to_yaml_dict(), **changes}, label=f"spec '{spec.name}' with {', '.join(f'{k}={v!r}' for k, v in changes.items())}")
    except SpecError as exc:
        raise OptionError(str(exc)) from None


def build_model(
    spec: NetworkSpec,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    frozen_stages: int | None = None,
    norm_eval: bool | None = None,
    pretrained: bool | None = None,
) -> nn.Module:
    """Build the model a spec describes (on the current default device; use `torch.device('meta')` for shapes only).

    With `features_only` it is the trunk alone, returning the feature maps of the levels
    `out_indices` names (default 1-4: the strides 4-32 of ResNet's stages and of MobileNetV2's
    levels; 0 is the stride-2 level, ResNet's stem; see `model.feature_info`). `frozen_stages` and `norm_eval` override the spec's fine-tuning options.
    `spec` may also be a preset name or a YAML path. A base spec (`base: torchvision:NAME` / `timm:NAME`) builds that model with
    its attention attached (`ecacli.models.base`).
    The weights are freshly initialised: `pretrained` other than None or False is refused, pointing to `ecacli.create_model`.
    """
    if pretrained is not None and pretrained is not False:
        raise OptionError(
            f"build_model builds freshly initialised weights (pretrained={shown(pretrained)} given); for pretrained weights use "
            "ecacli.create_model(spec, pretrained=\"timm\" or a checkpoint path), or ecacli.load_model(path)."
        )
    if isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    if isinstance(spec, BaseSpec):
        if features_only or out_indices is not None or frozen_stages is not None or norm_eval is not None:
            raise OptionError(f"spec '{spec.name}' names a base model ({spec.base}): features_only, out_indices, frozen_stages and norm_eval apply to ecacli's own families.")
        from ecacli.models.base import build_base

        return build_base(spec)
    if not isinstance(spec, NetworkSpec):
        raise OptionError(f"spec: expected a spec, a preset name or a YAML path, got {type(spec).__name__}.")
    spec = with_options(spec, frozen_stages, norm_eval)
    if not features_only:
        if out_indices is not None:
            raise OptionError("out_indices chooses the levels of a feature extractor; give it with features_only=True.")
        return build(plan(spec))
    indices = check_out_indices(spec, tuple(out_indices) if out_indices is not None else DEFAULT_OUT_INDICES[: spec.num_stages])
    return build(plan(spec, indices))
