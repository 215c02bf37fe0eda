"""The description every model is built from and summarised by: nodes, their kinds, and torchinfo-style accounting.

A `Node` names a module (its attribute name, its kind and the arguments it is built with). Its
`Kind` knows, without torch, the node's children, how to account for it on an input shape
(output shape, parameters, mult-adds) and which torch class it becomes. `ecacli.layers.build`
turns nodes into modules; `account` turns them into the `Layer` tree `ecacli summary` shows. The
accounting follows torchinfo's conventions (a conv's mult-adds are its parameters times N x
output positions; other layers with weights count N x parameters; activation bytes are twice the
outputs of layers with parameters), and tests hold it equal to torchinfo on the built models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

FLOAT32_BYTES = 4
Shape = list[int]


@dataclass(frozen=True)
class Node:
    """A module of a model: its attribute name in its parent, its kind (see `KINDS`) and its constructor arguments."""

    name: str
    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def children(self) -> list[Node]:
        """The child modules this node's module registers, in registration order."""
        return KINDS[self.kind].children(self.args)


@dataclass(frozen=True)
class FeatureLevel:
    """One level a feature extractor returns: the module whose output it is, its channels and its reduction (input side / level side)."""

    module: str
    channels: int
    reduction: int


@dataclass
class Layer:
    """A module's accounting on one input: its output shape and, summed over its leaves, parameters and mult-adds."""

    name: str
    type: str
    output_shape: Shape
    params: int = 0
    macs: int = 0
    eca_k: int | None = None
    is_attention: bool = False
    children: list[Layer] = field(default_factory=list)

    def walk(self, depth: int = 0) -> Iterator[tuple[int, Layer]]:
        """(depth, layer) for this layer and its subtree, in forward order."""
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)

    def leaves(self) -> Iterator[Layer]:
        return (layer for _, layer in self.walk() if not layer.children)

    @property
    def total_params(self) -> int:
        return sum(leaf.params for leaf in self.leaves())

    @property
    def total_macs(self) -> int:
        return sum(leaf.macs for leaf in self.leaves())

    @property
    def activation_bytes(self) -> int:
        """torchinfo's forward/backward estimate: outputs of layers with parameters, counted twice."""
        return sum(2 * FLOAT32_BYTES * math.prod(leaf.output_shape) for leaf in self.leaves() if leaf.params)

    @property
    def attention_params(self) -> int:
        """Parameters inside the attention modules of this subtree."""
        return sum(layer.total_params for _, layer in self.walk() if layer.is_attention)

    @property
    def eca_kernels(self) -> list[int]:
        return sorted({layer.eca_k for _, layer in self.walk() if layer.eca_k is not None})


class Kind:
    """How one kind of module is described: its children, its accounting, and the torch class it is built as (`module`, "package.module:Class")."""

    module: str = ""
    name: str = ""
    """The kind's key in `KINDS` (set by `register`)."""

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        return []

    def creation_order(self, children: list[Node]) -> list[Node]:
        """The order the children are created in (it decides which random numbers their default initialisations draw)."""
        return children

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        """The node's Layer on an input of `shape`; `path` is its dotted name in the model."""
        raise NotImplementedError

    @property
    def type_name(self) -> str:
        return self.module.rpartition(":")[2]


KINDS: dict[str, Kind] = {}


def register(name: str) -> Callable[[type[Kind]], type[Kind]]:
    """Class decorator: one instance of the Kind under `name` in `KINDS`."""

    def add(cls: type[Kind]) -> type[Kind]:
        cls.name = name
        KINDS[name] = cls()
        return cls

    return add


def account(node: Node, shape: Shape, path: str = "") -> Layer:
    """The Layer tree of `node` on an input of `shape`."""
    return KINDS[node.kind].account(node, shape, path)


def child_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def chain(node: Node, shape: Shape, path: str, order: list[Node] | None = None) -> tuple[list[Layer], Shape]:
    """Account for children that run one after another, each on the previous one's output; returns (layers, output shape)."""
    layers = []
    for child in node.children if order is None else order:
        layer = account(child, shape, child_path(path, child.name))
        layers.append(layer)
        shape = layer.output_shape
    return layers, shape


def out_side(side: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    """Output side of a conv or pool (PyTorch's formula, ceil_mode's rule that a window must start inside the input included)."""
    span = side + 2 * padding - kernel
    out = -(-span // stride) + 1 if ceil_mode else span // stride + 1
    if ceil_mode and (out - 1) * stride >= side + padding:
        out -= 1
    return out


# --- leaf kinds: torch.nn modules ---------------------------------------------------------------


@register("Conv2d")
class Conv2d(Kind):
    module = "torch.nn:Conv2d"

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        a = node.args
        k, stride, padding = a["kernel_size"], a.get("stride", 1), a.get("padding", 0)
        n, c, h, w = shape
        out = [n, a["out_channels"], out_side(h, k, stride, padding), out_side(w, k, stride, padding)]
        params = c // a.get("groups", 1) * a["out_channels"] * k * k + (a["out_channels"] if a.get("bias", True) else 0)
        return Layer(path, "Conv2d", out, params, params * n * out[2] * out[3])


def conv(name: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int | None = None, groups: int = 1, bias: bool = False) -> Node:
    """A Conv2d node; padding defaults to kernel_size // 2 (same size at stride 1)."""
    args = {"in_channels": in_channels, "out_channels": out_channels, "kernel_size": kernel_size, "stride": stride,
            "padding": kernel_size // 2 if padding is None else padding, "bias": bias}
    if groups != 1:
        args["groups"] = groups
    return Node(name, "Conv2d", args)


class Norm(Kind):
    """A norm layer over the channels: same shape out; torchinfo counts its weights' parameters and N x them as mult-adds."""

    parameters_per_channel = 2

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        params = self.parameters_per_channel * shape[1]
        return Layer(path, self.type_name, list(shape), params, shape[0] * params)


@register("BatchNorm2d")
class BatchNorm2d(Norm):
    module = "torch.nn:BatchNorm2d"


@register("FrozenBatchNorm2d")
class FrozenBatchNorm2d(Norm):
    """torchvision's BatchNorm with frozen statistics and affine terms: buffers only, no parameters."""

    module = "torchvision.ops.misc:FrozenBatchNorm2d"
    parameters_per_channel = 0


@register("GroupNorm")
class GroupNorm(Norm):
    module = "torch.nn:GroupNorm"


NORMS = {"batch": "BatchNorm2d", "frozen_batch": "FrozenBatchNorm2d", "group": "GroupNorm"}
GROUP_NORM_GROUPS = 32


def norm(name: str, channels: int, kind: str = "batch") -> Node:
    """A norm node of the spec's `norm` kind: batch, frozen_batch or group (32 groups, or fewer where the channels do not divide)."""
    if kind == "group":
        return Node(name, "GroupNorm", {"num_groups": math.gcd(GROUP_NORM_GROUPS, channels), "num_channels": channels})
    return Node(name, NORMS[kind], {"num_features": channels})


class ShapeKeeping(Kind):
    """A module without parameters whose output has its input's shape (activations, dropout, identity)."""

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        return Layer(path, self.type_name, list(shape))


@register("ReLU")
class ReLU(ShapeKeeping):
    module = "torch.nn:ReLU"


@register("ReLU6")
class ReLU6(ShapeKeeping):
    module = "torch.nn:ReLU6"


@register("Identity")
class Identity(ShapeKeeping):
    module = "torch.nn:Identity"


@register("Dropout")
class Dropout(ShapeKeeping):
    module = "torch.nn:Dropout"


@register("MaxPool2d")
class MaxPool2d(Kind):
    module = "torch.nn:MaxPool2d"

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        a = node.args
        n, c, h, w = shape
        side = lambda s: out_side(s, a["kernel_size"], a["stride"], a.get("padding", 0), a.get("ceil_mode", False))  # noqa: E731
        return Layer(path, self.type_name, [n, c, side(h), side(w)])


@register("AvgPool2d")
class AvgPool2d(MaxPool2d):
    module = "torch.nn:AvgPool2d"


@register("AdaptiveAvgPool2d")
class AdaptiveAvgPool2d(Kind):
    module = "torch.nn:AdaptiveAvgPool2d"

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        return Layer(path, self.type_name, [shape[0], shape[1], 1, 1])


@register("Linear")
class Linear(Kind):
    """A fully connected layer on flattened features: [N, in] -> [N, out]."""

    module = "torch.nn:Linear"

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        a = node.args
        params = a["in_features"] * a["out_features"] + a["out_features"]
        return Layer(path, self.type_name, [shape[0], a["out_features"]], params, shape[0] * params)


@register("Sequential")
class Sequential(Kind):
    """Children run in turn; `args["layers"]` lists them (named "0", "1", ... as nn.Sequential names them, or by their own names)."""

    module = "torch.nn:Sequential"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        return list(args["layers"])

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        layers, out = chain(node, shape, path)
        return Layer(path, self.type_name, out, children=layers)


def sequential(name: str, layers: list[Node]) -> Node:
    """A Sequential node whose children are renamed "0", "1", ... in order."""
    return Node(name, "Sequential", {"layers": [Node(str(i), layer.kind, layer.args) for i, layer in enumerate(layers)]})
