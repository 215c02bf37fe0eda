"""The network spec: a pydantic schema for the YAML files in specs/, with derived stage layout.

A spec is data only (no torch): the builder in `ecacli.models` turns it into a module, and the
kernel sizes every convention gives are computed here with the pure rule in `ecacli.kernel`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ecacli.arch.attention import ATTENTION_TYPES, MAX_KERNEL, AttentionSpec, CecaAttention, CbamAttention, EcaAttention, EcaKernelSettings, NoAttention, SeAttention, reduced_channels
from ecacli.arch.resnet import BLOCKS, DEPTHS, NUM_STAGES, STEMS
from ecacli.errors import UserError, shown
from ecacli.kernel import kernel_size
from ecacli.strict_model import StrictModel, suggest

MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 2048
NORMS = ("batch", "frozen_batch", "group")

__all__ = [
    "ATTENTION_TYPES", "AttentionSpec", "CbamAttention", "CecaAttention", "EcaAttention", "NoAttention", "SeAttention",
    "DEPTHS", "NUM_STAGES", "ResNetSpec", "Reported", "StrictModel", "attention_model", "check_input_size", "json_schema", "reduced_channels", "suggest",
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


class ResNetSpec(StrictModel):
    """A ResNet / ECA-ResNet: depth or per-stage block counts, stem, widths and attention."""

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        validate_default=True,
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
        title="ecacli network spec",
    )

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: Annotated[str, Field(max_length=300)] = ""
    depth: Annotated[Literal[18, 34, 50, 101, 152] | None, Field(description="sets block type and per-stage block counts as torchvision")] = None
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
    num_classes: Annotated[int, Field(ge=1, le=100_000)] = 1000
    in_chans: Annotated[int, Field(ge=1, le=64)] = 3
    input_size: Annotated[int, Field(ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE, description="square input side in pixels")] = 224
    zero_init_residual: bool = False
    norm: Annotated[Literal[NORMS], Field(description="norm layers: batch (BatchNorm2d), frozen_batch (torchvision's FrozenBatchNorm2d, as its detection models use), group (GroupNorm, 32 groups)")] = "batch"  # type: ignore[valid-type]
    attention: AttentionSpec = EcaAttention()
    reported: Reported | None = None

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
        if isinstance(self.attention, EcaKernelSettings) and isinstance(self.attention.k_size, list) and len(self.attention.k_size) != NUM_STAGES:
            raise PydanticCustomError(
                "layout",
                "must be 'adaptive', an odd integer from 1 to 63, or a list of {stages} such integers (one per stage); got {got}.",
                {"at": "attention.k_size", "stages": NUM_STAGES, "got": shown(self.attention.k_size)},
            )
        try:
            kernels = self.stage_kernel_sizes or []
        except ValueError as exc:
            raise PydanticCustomError("layout", "attention: the adaptive rule cannot give a kernel size: {reason}.", {"reason": str(exc)}) from None
        if any(k > MAX_KERNEL for k in kernels):
            raise PydanticCustomError(
                "layout",
                "attention: the adaptive rule gives k = {kernels} per stage, above the largest allowed k of {max}; raise gamma or lower b.",
                {"kernels": shown(kernels), "max": MAX_KERNEL},
            )
        wider = [(stage, k, c) for stage, (k, c) in enumerate(zip(kernels, self.stage_outputs), start=1) if k > c]
        if wider:
            stage, k, channels = wider[0]
            raise PydanticCustomError(
                "kernel_wider",
                "k = {k} in stage {stage} is wider than the {channels} channels it slides over; use an odd k of at most {largest} there (or a larger width).",
                {"at": "attention.k_size", "k": k, "stage": stage, "channels": channels, "largest": channels if channels % 2 else channels - 1},
            )
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

    @cached_property
    def stage_kernel_sizes(self) -> list[int] | None:
        """ECA k per stage, or None for attention types without a kernel."""
        if isinstance(self.attention, EcaKernelSettings):
            return self.attention.kernel_sizes(self.stage_outputs, self.stage_planes)
        return None

    @cached_property
    def block_kernel_sizes(self) -> list[int] | None:
        """ECA k of every block in forward order, or None."""
        if self.stage_kernel_sizes is None:
            return None
        return [k for k, n in zip(self.stage_kernel_sizes, self.stage_blocks) for _ in range(n)]

    def input_shape(self, batch: int = 1, input_size: int | None = None) -> list[int]:
        """[N, C, H, W] of a batch of square inputs, at `input_size` or the spec's own size."""
        side = input_size or self.input_size
        return [batch, self.in_chans, side, side]

    def kernel_conventions(self) -> list[dict[str, int | None]]:
        """Per stage: its widths and k under each convention in the wild, beside this spec's own."""
        attention = self.attention if isinstance(self.attention, EcaKernelSettings) else EcaAttention()
        rows = []
        for stage, (planes, out) in enumerate(zip(self.stage_planes, self.stage_outputs), start=1):
            rows.append(
                {
                    "stage": stage,
                    "planes": planes,
                    "output": out,
                    "k_output": kernel_size(out, attention.gamma, attention.b),
                    "k_planes": kernel_size(planes, attention.gamma, attention.b),
                    "k_spec": self.stage_kernel_sizes[stage - 1] if self.stage_kernel_sizes else None,
                }
            )
        return rows

    def to_yaml_dict(self) -> dict[str, Any]:
        """The spec as plain data, without defaults that were left unset, for writing back to YAML."""
        return self.model_dump(mode="json", exclude_unset=True)


def check_input_size(side: int) -> None:
    """The `--input-size` option's bounds are the spec's `input_size` bounds."""
    if not MIN_INPUT_SIZE <= side <= MAX_INPUT_SIZE:
        raise UserError(f"--input-size must be between {MIN_INPUT_SIZE} and {MAX_INPUT_SIZE} pixels, got {side}.")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors' YAML language servers."""
    return ResNetSpec.model_json_schema()
