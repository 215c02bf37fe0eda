"""Layer-by-layer accounting of a spec's model in pure Python: names, output shapes, parameters, mult-adds.

`ecacli summary` reads its numbers from here so that it never imports torch (the import alone
costs more than a second, and tracing even on the meta device pulls in torch._dynamo). The
accounting follows torchinfo's conventions exactly (a conv's mult-adds are its parameters times
N x output positions; other layers with weights count N x parameters; activation bytes are twice
the outputs of layers with parameters), and tests/test_architecture.py holds it equal to
torchinfo run on the built model for every preset and for generated specs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

from ecacli.spec import NUM_STAGES, ResNetSpec

FLOAT32_BYTES = 4


@dataclass
class Layer:
    """A module of the model: a leaf with its own parameters, or a container of children."""

    name: str
    type: str
    output_shape: list[int]
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


def _out_side(side: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    span = side + 2 * padding - kernel
    out = -(-span // stride) + 1 if ceil_mode else span // stride + 1
    if ceil_mode and (out - 1) * stride >= side + padding:
        out -= 1
    return out


# Each function returns the layer a module of that kind makes from a feature map `shape` = [N, C, H, W].


def _conv(name: str, shape: list[int], out_ch: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False) -> Layer:
    n, c, h, w = shape
    out = [n, out_ch, _out_side(h, kernel, stride, padding), _out_side(w, kernel, stride, padding)]
    params = c * out_ch * kernel * kernel + (out_ch if bias else 0)
    return Layer(name, "Conv2d", out, params, params * n * out[2] * out[3])


def _bn(name: str, shape: list[int]) -> Layer:
    params = 2 * shape[1]
    return Layer(name, "BatchNorm2d", list(shape), params, shape[0] * params)


def _pool(name: str, type_: str, shape: list[int], kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> Layer:
    n, c, h, w = shape
    return Layer(name, type_, [n, c, _out_side(h, kernel, stride, padding, ceil_mode), _out_side(w, kernel, stride, padding, ceil_mode)])


def _attention(name: str, shape: list[int], spec: ResNetSpec, stage: int) -> Layer | None:
    """The block's attention module as the registry in ecacli.layers builds it, or None."""
    attention = spec.attention
    n, c = shape[0], shape[1]
    if attention.type in ("eca", "ceca"):
        k = spec.stage_kernel_sizes[stage]  # type: ignore[index]
        conv = Layer(f"{name}.conv", "ChannelConv", [n, 1, c], k, k * n * c)
        return Layer(name, "EcaModule", list(shape), eca_k=k, is_attention=True, children=[conv])
    if attention.type == "se":
        hidden = attention.hidden(c)
        fc1 = _conv(f"{name}.fc1", [n, c, 1, 1], hidden, 1, bias=True)
        fc2 = _conv(f"{name}.fc2", fc1.output_shape, c, 1, bias=True)
        return Layer(name, "SeModule", list(shape), is_attention=True, children=[fc1, Layer(f"{name}.relu", "ReLU", fc1.output_shape), fc2])
    if attention.type == "cbam":
        hidden = attention.hidden(c)
        fc1 = _conv(f"{name}.channel.fc1", [2 * n, c, 1, 1], hidden, 1, bias=attention.mlp_bias)
        fc2 = _conv(f"{name}.channel.fc2", fc1.output_shape, c, 1, bias=attention.mlp_bias)
        relu = Layer(f"{name}.channel.relu", "ReLU", fc1.output_shape)
        channel = Layer(f"{name}.channel", "ChannelGate", list(shape), children=[fc1, relu, fc2])
        k = attention.spatial_kernel
        conv = _conv(f"{name}.spatial.conv", [n, 2, shape[2], shape[3]], 1, k, 1, k // 2)
        spatial = Layer(f"{name}.spatial", "SpatialGate", list(shape), children=[conv, _bn(f"{name}.spatial.bn", conv.output_shape)])
        return Layer(name, "CbamModule", list(shape), is_attention=True, children=[channel, spatial])
    return None



def _stem(spec: ResNetSpec, shape: list[int]) -> list[Layer]:
    if spec.stem == "imagenet":
        conv = _conv("conv1", shape, spec.stem_channels[0], 7, 2, 3)
    elif spec.stem == "cifar":
        conv = _conv("conv1", shape, spec.stem_channels[0], 3, 1, 1)
    else:
        first, inner, out = spec.stem_channels
        c0 = _conv("conv1.0", shape, first, 3, 2, 1)
        c3 = _conv("conv1.3", c0.output_shape, inner, 3, 1, 1)
        c6 = _conv("conv1.6", c3.output_shape, out, 3, 1, 1)
        parts = [
            c0, _bn("conv1.1", c0.output_shape), Layer("conv1.2", "ReLU", c0.output_shape),
            c3, _bn("conv1.4", c3.output_shape), Layer("conv1.5", "ReLU", c3.output_shape), c6,
        ]
        conv = Layer("conv1", "Sequential", c6.output_shape, children=parts)
    layers = [conv, _bn("bn1", conv.output_shape), Layer("relu", "ReLU", conv.output_shape)]
    if spec.stem == "cifar":
        layers.append(Layer("maxpool", "Identity", conv.output_shape))
    else:
        layers.append(_pool("maxpool", "MaxPool2d", conv.output_shape, 3, 2, 1))
    return layers


def _downsample(spec: ResNetSpec, name: str, shape: list[int], out_ch: int, stride: int) -> Layer:
    if spec.downsample == "conv":
        conv = _conv(f"{name}.0", shape, out_ch, 1, stride)
        parts = [conv, _bn(f"{name}.1", conv.output_shape)]
    else:
        pool = _pool(f"{name}.0", "AvgPool2d", shape, 2, stride, ceil_mode=True) if stride > 1 else Layer(f"{name}.0", "Identity", list(shape))
        conv = _conv(f"{name}.1", pool.output_shape, out_ch, 1)
        parts = [pool, conv, _bn(f"{name}.2", conv.output_shape)]
    return Layer(name, "Sequential", parts[-1].output_shape, children=parts)


def _block(spec: ResNetSpec, name: str, shape: list[int], planes: int, stride: int, stage: int, project: bool) -> Layer:
    out_ch = planes * spec.expansion
    if spec.block_type == "bottleneck":
        c1 = _conv(f"{name}.conv1", shape, planes, 1)
        c2 = _conv(f"{name}.conv2", c1.output_shape, planes, 3, stride, 1)
        c3 = _conv(f"{name}.conv3", c2.output_shape, out_ch, 1)
        parts = [
            c1, _bn(f"{name}.bn1", c1.output_shape), Layer(f"{name}.relu", "ReLU", c1.output_shape),
            c2, _bn(f"{name}.bn2", c2.output_shape), c3, _bn(f"{name}.bn3", c3.output_shape),
        ]
        kind = "Bottleneck"
    else:
        c1 = _conv(f"{name}.conv1", shape, planes, 3, stride, 1)
        c2 = _conv(f"{name}.conv2", c1.output_shape, planes, 3, 1, 1)
        parts = [c1, _bn(f"{name}.bn1", c1.output_shape), Layer(f"{name}.relu", "ReLU", c1.output_shape), c2, _bn(f"{name}.bn2", c2.output_shape)]
        kind = "BasicBlock"
    out_shape = parts[-1].output_shape
    attention = _attention(f"{name}.{spec.attention.module_name}", out_shape, spec, stage)
    if attention is not None:
        parts.append(attention)
    if project:
        parts.append(_downsample(spec, f"{name}.downsample", shape, out_ch, stride))
    return Layer(name, kind, out_shape, children=parts)


def model_layers(spec: ResNetSpec, batch: int = 1, input_size: int | None = None) -> Layer:
    """The whole model as a tree of layers for a batch of `batch` square inputs."""
    shape = spec.input_shape(batch, input_size)
    children = _stem(spec, shape)
    shape = children[-1].output_shape
    for stage in range(NUM_STAGES):
        blocks = []
        for i in range(spec.stage_blocks[stage]):
            stride = 2 if stage > 0 and i == 0 else 1
            project = i == 0 and (stride != 1 or shape[1] != spec.stage_outputs[stage])
            block = _block(spec, f"layer{stage + 1}.{i}", shape, spec.stage_planes[stage], stride, stage, project)
            blocks.append(block)
            shape = block.output_shape
        children.append(Layer(f"layer{stage + 1}", "Sequential", shape, children=blocks))
    pooled = [batch, shape[1], 1, 1]
    fc_params = shape[1] * spec.num_classes + spec.num_classes
    children.append(Layer("avgpool", "AdaptiveAvgPool2d", pooled))
    children.append(Layer("fc", "Linear", [batch, spec.num_classes], fc_params, batch * fc_params))
    return Layer("", "ECAResNet", [batch, spec.num_classes], children=children)
