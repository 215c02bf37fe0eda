"""The network spec: a pydantic schema for the YAML files in specs/, with derived stage layout.

A spec is data only (no torch): the builder in `ecacli.models` turns it into a module, and the
kernel sizes every convention gives are computed here with the pure rule in `ecacli.kernel`.
`FAMILIES` registers ecacli's own families (each spec class names its torch-free description in
`ecacli.arch`); a base spec (`BaseSpec`) names a torchvision or timm model instead, which
`ecacli.models.base` builds and `ecacli.attachment` gives its attention.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import ConfigDict, Discriminator, Field, JsonValue, Tag, TypeAdapter, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ecacli.arch.attention import ATTENTION_TYPES, MAX_GROUPS, MAX_KERNEL, AttentionSpec, CecaAttention, CbamAttention, EcaAttention, EcaKernelSettings, NoAttention, SeAttention, reduced_channels
from ecacli.arch import mobilenetv2, resnet
from ecacli.arch.mobilenetv2 import DEFAULT_LAST_CHANNEL, DEFAULT_SETTING, STEM_CHANNELS, hidden_width, level_blocks, make_divisible
from ecacli.arch.resnet import BLOCKS, DEPTHS, NUM_STAGES, STEMS, LayoutError
from ecacli.errors import UserError, shown
from ecacli.kernel import kernel_size
from ecacli.strict_model import StrictModel, suggest

MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 2048
MAX_BATCH = 65536
MAX_BLOCKS = 1_000
MAX_WEIGHTS = 4e9
"""Bounds on a spec, checked before it is built: blocks, and weights estimated from the widths (9 inner^2 + 2 inner x output per block, plus the classifier); the largest presets are far below both."""
MAX_BASE_MODULES = 10_000
"""A base spec's model (base plus attention) may hold at most this many modules and MAX_WEIGHTS parameters and buffers, counted on the meta device before it is built."""
MAX_SAMPLE_ELEMENTS = 2**28
NORMS = ("batch", "frozen_batch", "group")

__all__ = [
    "ATTENTION_TYPES", "AttentionSpec", "CbamAttention", "CecaAttention", "EcaAttention", "NoAttention", "SeAttention",
    "BASE_LIBRARIES", "BaseSpec", "DEPTHS", "FAMILIES", "MobileNetV2Spec", "NUM_STAGES", "NetworkSpec", "ResNetSpec", "Reported", "Spec", "SPEC_ADAPTER", "StrictModel",
    "attention_model", "check_input_size", "family_of", "infer", "json_schema", "reduced_channels", "suggest",
]


def attention_model(type_name: Any) -> type[StrictModel] | None:
    """The schema of an attention type, or None for anything that is not one of their names (lists and mappings included)."""
    return ATTENTION_TYPES.get(type_name) if isinstance(type_name, str) else None


class Reported(StrictModel):
    """Figures a publication reports for this architecture: always shown labelled "reported", never as measured."""

    source: Annotated[str, Field(min_length=1, max_length=200, description="where the figures come from")]
    top1: Annotated[float | None, Field(ge=0, le=100, description="reported ImageNet top-1 accuracy, %")] = None
    top5: Annotated[float | None, Field(ge=0, le=100, description="reported ImageNet top-5 accuracy, %")] = None
    params_m: Annotated[float | None, Field(gt=0, le=1e6, description="reported parameters, millions (not always the exact count)")] = None
    gflops: Annotated[float | None, Field(gt=0, le=1e6, description="reported GFLOPs per image")] = None


@dataclass(frozen=True)
class BlockGroup:
    """Blocks that share one ECA k: a ResNet stage, or a row of a MobileNetV2 table."""

    label: str
    blocks: int
    inner: int
    output: int


class NetworkSpec(StrictModel):
    """What every family's spec has: a name, classes, input, attention, norm layers and reported figures."""

    model_config = ConfigDict(strict=True, frozen=True, validate_default=True)

    arch: str
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: Annotated[str, Field(max_length=300)] = ""
    num_classes: Annotated[int, Field(ge=0, le=100_000, description="classes of the classifier; 0: no classifier, the model returns its pooled features")] = 1000
    in_chans: Annotated[int, Field(ge=1, le=64)] = 3
    input_size: Annotated[int, Field(ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE, description="square input side in pixels")] = 224
    norm: Annotated[Literal[NORMS], Field(description="norm layers: batch (BatchNorm2d), frozen_batch (torchvision's FrozenBatchNorm2d, as its detection models use), group (GroupNorm, 32 groups)")] = "batch"  # type: ignore[valid-type]
    attention: AttentionSpec = EcaAttention()
    frozen_stages: Annotated[int, Field(ge=-1, le=MAX_GROUPS, description="fine-tuning: the stem (0) and the first N stages keep their weights (requires_grad off) and stay in eval mode; -1 freezes nothing")] = -1
    norm_eval: Annotated[bool, Field(description="fine-tuning: norm layers stay in eval mode (running statistics fixed) while the model trains")] = False
    reported: Reported | None = None

    family: ClassVar[ModuleType | None] = None
    """The family's torch-free description in `ecacli.arch` (plan, feature_levels, stage_modules, infer, claims); None for base specs."""
    attaches: ClassVar[bool] = False
    """Whether the spec places its attention with `attention.after` / `attention.replace` (base specs) rather than in every block."""
    group_noun: ClassVar[str] = "stage"
    """What a group of blocks sharing one ECA k is called: a ResNet stage, a MobileNetV2 table row."""
    inner_noun: ClassVar[str] = "planes"
    """What a group's inner width is called: a bottleneck's planes, an inverted residual's hidden width."""

    @field_validator("attention", mode="before")
    @classmethod
    def _default_attention_type(cls, value: Any) -> Any:
        if isinstance(value, dict) and "type" not in value:
            return {"type": "eca", **value}
        if isinstance(value, dict) and attention_model(value["type"]) is None:
            given = value["type"]
            hint = suggest(given, list(ATTENTION_TYPES)) if isinstance(given, str) and len(given) <= 64 else ""
            raise PydanticCustomError(
                "attention_type",
                "unknown attention type {got}.{hint} Allowed: {allowed}.",
                {"got": shown(given), "hint": hint, "allowed": ", ".join(ATTENTION_TYPES)},
            )
        return value

    @model_validator(mode="after")
    def _check_placement(self) -> "NetworkSpec":
        if not self.attaches and (self.attention.after is not None or self.attention.replace is not None):
            raise PydanticCustomError(
                "layout",
                "attention.after and attention.replace place attention in a base model (base: torchvision:NAME or timm:NAME); "
                "an ecacli family ({arch}) puts it in every block itself: drop them.",
                {"at": "attention", "arch": self.arch},
            )
        return self

    @property
    def num_stages(self) -> int:
        """Stages after the stem, as `frozen_stages` and feature levels count them."""
        raise NotImplementedError

    def _check_stages(self) -> None:
        if self.frozen_stages > self.num_stages:
            raise PydanticCustomError(
                "layout",
                "{got} is beyond this network's {stages} stages; use -1 (nothing frozen), 0 (the stem) up to {stages}.",
                {"at": "frozen_stages", "got": self.frozen_stages, "stages": self.num_stages},
            )

    def _check_size(self) -> None:
        """At most MAX_BLOCKS blocks and about MAX_WEIGHTS weights (a generous estimate from the widths), checked before anything is built."""
        groups = self.groups
        blocks = sum(group.blocks for group in groups)
        if blocks > MAX_BLOCKS:
            raise PydanticCustomError("too_large", "the network has {blocks} blocks, more than the {limit} a spec may have.", {"blocks": f"{blocks:,}", "limit": f"{MAX_BLOCKS:,}"})
        weights = sum(group.blocks * (9 * group.inner * group.inner + 2 * group.inner * group.output) for group in groups) + self.num_classes * groups[-1].output
        if weights > MAX_WEIGHTS:
            raise PydanticCustomError("too_large", "the network would hold about {weights} weights, more than the {limit} a spec may build.", {"weights": f"{weights:.2e}", "limit": f"{MAX_WEIGHTS:.0e}"})

    def _check_kernels(self) -> None:
        """One k per group where k_size is a list; every k the adaptive rule can give, no larger than allowed nor wider than its channels."""
        groups = self.groups
        if isinstance(self.attention, EcaKernelSettings) and isinstance(self.attention.k_size, list) and len(self.attention.k_size) != len(groups):
            raise PydanticCustomError(
                "layout",
                "must be 'adaptive', an odd integer from 1 to 63, or a list of {count} such integers (one per {noun}); got {got}.",
                {"at": "attention.k_size", "count": len(groups), "noun": self.group_noun, "got": shown(self.attention.k_size)},
            )
        try:
            kernels = self.group_kernel_sizes or []
        except ValueError as exc:
            raise PydanticCustomError("layout", "attention: the adaptive rule cannot give a kernel size: {reason}.", {"reason": str(exc)}) from None
        if any(k > MAX_KERNEL for k in kernels):
            raise PydanticCustomError(
                "layout",
                "attention: the adaptive rule gives k = {kernels} per {noun}, above the largest allowed k of {max}; raise gamma or lower b.",
                {"kernels": shown(kernels), "noun": self.group_noun, "max": MAX_KERNEL},
            )
        wider = [(i, k, group.output) for i, (k, group) in enumerate(zip(kernels, groups), start=1) if k > group.output]
        if wider:
            index, k, channels = wider[0]
            raise PydanticCustomError(
                "kernel_wider",
                "k = {k} in {noun} {index} is wider than the {channels} channels it slides over; use an odd k of at most {largest} there (or a larger width).",
                {"at": "attention.k_size", "k": k, "noun": self.group_noun, "index": index, "channels": channels, "largest": channels if channels % 2 else channels - 1},
            )

    @property
    def groups(self) -> list[BlockGroup]:
        """The groups of blocks that share one ECA k, in order."""
        raise NotImplementedError

    @cached_property
    def group_kernel_sizes(self) -> list[int] | None:
        """ECA k per group, or None for attention types without a kernel."""
        if isinstance(self.attention, EcaKernelSettings):
            groups = self.groups
            return self.attention.kernel_sizes([g.output for g in groups], [g.inner for g in groups])
        return None

    @cached_property
    def block_kernel_sizes(self) -> list[int] | None:
        """ECA k of every block in forward order, or None."""
        if self.group_kernel_sizes is None:
            return None
        return [k for k, group in zip(self.group_kernel_sizes, self.groups) for _ in range(group.blocks)]

    def kernel_conventions(self) -> list[dict[str, Any]]:
        """Per group: its widths and k under each convention in the wild, beside this spec's own."""
        attention = self.attention if isinstance(self.attention, EcaKernelSettings) else EcaAttention()
        kernels = self.group_kernel_sizes
        return [
            {
                self.group_noun.split()[-1]: i,
                "label": group.label,
                "blocks": group.blocks,
                "planes": group.inner,
                "output": group.output,
                "k_output": kernel_size(group.output, attention.gamma, attention.b),
                "k_planes": kernel_size(group.inner, attention.gamma, attention.b),
                "k_spec": kernels[i - 1] if kernels else None,
            }
            for i, group in enumerate(self.groups, start=1)
        ]

    def input_shape(self, batch: int = 1, input_size: int | None = None) -> list[int]:
        """[N, C, H, W] of a batch of square inputs, at `input_size` or the spec's own size."""
        side = input_size or self.input_size
        return [batch, self.in_chans, side, side]

    def layout_text(self) -> str:
        """One line on the network's layout, for `validate` and `convert`."""
        raise NotImplementedError

    def resolved(self) -> dict[str, Any]:
        """What the spec resolves to, as plain data: its family's layout, the attention and the ECA k of each group."""
        return {"name": self.name, "arch": self.arch, "attention": self.attention.type, "kernel_sizes": self.group_kernel_sizes, "kernel_groups": self.group_noun}

    def to_yaml_dict(self) -> dict[str, Any]:
        """The spec as plain data, without defaults that were left unset, for writing back to YAML."""
        return self.model_dump(mode="json", exclude_unset=True)


class ResNetSpec(NetworkSpec):
    """A ResNet / ECA-ResNet: depth or per-stage block counts, stem, widths and attention."""

    arch: Literal["resnet"] = "resnet"
    family: ClassVar[ModuleType] = resnet
    depth: Annotated[Literal[tuple(DEPTHS)] | None, Field(description="sets block type and per-stage block counts as torchvision")] = None  # type: ignore[valid-type]
    layers: Annotated[
        list[Annotated[int, Field(ge=1, le=64)]] | None,
        Field(min_length=NUM_STAGES, max_length=NUM_STAGES, description="blocks per stage, instead of depth"),
    ] = None
    block: Literal[tuple(BLOCKS)] | None = None  # type: ignore[valid-type]
    stem: Annotated[
        Literal[tuple(STEMS)],  # type: ignore[valid-type]
        Field(description="; ".join(f"{name}: {stem.description}" for name, stem in STEMS.items())),
    ] = "imagenet"
    stem_width: Annotated[
        int | None,
        Field(ge=8, le=512, description="stem output channels (single-conv stems, default: width) or the deep stem's inner width (default: width / 2; output is twice it)"),
    ] = None
    downsample: Annotated[Literal["conv", "avg"], Field(description="shortcut projection: strided 1x1 conv, or 2x2 avg-pool then 1x1 conv (timm's 'd' variants)")] = "conv"
    width: Annotated[int, Field(ge=8, le=256, description="first-stage width; stages are width x 1, 2, 4, 8")] = 64
    zero_init_residual: bool = False

    @model_validator(mode="after")
    def _check_layout(self) -> "ResNetSpec":
        if self.depth is None and self.layers is None:
            raise PydanticCustomError("layout", "give either 'depth' (18, 34, 50, 101, 152) or 'layers' (4 block counts) with 'block'.")
        if self.depth is not None and self.layers is not None:
            raise PydanticCustomError("layout", "give 'depth' or 'layers', not both (depth {depth} already sets the block counts).", {"depth": self.depth})
        if self.depth is not None and self.block is not None and self.block != DEPTHS[self.depth][0]:
            raise PydanticCustomError(
                "layout",
                "block '{block}' contradicts depth {depth}, which uses '{expected}' blocks; drop 'block' or change it.",
                {"block": self.block, "depth": self.depth, "expected": DEPTHS[self.depth][0]},
            )
        if self.layers is not None and self.block is None:
            raise PydanticCustomError("layout", "'layers' needs 'block' (basic or bottleneck).")
        self._check_size()
        self._check_kernels()
        self._check_stages()
        return self

    @cached_property
    def block_type(self) -> str:
        return self.block or DEPTHS[self.depth][0]  # type: ignore[index]

    @cached_property
    def stage_blocks(self) -> list[int]:
        return list(self.layers) if self.layers is not None else list(DEPTHS[self.depth][1])  # type: ignore[index]

    @cached_property
    def expansion(self) -> int:
        return BLOCKS[self.block_type].expansion

    @cached_property
    def stage_planes(self) -> list[int]:
        """Each stage's inner (bottleneck) width."""
        return [self.width * 2**i for i in range(NUM_STAGES)]

    @cached_property
    def stage_outputs(self) -> list[int]:
        """Each stage's block output width (planes x expansion)."""
        return [p * self.expansion for p in self.stage_planes]

    @cached_property
    def stem_channels(self) -> tuple[int, ...]:
        """Output channels of each stem conv, in order (the last feeds stage 1)."""
        return STEMS[self.stem].widths(self)

    @property
    def groups(self) -> list[BlockGroup]:
        return [BlockGroup(f"layer{i}", n, p, o) for i, (n, p, o) in enumerate(zip(self.stage_blocks, self.stage_planes, self.stage_outputs), start=1)]

    @property
    def num_stages(self) -> int:
        return NUM_STAGES

    @property
    def stage_kernel_sizes(self) -> list[int] | None:
        """ECA k per stage, or None for attention types without a kernel."""
        return self.group_kernel_sizes

    def layout_text(self) -> str:
        return f"{self.block_type} blocks {self.stage_blocks}, {self.stem} stem, downsample {self.downsample}, widths {self.stage_outputs}"

    def resolved(self) -> dict[str, Any]:
        return {
            **super().resolved(),
            "block": self.block_type,
            "stage_blocks": self.stage_blocks,
            "stage_outputs": self.stage_outputs,
            "stem_channels": list(self.stem_channels),
            "stage_kernel_sizes": self.stage_kernel_sizes,
        }


class MobileNetV2Spec(NetworkSpec):
    """A MobileNetV2 / ECA-MobileNetV2: torchvision's inverted-residual table, width multiplier and classifier, with attention in every inverted residual."""

    arch: Literal["mobilenetv2"]
    family: ClassVar[ModuleType] = mobilenetv2
    width_mult: Annotated[float, Field(gt=0, le=4, allow_inf_nan=False, description="width multiplier of every layer (torchvision's width_mult)")] = 1.0
    round_nearest: Annotated[int, Field(ge=1, le=64, description="widths are rounded to a multiple of this")] = 8
    inverted_residual_setting: Annotated[
        list[Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=4, max_length=4)]],
        Field(min_length=1, max_length=MAX_GROUPS, description="rows [t, c, n, s]: expansion, output channels, repeats, first stride (default: torchvision's table)"),
    ] = [list(row) for row in DEFAULT_SETTING]
    last_channel: Annotated[int, Field(ge=8, le=8192, description="channels of the last 1x1 conv before the classifier (scaled by width_mult above 1)")] = DEFAULT_LAST_CHANNEL
    dropout: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False, description="dropout before the classifier")] = 0.2

    group_noun: ClassVar[str] = "table row"
    inner_noun: ClassVar[str] = "hidden"

    @model_validator(mode="after")
    def _check_layout(self) -> "MobileNetV2Spec":
        for i, (t, c, n, s) in enumerate(self.inverted_residual_setting, start=1):
            if s not in (1, 2):
                raise PydanticCustomError("layout", "row {row} [t, c, n, s] = {got}: the stride s must be 1 or 2.", {"at": "inverted_residual_setting", "row": i, "got": [t, c, n, s]})
        self._check_size()
        self._check_kernels()
        self._check_stages()
        return self

    @cached_property
    def stem_channels(self) -> int:
        """Output channels of the stem conv (features.0)."""
        return make_divisible(STEM_CHANNELS * self.width_mult, self.round_nearest)

    @cached_property
    def last_channel_width(self) -> int:
        """Output channels of the last 1x1 conv, as torchvision scales it."""
        return make_divisible(self.last_channel * max(1.0, self.width_mult), self.round_nearest)

    @property
    def groups(self) -> list[BlockGroup]:
        groups, channels = [], self.stem_channels
        for i, (t, c, n, s) in enumerate(self.inverted_residual_setting, start=1):
            out = make_divisible(c * self.width_mult, self.round_nearest)
            groups.append(BlockGroup(f"row {i} (t={t}, c={c}, n={n}, s={s})", n, hidden_width(channels, t), out))
            channels = out
        return groups

    @property
    def num_stages(self) -> int:
        return len(level_blocks(self)) - 1  # the first level's blocks count with the stem

    def layout_text(self) -> str:
        rows = " ".join(f"{t},{c},{n},{s}" for t, c, n, s in self.inverted_residual_setting)
        return f"mobilenetv2 x{self.width_mult:g}, inverted residuals (t,c,n,s) {rows}, last conv {self.last_channel_width}"

    def resolved(self) -> dict[str, Any]:
        return {
            **super().resolved(),
            "inverted_residual_setting": self.inverted_residual_setting,
            "row_outputs": [g.output for g in self.groups],
            "stem_channels": self.stem_channels,
            "last_channel": self.last_channel_width,
        }


BASE_LIBRARIES = ("torchvision", "timm")
"""The registries a base spec names its model from (`base: torchvision:NAME` or `base: timm:NAME`)."""
REFUSED_BASE_ARGS = ("weights", "weights_backbone", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "progress", "features_only")
"""Builder keywords that would fetch or read weights, or change what is built: a base is built freshly initialised, its weights come through `--from` / `pretrained=`."""


class BaseSpec(NetworkSpec):
    """A torchvision or timm model by its registered name, built without pretrained weights, with attention attached after glob-matched modules or in place of its SE modules.

    A spec never imports or calls anything but those two registries: `base` is a registered name,
    `base_args` plain keyword values (numbers, strings, booleans, lists, mappings).
    """

    arch: Literal["base"] = "base"
    base: Annotated[
        str,
        Field(pattern=r"^(torchvision|timm):[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", description="torchvision:NAME or timm:NAME, a model name registered with that library (built without pretrained weights)"),
    ]
    base_args: Annotated[
        dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], JsonValue],
        Field(max_length=64, description="keyword arguments of the base's builder, plain values only (e.g. num_classes: 10, block_args: {attn_layer: eca})"),
    ] = {}
    sample_shape: Annotated[
        list[Annotated[int, Field(ge=1, le=MAX_INPUT_SIZE)]] | None,
        Field(min_length=2, max_length=4, description="one input's shape [C, L], [C, H, W] or [C, D, H, W] for bases that take no square images (video, volumes, sequences); default [in_chans, input_size, input_size]"),
    ] = None
    attention: AttentionSpec = NoAttention(type="none")

    attaches: ClassVar[bool] = True
    group_noun: ClassVar[str] = "insertion point"

    @field_validator("base", mode="wrap")
    @classmethod
    def _check_base_name(cls, value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except Exception:
            raise PydanticCustomError(
                "layout", "must be torchvision:NAME or timm:NAME, a model name registered with that library (e.g. torchvision:resnet50, timm:efficientnet_b0); got {got}.", {"got": shown(value)}
            ) from None
    inner_noun: ClassVar[str] = "channels"

    @model_validator(mode="after")
    def _check_base(self) -> "BaseSpec":
        refused = [key for key in self.base_args if key in REFUSED_BASE_ARGS]
        if refused:
            raise PydanticCustomError(
                "layout",
                "{key} is not a base_args key: a base is built freshly initialised (load weights with `--from FILE` or pretrained=); refused keys: {refused}.",
                {"at": "base_args", "key": refused[0], "refused": ", ".join(REFUSED_BASE_ARGS)},
            )
        if "num_classes" in self.base_args and "num_classes" in self.model_fields_set:
            raise PydanticCustomError("layout", "num_classes is given twice (top level and base_args); keep one.", {"at": "base_args"})
        if "in_chans" in self.model_fields_set and self.library == "torchvision":
            raise PydanticCustomError("layout", "torchvision's models take 3 input channels: in_chans applies to timm bases only.", {"at": "in_chans"})
        if self.sample_shape is not None:
            given = [key for key in ("input_size", "in_chans") if key in self.model_fields_set]
            if given:
                raise PydanticCustomError("layout", "sample_shape gives the whole input shape; drop {keys}.", {"at": "sample_shape", "keys": " and ".join(given)})
            if math.prod(self.sample_shape) > MAX_SAMPLE_ELEMENTS:
                raise PydanticCustomError("layout", "{got} holds more than {max} values per sample.", {"at": "sample_shape", "got": self.sample_shape, "max": f"{MAX_SAMPLE_ELEMENTS:,}"})
        for key, default in (("norm", "batch"), ("frozen_stages", -1), ("norm_eval", False)):
            if getattr(self, key) != default:
                raise PydanticCustomError("layout", "{key} applies to ecacli's own families; a base model keeps its own layers.", {"at": key, "key": key})
        attention = self.attention
        if attention.after is not None and attention.replace is not None:
            raise PydanticCustomError("layout", "give attention.after or attention.replace, not both.", {"at": "attention"})
        if attention.type != "none" and attention.after is None and attention.replace is None:
            raise PydanticCustomError(
                "layout",
                "a base spec places its attention: give attention.after (a glob over the base's module names, e.g. 'layer*.*.bn3') or attention.replace: se.",
                {"at": "attention"},
            )
        return self

    def input_shape(self, batch: int = 1, input_size: int | None = None) -> list[int]:
        """[N, C, ...] of a batch: the spec's sample_shape (with `input_size`, its last one or two axes set to it), else square images."""
        if self.sample_shape is None:
            return super().input_shape(batch, input_size)
        shape = list(self.sample_shape)
        if input_size is not None:
            axes = min(2, len(shape) - 1)
            shape[-axes:] = [input_size] * axes
        return [batch, *shape]

    @property
    def library(self) -> str:
        """torchvision or timm."""
        return self.base.partition(":")[0]

    @property
    def model_name(self) -> str:
        """The base's registered name."""
        return self.base.partition(":")[2]

    def builder_kwargs(self) -> dict[str, Any]:
        """The keywords the base's builder gets: base_args, with the spec's num_classes and in_chans (timm) where given."""
        kwargs = dict(self.base_args)
        if "num_classes" in self.model_fields_set:
            kwargs["num_classes"] = self.num_classes
        if "in_chans" in self.model_fields_set:
            kwargs["in_chans"] = self.in_chans
        return kwargs

    @property
    def groups(self) -> list[BlockGroup]:
        return []  # insertion points are found on the built model (`ecacli.attachment.insertion_points`)

    @cached_property
    def group_kernel_sizes(self) -> list[int] | None:
        return None

    @property
    def num_stages(self) -> int:
        return 0

    def placement_text(self) -> str:
        """Where the attention goes, in words."""
        attention = self.attention
        if attention.type == "none":
            return "no attention"
        where = f"after '{attention.after}'" if attention.after is not None else f"in place of every {attention.replace.upper()} module"  # type: ignore[union-attr]
        return f"{attention.type} {where}"

    def layout_text(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.builder_kwargs().items())
        return f"{self.base}{f'({args})' if args else ''}, {self.placement_text()}"

    def resolved(self) -> dict[str, Any]:
        return {**super().resolved(), "base": self.base, "base_args": self.builder_kwargs(), "after": self.attention.after, "replace": self.attention.replace}


BASE_TAG = "base model"
"""The union tag of base specs (a word no spec key is, so error locations never mistake it for the `base` key)."""


def _arch_of(value: Any) -> str:
    """The union tag of spec data: base specs' where it names a base model, else its `arch`, resnet when it gives none."""
    if isinstance(value, dict) and "base" in value and "arch" not in value:
        return BASE_TAG
    arch = value.get("arch", "resnet") if isinstance(value, dict) else getattr(value, "arch", "resnet")
    if arch == "base":
        return BASE_TAG
    return arch if isinstance(arch, str) and arch in FAMILIES else "unknown"


FAMILIES: dict[str, type[NetworkSpec]] = {"resnet": ResNetSpec, "mobilenetv2": MobileNetV2Spec}
"""Every model family ecacli describes itself, by its `arch:` name: its spec class, whose `family` is its
description in `ecacli.arch`. A new family is one module there plus one entry here."""


def family_of(keys: Iterable[str]) -> str | None:
    """The family whose names a state_dict's keys carry (the first whose description claims them), or None."""
    keys = list(keys)
    return next((name for name, spec_class in FAMILIES.items() if spec_class.family.claims(keys)), None)  # type: ignore[union-attr]


def infer(shapes: Mapping[str, tuple[int, ...]], name: str) -> dict[str, Any]:
    """Spec data describing a state_dict with the names of one of ecacli's families, by that family's own reading (`LayoutError` where none can)."""
    family = family_of(shapes)
    if family is None:
        sample = ", ".join(list(shapes)[:4])
        raise LayoutError(
            f"cannot infer the layout: the tensors ({sample}, ...) carry the names of none of ecacli's families "
            f"({', '.join(FAMILIES)}); for another network write a base spec (base: torchvision:NAME or timm:NAME)."
        )
    return FAMILIES[family].family.infer(shapes, name)  # type: ignore[union-attr]


Spec = Annotated[
    Union[tuple(Annotated[spec_class, Tag(tag)] for tag, spec_class in {**FAMILIES, BASE_TAG: BaseSpec}.items())],  # type: ignore[valid-type]
    Discriminator(
        _arch_of,
        custom_error_type="arch",
        custom_error_message=f"unknown arch; allowed: {', '.join(FAMILIES)} (resnet when arch is not given), or base: torchvision:NAME / timm:NAME",
    ),
]
SPEC_ADAPTER: TypeAdapter[Spec] = TypeAdapter(Spec)  # type: ignore[arg-type]


def check_input_size(side: int) -> None:
    """The `--input-size` option's bounds are the spec's `input_size` bounds."""
    if not MIN_INPUT_SIZE <= side <= MAX_INPUT_SIZE:
        raise UserError(f"--input-size must be between {MIN_INPUT_SIZE} and {MAX_INPUT_SIZE} pixels, got {side}.")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors' YAML language servers."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "ecacli network spec", **SPEC_ADAPTER.json_schema()}
