"""What the models of every family share: fine-tuning options (frozen stages, norm layers kept in eval), the classifier head API, and feature extractors' levels."""

from __future__ import annotations

import torch
from torch import nn

from ecacli.arch import feature_levels, stage_modules
from ecacli.errors import OptionError
from ecacli.spec import NetworkSpec
from ecacli.spec_loader import spec_from_data

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm)


def frozen_modules(model: nn.Module, spec: NetworkSpec) -> list[nn.Module]:
    """The modules of `model` (named as the spec's builder names them) that make up the stem and the first `frozen_stages` stages."""
    names = [name for stage in stage_modules(spec)[: spec.frozen_stages + 1] for name in stage]
    present = dict(model.named_modules())
    return [present[name] for name in names if name in present]


def keep_fine_tuning_modes(model: nn.Module, spec: NetworkSpec) -> None:
    """Put `model`'s frozen stages, and with the spec's `norm_eval` its norm layers, in eval mode: what `train()` must end with."""
    for module in frozen_modules(model, spec):
        module.eval()
    if spec.norm_eval:
        for module in model.modules():
            if isinstance(module, NORM_TYPES):
                module.eval()


class FineTuned(nn.Module):
    """A model built from a spec that keeps its spec's `frozen_stages` and `norm_eval` as mmdetection's and detectron2's backbones do.

    The stem and the first `frozen_stages` stages get `requires_grad=False` and stay in eval mode
    whatever `train()` says, from construction on; with `norm_eval`, every norm layer stays in eval
    mode (its running statistics fixed) while the rest trains.
    """

    def freeze(self) -> None:
        """Turn off gradients of the frozen stages' parameters and set the modes (called once the modules exist)."""
        for module in frozen_modules(self, self.spec):
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> FineTuned:
        super().train(mode)
        if mode:
            keep_fine_tuning_modes(self, self.spec)
        return self


class Classifier(FineTuned):
    """A whole network: `forward_features` (the trunk's last feature map), `forward_head` (pool, flatten, classifier) and `reset_classifier`, as timm's models."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier for `num_classes` classes (0: none, the model returns its pooled features), freshly initialised."""
        raise NotImplementedError

    def _respec(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 0 <= num_classes <= 100_000:
            raise OptionError(f"num_classes must be an integer from 0 to 100,000 (0: no classifier), got {num_classes!r}.")
        self.spec = spec_from_data({**self.spec.to_yaml_dict(), "num_classes": num_classes}, label=f"spec '{self.spec.name}' with num_classes={num_classes}")


class FeatureInfo(list):
    """The levels a feature extractor returns, in order (`FeatureLevel`: module, channels, reduction), with timm's accessors."""

    def channels(self) -> list[int]:
        return [level.channels for level in self]

    def reduction(self) -> list[int]:
        return [level.reduction for level in self]

    def module_name(self) -> list[str]:
        return [level.module for level in self]


def check_out_indices(spec: NetworkSpec, out_indices: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """`out_indices` as a tuple, after refusing one that is empty, unsorted, repeated or outside the spec's levels."""
    levels = feature_levels(spec)
    allowed = f"increasing integers from 0 to {len(levels) - 1} ({', '.join(f'{i}: {level.module}' for i, level in enumerate(levels))})"
    if not isinstance(out_indices, (tuple, list)) or not out_indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in out_indices):
        raise OptionError(f"out_indices must be a non-empty list of {allowed}; got {out_indices!r}.")
    if list(out_indices) != sorted(set(out_indices)) or not 0 <= out_indices[0] <= out_indices[-1] < len(levels):
        raise OptionError(f"out_indices {list(out_indices)} must be {allowed}.")
    return tuple(out_indices)


class FeatureExtractor(FineTuned):
    """A trunk that returns the feature maps of the levels `out_indices` names, as a list, with their `feature_info`."""

    return_names: list[str]

    def init_levels(self, spec: NetworkSpec, out_indices: tuple[int, ...]) -> None:
        levels = feature_levels(spec)
        self.out_indices = out_indices
        self.feature_info = FeatureInfo(levels[i] for i in out_indices)
        self.return_names = [levels[i].module.rpartition(".")[2] for i in out_indices]
