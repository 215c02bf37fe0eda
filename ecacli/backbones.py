"""ECA-ResNets as backbones of torchvision's detectors: a feature pyramid over the trunk, as torchvision's own ResNet backbones.

`fpn_backbone` returns a torchvision `BackboneWithFPN`, so `FasterRCNN(fpn_backbone("r50"), num_classes=91)`,
`MaskRCNN` and `RetinaNet` take it as they take `resnet_fpn_backbone`'s. Needs torchvision
(the `vision` extra; `ecacli.extras.install_command("vision")` gives the pip command).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ecacli.errors import OptionError
from ecacli.models.network import keep_fine_tuning_modes
from ecacli.spec import NUM_STAGES, NetworkSpec, ResNetSpec
from ecacli.spec_loader import load_spec, spec_from_data

try:
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
except ImportError as error:
    from ecacli.extras import install_command

    raise ImportError(f"ecacli.backbones builds on torchvision's detection parts; install them with: {install_command('vision')}") from error

FPN_CHANNELS = 256


class FineTunedBackboneWithFPN(BackboneWithFPN):
    """torchvision's `BackboneWithFPN` (max-pool extra level) over an ecacli trunk, whose frozen stages and `norm_eval` it keeps in eval mode as the trunk does."""

    def __init__(self, trunk: nn.Module, return_layers: dict[str, str], in_channels: list[int], out_channels: int) -> None:
        super().__init__(trunk, return_layers, in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.spec = trunk.spec
        self.train(trunk.training)

    def train(self, mode: bool = True) -> FineTunedBackboneWithFPN:
        super().train(mode)
        if mode:
            keep_fine_tuning_modes(self.body, self.spec)
        return self


def fpn_backbone(
    spec: NetworkSpec | str | Path,
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    weights: str | Path | None = None,
    norm: str | None = "frozen_batch",
    out_channels: int = FPN_CHANNELS,
) -> FineTunedBackboneWithFPN:
    """torchvision's `BackboneWithFPN` over the spec's ResNet trunk: the defaults of torchvision's detection backbones.

    `norm` replaces the spec's norm layers (torchvision's FrozenBatchNorm2d by default; None keeps
    the spec's); the stem and the stages before the last `trainable_layers` (0-5, as torchvision
    counts them: 5 trains everything) get `requires_grad=False`; the FPN has `out_channels`
    channels over the stages `returned_layers` (1-4) and a max-pool extra level. `weights`, a
    checkpoint of the spec's network (a classifier's or a converted backbone's), fills the trunk.
    The trunk is the spec's feature extractor (`build_model(..., features_only=True)`), whose
    children torchvision's IntermediateLayerGetter runs in turn.
    """
    base = load_spec(spec) if isinstance(spec, (str, Path)) else spec
    if not isinstance(base, ResNetSpec):
        raise OptionError(f"fpn_backbone builds on a ResNet trunk; spec '{base.name}' is a {base.arch} (use build_model(spec, features_only=True) for its feature levels).")
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= NUM_STAGES + 1:
        raise OptionError(f"trainable_layers must be an integer from 0 to {NUM_STAGES + 1} (torchvision's count: 5 trains the stem too), got {trainable_layers!r}.")
    layers = list(returned_layers) if isinstance(returned_layers, (list, tuple, range)) else []
    if not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= NUM_STAGES for i in layers) or not layers or layers != sorted(set(layers)):
        raise OptionError(f"returned_layers must be increasing stage numbers from 1 to {NUM_STAGES}, got {returned_layers!r}.")
    changes = {"frozen_stages": NUM_STAGES - trainable_layers, **({"norm": norm} if norm is not None else {})}
    trunk_spec = spec_from_data({**base.to_yaml_dict(), **changes}, label=f"spec '{base.name}' as an FPN backbone")
    build = {"features_only": True, "out_indices": tuple(range(1, layers[-1] + 1))}  # the trunk up to the deepest returned stage
    if weights is None:
        from ecacli.models import build_model

        trunk = build_model(trunk_spec, **build)
    else:
        from ecacli.checkpoints import model_with_weights, open_checkpoint

        trunk, _ = model_with_weights(trunk_spec, open_checkpoint(weights), **build)
    return_layers = {f"layer{stage}": str(i) for i, stage in enumerate(layers)}
    in_channels = [trunk_spec.stage_outputs[stage - 1] for stage in layers]
    return FineTunedBackboneWithFPN(trunk, return_layers, in_channels, out_channels)
