"""Attention types: the spec's `attention:` section of each, the module a block gets, and how a checkpoint shows it.

One entry per type in `ATTENTION_TYPES`: a settings class (the keys a spec may give, pydantic),
holding the name a block registers the module under (as checkpoints name it) and the module's
node; the node's `Kind` (children, accounting, torch class) is registered beside it. The torch
modules live in `ecacli/layers/`. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, ValidatorFunctionWrapHandler, field_validator
from pydantic_core import PydanticCustomError

from ecacli.arch.nodes import KINDS, Kind, Layer, Node, Shape, account, chain, child_path, conv, register
from ecacli.kernel import kernel_size
from ecacli.strict_model import StrictModel

MAX_KERNEL = 63
MAX_GROUPS = 64
OddKernel = Annotated[int, Field(ge=1, le=MAX_KERNEL)]
KSizeValue = Union[Literal["adaptive"], OddKernel, Annotated[list[OddKernel], Field(min_length=1, max_length=MAX_GROUPS)]]
KSIZE_ALLOWED = "'adaptive', an odd integer from 1 to 63, or a list of such integers (one per stage, or per row of a MobileNetV2 table)"


def _check_k_size(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One clear message for k_size instead of pydantic's one-per-union-member list."""
    try:
        result = handler(value)
    except Exception:
        raise PydanticCustomError("k_size", "must be {allowed}; got {got}.", {"allowed": KSIZE_ALLOWED, "got": repr(value)}) from None
    kernels = result if isinstance(result, list) else [result] if isinstance(result, int) else []
    if any(k % 2 == 0 for k in kernels):
        raise PydanticCustomError(
            "k_size_even",
            "ECA kernel sizes must be odd (the 1-D conv is padded by (k-1)/2 on each side); got {got}. Allowed: {allowed}.",
            {"got": repr(value), "allowed": KSIZE_ALLOWED},
        )
    return result


class AttentionSettings(StrictModel):
    """The `attention:` section of a spec; each type is one subclass."""

    module_name: ClassVar[str] = ""
    """The name a block registers the module under (`eca`, `se`, `cbam`), as the checkpoints of the type name it."""
    has_kernel: ClassVar[bool] = False
    """Whether the type has ECA's k (`k_size`)."""

    type: str
    after: Annotated[
        str | None,
        Field(min_length=1, max_length=500, description="base specs only: a glob over the base model's qualified module names (fnmatch, e.g. 'layer*.*.bn3'); the attention gates each match's output"),
    ] = None
    replace: Annotated[
        Literal["se"] | None,
        Field(description="base specs only: se puts the attention in place of every squeeze-and-excitation module of the base (k from its channels)"),
    ] = None

    def node(self, channels: int, k: int | None) -> Node | None:
        """The module a block whose attention sees `channels` channels gets (k: its ECA kernel size), or None."""
        raise NotImplementedError

    @classmethod
    def kernel_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], channels: int) -> int | None:
        """k if a block's tensors under `module_name` (names relative to it) are this type's, else None."""
        return None


class NoAttention(AttentionSettings):
    """No attention: the model is the plain network with torchvision's exact names and shapes."""

    type: Literal["none"]

    def node(self, channels: int, k: int | None) -> Node | None:
        return None


class EcaKernelSettings(AttentionSettings):
    """The ECA family's kernel-size settings: an explicit k, one per group, or the paper's adaptive rule."""

    module_name: ClassVar[str] = "eca"
    has_kernel: ClassVar[bool] = True

    k_size: Annotated[KSizeValue, Field(description="'adaptive' (eq. 9 of the paper), one odd k, or one odd k per stage (ResNet) or per table row (MobileNetV2)")] = "adaptive"
    gamma: Annotated[float, Field(gt=0, le=64, allow_inf_nan=False, description="gamma of the adaptive rule")] = 2.0
    b: Annotated[float, Field(ge=-64, le=64, allow_inf_nan=False, description="b of the adaptive rule")] = 1.0
    adaptive_on: Annotated[
        Literal["output", "planes"],
        Field(description="width the adaptive rule reads: block output width (timm, the write-up), or the inner width (ResNet bottleneck width, MobileNetV2 expanded width)"),
    ] = "output"

    _wrap_k = field_validator("k_size", mode="wrap")(_check_k_size)

    def kernel_sizes(self, outputs: list[int], inner: list[int]) -> list[int]:
        """k for each group of blocks (ResNet stages, MobileNetV2 table rows), given each group's output and inner widths."""
        if self.k_size == "adaptive":
            widths = outputs if self.adaptive_on == "output" else inner
            return [kernel_size(c, self.gamma, self.b) for c in widths]
        if isinstance(self.k_size, int):
            return [self.k_size] * len(outputs)
        return list(self.k_size)


class EcaAttention(EcaKernelSettings):
    """Efficient Channel Attention: a k-tap 1-D conv across pooled channels, then a sigmoid gate."""

    type: Literal["eca"] = "eca"
    impl: Annotated[
        Literal["fast", "reference"],
        Field(description="fast: a residual block may run BN, gate, add and ReLU fused (same numbers, less time and memory); reference: always module by module"),
    ] = "fast"

    circular: ClassVar[bool] = False

    def node(self, channels: int, k: int | None) -> Node | None:
        return Node(self.module_name, "EcaModule", {"kernel_size": k, "circular": self.circular, "impl": self.impl})

    @classmethod
    def kernel_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], channels: int) -> int | None:
        shape = shapes.get("conv.weight")
        return shape[2] if set(shapes) == {"conv.weight"} and len(shape) == 3 and shape[:2] == (1, 1) else None  # type: ignore[index]


class CecaAttention(EcaAttention):
    """ECA with circular padding across channels (timm's CecaModule): the first and last channels are neighbours."""

    type: Literal["ceca"] = "ceca"  # type: ignore[assignment]
    circular: ClassVar[bool] = True

    @classmethod
    def kernel_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], channels: int) -> int | None:
        return None  # the same tensors as ECA: a checkpoint cannot tell them apart, ECA is inferred


class EcaNsAttention(EcaKernelSettings):
    """ECA-NS, the paper's non-shared ablation: each channel's gate has its own k taps over its channel window (k x C weights)."""

    type: Literal["eca_ns"] = "eca_ns"

    def node(self, channels: int, k: int | None) -> Node | None:
        return Node(self.module_name, "EcaNsModule", {"channels": channels, "kernel_size": k})

    @classmethod
    def kernel_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], channels: int) -> int | None:
        shape = shapes.get("conv.weight")
        return shape[2] if set(shapes) == {"conv.weight"} and len(shape) == 3 and shape[:2] == (channels, 1) and channels > 1 else None  # type: ignore[index]


def reduced_channels(channels: int, reduction: int, divisor: int) -> int:
    """Hidden width of an SE/CBAM bottleneck: channels / reduction rounded to the nearest multiple of divisor (at least divisor)."""
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


class SeAttention(AttentionSettings):
    """Squeeze-and-excitation (Hu et al.): pooled channels through 1x1 conv (bias), ReLU, 1x1 conv (bias), sigmoid gate."""

    module_name: ClassVar[str] = "se"
    type: Literal["se"]
    reduction: Annotated[int, Field(ge=1, le=1024, description="channel reduction ratio r")] = 16
    divisor: Annotated[int, Field(ge=1, le=64, description="hidden width rounded to a multiple of this (timm: 8)")] = 8

    def hidden(self, channels: int) -> int:
        return reduced_channels(channels, self.reduction, self.divisor)

    def node(self, channels: int, k: int | None) -> Node | None:
        return Node(self.module_name, "SeModule", {"channels": channels, "hidden": self.hidden(channels)})

    def params(self, channels: int) -> int:
        """Parameters of one SE block over `channels` (both 1x1 convs, with their biases), as a built model and `ecacli compare` count them."""
        return account(self.node(channels, None), [1, channels, 1, 1]).total_params


class CbamAttention(AttentionSettings):
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

    def node(self, channels: int, k: int | None) -> Node | None:
        args = {"channels": channels, "hidden": self.hidden(channels), "spatial_kernel": self.spatial_kernel, "mlp_bias": self.mlp_bias}
        return Node(self.module_name, "CbamModule", args)


ATTENTION_TYPES: dict[str, type[AttentionSettings]] = {
    "eca": EcaAttention,
    "ceca": CecaAttention,
    "eca_ns": EcaNsAttention,
    "se": SeAttention,
    "cbam": CbamAttention,
    "none": NoAttention,
}
"""Every attention type by its `type:` name: the registry a new type joins with one entry."""

AttentionSpec = Annotated[Union[tuple(ATTENTION_TYPES.values())], Field(discriminator="type")]  # type: ignore[valid-type]


# --- the modules' kinds ---------------------------------------------------------------------------


def is_attention(kind: str) -> bool:
    """Whether modules of this kind are attention modules (their Kind is a `Gate`)."""
    return isinstance(KINDS[kind], Gate)


class Gate(Kind):
    """An attention module: output shaped as its input (x times its gates); its children see shapes of their own."""

    reports_kernel = False
    """Whether the summary shows its `kernel_size` argument as ECA's k."""

    def child_shapes(self, args: Mapping[str, Any], shape: Shape) -> list[Shape]:
        """The input shape of each child, in `children` order."""
        raise NotImplementedError

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        layers = [account(child, child_shape, child_path(path, child.name)) for child, child_shape in zip(node.children, self.child_shapes(node.args, shape))]
        k = node.args["kernel_size"] if self.reports_kernel else None
        return Layer(path, self.type_name, list(shape), eca_k=k, is_attention=True, children=layers)


@register("ChannelConv")
class ChannelConv(Kind):
    """ECA's gate conv, a plain `nn.Conv1d(1, 1, k, bias=False)` over the pooled channels [N, 1, C], padded by (k - 1) / 2."""

    module = "torch.nn:Conv1d"

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        k = node.args["kernel_size"]
        return Layer(path, self.type_name, list(shape), k, k * shape[0] * shape[2])


def channel_conv(kernel_size: int, circular: bool) -> Node:
    """The `conv` child of an ECA module: one input and one output channel, k taps, zero (or circular) padding, no bias."""
    args = {"in_channels": 1, "out_channels": 1, "kernel_size": kernel_size, "padding": (kernel_size - 1) // 2, "bias": False}
    if circular:
        args["padding_mode"] = "circular"
    return Node("conv", "ChannelConv", args)


@register("EcaModule")
class EcaModule(Gate):
    module = "ecacli.layers.eca:EcaModule"
    reports_kernel = True

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        return [channel_conv(args["kernel_size"], args["circular"])]

    def child_shapes(self, args: Mapping[str, Any], shape: Shape) -> list[Shape]:
        return [[shape[0], 1, shape[1]]]


@register("WindowConv")
class WindowConv(Kind):
    """ECA-NS's gate conv, a plain grouped `nn.Conv1d(C, C, k, groups=C, bias=False)` over each channel's window [N, C, k] -> [N, C, 1]."""

    module = "torch.nn:Conv1d"

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        channels, k = node.args["in_channels"], node.args["kernel_size"]
        return Layer(path, self.type_name, [shape[0], channels, 1], channels * k, channels * k * shape[0])


@register("EcaNsModule")
class EcaNsModule(Gate):
    module = "ecacli.layers.eca_ns:EcaNsModule"
    reports_kernel = True

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        c, k = args["channels"], args["kernel_size"]
        return [Node("conv", "WindowConv", {"in_channels": c, "out_channels": c, "kernel_size": k, "groups": c, "bias": False})]

    def child_shapes(self, args: Mapping[str, Any], shape: Shape) -> list[Shape]:
        return [[shape[0], shape[1], args["kernel_size"]]]


@register("SeModule")
class SeModule(Gate):
    module = "ecacli.layers.se:SeModule"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        c, h = args["channels"], args["hidden"]
        return [conv("fc1", c, h, 1, bias=True), Node("relu", "ReLU", {"inplace": True}), conv("fc2", h, c, 1, bias=True)]

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        layers, _ = chain(node, [shape[0], shape[1], 1, 1], path)
        return Layer(path, self.type_name, list(shape), is_attention=True, children=layers)


@register("ChannelGate")
class ChannelGate(Kind):
    """CBAM's channel half: the shared MLP runs once on the avg- and max-pooled channels as one batch of 2N."""

    module = "ecacli.layers.cbam:ChannelGate"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        c, h, bias = args["channels"], args["hidden"], args["bias"]
        return [conv("fc1", c, h, 1, bias=bias), Node("relu", "ReLU", {"inplace": True}), conv("fc2", h, c, 1, bias=bias)]

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        layers, _ = chain(node, [2 * shape[0], shape[1], 1, 1], path)
        return Layer(path, self.type_name, list(shape), children=layers)


@register("SpatialGate")
class SpatialGate(Kind):
    """CBAM's spatial half: a k x k conv + BN over the channel-wise mean and max maps."""

    module = "ecacli.layers.cbam:SpatialGate"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        k = args["kernel_size"]
        return [conv("conv", 2, 1, k), Node("bn", "BatchNorm2d", {"num_features": 1})]

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        layers, _ = chain(node, [shape[0], 2, shape[2], shape[3]], path)
        return Layer(path, self.type_name, list(shape), children=layers)


@register("CbamModule")
class CbamModule(Gate):
    module = "ecacli.layers.cbam:CbamModule"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        return [
            Node("channel", "ChannelGate", {"channels": args["channels"], "hidden": args["hidden"], "bias": args["mlp_bias"]}),
            Node("spatial", "SpatialGate", {"kernel_size": args["spatial_kernel"]}),
        ]

    def child_shapes(self, args: Mapping[str, Any], shape: Shape) -> list[Shape]:
        return [list(shape), list(shape)]
