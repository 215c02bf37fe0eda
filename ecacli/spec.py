"""The network spec: a pydantic schema for the YAML files in specs/, with derived stage layout.

A spec is data only (no torch): the builder in `ecacli.models` turns it into a module, and the
kernel sizes every convention gives are computed here with the pure rule in `ecacli.kernel`.
"""

from __future__ import annotations

import difflib
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ecacli.errors import UserError, cut, shown
from ecacli.kernel import kernel_size

NUM_STAGES = 4
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 2048
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
DEEP_STEMS = ("deep", "deep_tiered")


def suggest(word: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class StrictModel(BaseModel):
    """Base for spec sections: unknown keys are errors that name the closest known key."""

    model_config = ConfigDict(strict=True, frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key '{key}'.{hint} Allowed keys: {allowed}.",
                        {"key": cut(str(key)), "hint": suggest(str(key), known), "allowed": ", ".join(known)},
                    )
        return data


MAX_KERNEL = 63
OddKernel = Annotated[int, Field(ge=1, le=MAX_KERNEL)]
KSizeValue = Union[Literal["adaptive"], OddKernel, Annotated[list[OddKernel], Field(min_length=NUM_STAGES, max_length=NUM_STAGES)]]


def _check_k_size(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One clear message for k_size instead of pydantic's one-per-union-member list."""
    allowed = f"'adaptive', an odd integer from 1 to 63, or a list of {NUM_STAGES} such integers (one per stage)"
    try:
        result = handler(value)
    except Exception:
        raise PydanticCustomError("k_size", "must be {allowed}; got {got}.", {"allowed": allowed, "got": shown(value)}) from None
    kernels = result if isinstance(result, list) else [result] if isinstance(result, int) else []
    even = [k for k in kernels if k % 2 == 0]
    if even:
        raise PydanticCustomError(
            "k_size_even",
            "ECA kernel sizes must be odd (the 1-D conv is padded by (k-1)/2 on each side); got {got}. Allowed: {allowed}.",
            {"got": shown(value), "allowed": allowed},
        )
    return result


class EcaAttention(StrictModel):
    """Efficient Channel Attention: a k-tap 1-D conv across pooled channels, then a sigmoid gate."""

    module_name: ClassVar[str] = "eca"
    type: Literal["eca"] = "eca"
    k_size: Annotated[KSizeValue, Field(description="'adaptive' (eq. 9 of the paper), one odd k, or one odd k per stage")] = "adaptive"
    gamma: Annotated[float, Field(gt=0, le=64, description="gamma of the adaptive rule")] = 2.0
    b: Annotated[float, Field(ge=-64, le=64, description="b of the adaptive rule")] = 1.0
    adaptive_on: Annotated[
        Literal["output", "planes"],
        Field(description="width the adaptive rule reads: block output width (timm, the write-up) or bottleneck width"),
    ] = "output"
    impl: Annotated[
        Literal["fast", "reference"],
        Field(description="fast: BN, gate, residual add and ReLU fused in one step (same numbers, less time and memory); reference: the paper's formulation, module by module"),
    ] = "fast"

    _wrap_k = field_validator("k_size", mode="wrap")(_check_k_size)

    def stage_kernel_sizes(self, planes: list[int], outputs: list[int]) -> list[int]:
        """k for each stage, given each stage's bottleneck and output widths."""
        if self.k_size == "adaptive":
            widths = outputs if self.adaptive_on == "output" else planes
            return [kernel_size(c, self.gamma, self.b) for c in widths]
        if isinstance(self.k_size, int):
            return [self.k_size] * NUM_STAGES
        return list(self.k_size)


class CecaAttention(EcaAttention):
    """ECA with circular padding across channels (timm's CecaModule): the first and last channels are neighbours."""

    type: Literal["ceca"] = "ceca"


def reduced_channels(channels: int, reduction: int, divisor: int) -> int:
    """Hidden width of an SE/CBAM bottleneck: channels / reduction rounded to the nearest multiple of divisor (at least divisor)."""
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


class SeAttention(StrictModel):
    """Squeeze-and-excitation (Hu et al.): pooled channels through 1x1 conv (bias), ReLU, 1x1 conv (bias), sigmoid gate."""

    module_name: ClassVar[str] = "se"
    type: Literal["se"]
    reduction: Annotated[int, Field(ge=1, le=1024, description="channel reduction ratio r")] = 16
    divisor: Annotated[int, Field(ge=1, le=64, description="hidden width rounded to a multiple of this (timm: 8)")] = 8

    def hidden(self, channels: int) -> int:
        return reduced_channels(channels, self.reduction, self.divisor)


class CbamAttention(StrictModel):
    """CBAM (Woo et al.): a shared MLP over avg- and max-pooled channels, then a k x k conv + BN over channel-wise mean and max."""

    module_name: ClassVar[str] = "cbam"
    type: Literal["cbam"]
    reduction: Annotated[int, Field(ge=1, le=1024, description="channel reduction ratio r of the shared MLP")] = 16
    divisor: Annotated[int, Field(ge=1, le=64, description="hidden width rounded to a multiple of this (timm: 8)")] = 8
    spatial_kernel: Annotated[int, Field(ge=1, le=15, description="odd kernel size of the spatial attention conv")] = 7
    mlp_bias: Annotated[bool, Field(description="biases in the shared MLP (the CBAM paper: yes; timm: no)")] = False

    @field_validator("spatial_kernel")
    @classmethod
    def _odd_spatial_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise PydanticCustomError("odd", "must be odd so the spatial map keeps its size; got {got}.", {"got": value})
        return value

    def hidden(self, channels: int) -> int:
        return reduced_channels(channels, self.reduction, self.divisor)


class NoAttention(StrictModel):
    """No attention: the model is a plain ResNet with torchvision's exact names and shapes."""

    module_name: ClassVar[str] = ""
    type: Literal["none"]


ATTENTION_TYPES = {"eca": EcaAttention, "ceca": CecaAttention, "se": SeAttention, "cbam": CbamAttention, "none": NoAttention}


def attention_model(type_name: Any) -> type[StrictModel] | None:
    """The schema of an attention type, or None for anything that is not one of their names (lists and mappings included)."""
    return ATTENTION_TYPES.get(type_name) if isinstance(type_name, str) else None

AttentionSpec = Annotated[
    Union[EcaAttention, CecaAttention, SeAttention, CbamAttention, NoAttention], Field(discriminator="type")
]


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
    block: Literal["basic", "bottleneck"] | None = None
    stem: Annotated[
        Literal["imagenet", "cifar", "deep", "deep_tiered"],
        Field(description="imagenet: 7x7/2 conv + 3x3/2 max-pool; cifar: 3x3/1 conv, no pool; deep/deep_tiered: three 3x3 convs + max-pool (timm)"),
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
                "attention: k = {k} in stage {stage} is wider than the {channels} channels it slides over; use an odd k of at most {largest} there (or a larger width).",
                {"k": k, "stage": stage, "channels": channels, "largest": channels if channels % 2 else channels - 1},
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
        return EXPANSION[self.block_type]

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
        if self.stem in DEEP_STEMS:
            inner = self.stem_width or self.width // 2
            first = 3 * (inner // 4) if self.stem == "deep_tiered" else inner
            return (first, inner, 2 * inner)
        return (self.stem_width or self.width,)

    @cached_property
    def stage_kernel_sizes(self) -> list[int] | None:
        """ECA k per stage, or None for attention types without a kernel."""
        if isinstance(self.attention, EcaAttention):
            return self.attention.stage_kernel_sizes(self.stage_planes, self.stage_outputs)
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
        attention = self.attention if isinstance(self.attention, EcaAttention) else EcaAttention()
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
