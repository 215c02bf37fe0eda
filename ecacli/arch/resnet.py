"""The ResNet family, described once: stems, block types and the model, from which both the torch modules and the summary come.

Names follow torchvision's resnet (`conv1`, `bn1`, `layer{1-4}.{i}.conv1/bn1/...`,
`downsample.0/1`, `fc`), with timm's deep stems (`conv1.{0..6}`) and average-pool shortcuts
(`downsample.0/1/2`), and the block's attention under its type's name (`eca`, `se`, `cbam`). A new
stem is one entry in `STEMS`; a new block type one Kind in `BLOCKS` plus its torch module.
Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ecacli.arch.attention import ATTENTION_TYPES, is_attention
from ecacli.arch.nodes import KINDS, FeatureLevel, Kind, Layer, Node, Shape, account, chain, child_path, conv, norm, register, sequential

if TYPE_CHECKING:
    from ecacli.spec import ResNetSpec

NUM_STAGES = 4
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


# --- stems --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stem:
    """The layers before stage 1 (`conv1`, `bn1`, `relu`, `maxpool`): a single conv or timm's three-conv deep stem."""

    description: str
    kernel: int
    stride: int
    pooled: bool
    deep: bool = False
    tiered: bool = False

    @property
    def reduction(self) -> int:
        """How much smaller than the input stage 1's input is."""
        return self.stride * (2 if self.pooled else 1)

    def widths(self, spec: ResNetSpec) -> tuple[int, ...]:
        """Output channels of each stem conv, in order (the last feeds stage 1)."""
        if not self.deep:
            return (spec.stem_width or spec.width,)
        inner = spec.stem_width or spec.width // 2
        return (3 * (inner // 4) if self.tiered else inner, inner, 2 * inner)

    def nodes(self, spec: ResNetSpec) -> list[Node]:
        widths = self.widths(spec)
        if self.deep:
            first, inner, out = widths
            stem_conv = sequential("conv1", [
                conv("c", spec.in_chans, first, 3, 2), norm("n", first, spec.norm), Node("r", "ReLU", {"inplace": True}),
                conv("c", first, inner, 3), norm("n", inner, spec.norm), Node("r", "ReLU", {"inplace": True}),
                conv("c", inner, out, 3),
            ])
        else:
            stem_conv = conv("conv1", spec.in_chans, widths[0], self.kernel, self.stride)
        pool = Node("maxpool", "MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}) if self.pooled else Node("maxpool", "Identity")
        return [stem_conv, norm("bn1", widths[-1], spec.norm), Node("relu", "ReLU", {"inplace": True}), pool]

    def from_shapes(self, shapes: Mapping[str, tuple[int, ...]], width: int) -> dict[str, Any] | None:
        """The spec keys of this stem if a state_dict's stem tensors are its, else None."""
        if not self.deep:
            shape = shapes.get("conv1.weight")
            if shape is None or len(shape) != 4 or shape[2] != self.kernel:
                return None
            return {"in_chans": shape[1], **({"stem_width": shape[0]} if shape[0] != width else {})}
        first, inner = shapes.get("conv1.0.weight"), shapes.get("conv1.3.weight")
        if first is None or inner is None or len(first) != 4 or len(inner) != 4:
            return None
        if first[0] != (3 * (inner[0] // 4) if self.tiered else inner[0]):
            return None
        return {"in_chans": first[1], **({"stem_width": inner[0]} if inner[0] != width // 2 else {})}


STEMS: dict[str, Stem] = {
    "imagenet": Stem("7x7/2 conv + 3x3/2 max-pool (torchvision)", kernel=7, stride=2, pooled=True),
    "cifar": Stem("3x3/1 conv, no pool", kernel=3, stride=1, pooled=False),
    "deep": Stem("three 3x3 convs (the first /2, widths w/2, w/2, w) + max-pool (timm's 'd' variants)", kernel=3, stride=2, pooled=True, deep=True),
    "deep_tiered": Stem("three 3x3 convs (widths 3w/8, w/2, w) + max-pool (timm's 't' variants)", kernel=3, stride=2, pooled=True, deep=True, tiered=True),
}
"""Every stem by its `stem:` name: the registry a new stem joins with one entry."""


# --- blocks -------------------------------------------------------------------------------------


def downsample(args: Mapping[str, Any], out_channels: int) -> Node:
    """The shortcut projection: strided 1x1 conv + norm, or (avg) 2x2 avg-pool, 1x1 conv, norm."""
    in_channels, stride, kind = args["in_channels"], args["stride"], args["downsample"]
    if kind == "conv":
        layers = [conv("c", in_channels, out_channels, 1, stride), norm("n", out_channels, args["norm"])]
    else:
        pool = Node("p", "AvgPool2d", {"kernel_size": 2, "stride": stride, "ceil_mode": True, "count_include_pad": False}) if stride > 1 else Node("p", "Identity")
        layers = [pool, conv("c", in_channels, out_channels, 1), norm("n", out_channels, args["norm"])]
    return sequential("downsample", layers)


class ResidualBlock(Kind):
    """A residual block: `args` give in_channels, planes, stride, downsample (None, "conv" or "avg"), attention (its Node or None) and norm.

    `children` lists the modules in registration order (the torch module's, hence the
    state_dict's); accounting lists them in the order the forward first calls them, as torchinfo
    does: the main path, the attention, then the shortcut projection on the block's input.
    """

    expansion = 1

    def main_path(self, args: Mapping[str, Any]) -> list[Node]:
        raise NotImplementedError

    def out_channels(self, args: Mapping[str, Any]) -> int:
        return args["planes"] * self.expansion

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        attention = [args["attention"]] if args["attention"] is not None else []
        projection = [downsample(args, self.out_channels(args))] if args["downsample"] else []
        return attention + self.registration_order(self.main_path(args)) + projection

    def registration_order(self, main: list[Node]) -> list[Node]:
        return main

    def creation_order(self, children: list[Node]) -> list[Node]:
        """Shortcut projection, attention, then the main path: the seeded weights of earlier releases."""
        first = [c for c in children if c.name == "downsample"] + [c for c in children if is_attention(c.kind)]
        return first + [c for c in children if c not in first]

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        args = node.args
        main = self.main_path(args) + ([args["attention"]] if args["attention"] is not None else [])
        layers, out = chain(node, shape, path, main)
        if args["downsample"]:
            projection = downsample(args, self.out_channels(args))
            layers.append(account(projection, shape, child_path(path, projection.name)))
        return Layer(path, self.type_name, out, children=layers)


@register("BasicBlock")
class BasicBlock(ResidualBlock):
    """Two 3x3 convs; the attention after bn2, before the residual add."""

    module = "ecacli.models.resnet:BasicBlock"

    def main_path(self, args: Mapping[str, Any]) -> list[Node]:
        planes, n = args["planes"], args["norm"]
        return [
            conv("conv1", args["in_channels"], planes, 3, args["stride"]), norm("bn1", planes, n), Node("relu", "ReLU", {"inplace": True}),
            conv("conv2", planes, planes, 3), norm("bn2", planes, n),
        ]


@register("Bottleneck")
class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (the stride here, as torchvision's v1.5), 1x1 expand; the attention after bn3."""

    module = "ecacli.models.resnet:Bottleneck"
    expansion = 4

    def main_path(self, args: Mapping[str, Any]) -> list[Node]:
        planes, n, out = args["planes"], args["norm"], self.out_channels(args)
        return [
            conv("conv1", args["in_channels"], planes, 1), norm("bn1", planes, n), Node("relu", "ReLU", {"inplace": True}),
            conv("conv2", planes, planes, 3, args["stride"]), norm("bn2", planes, n),
            conv("conv3", planes, out, 1), norm("bn3", out, n),
        ]

    def registration_order(self, main: list[Node]) -> list[Node]:
        return [m for m in main if m.name != "relu"] + [m for m in main if m.name == "relu"]  # torchvision registers relu after bn3


BLOCKS: dict[str, ResidualBlock] = {"basic": KINDS["BasicBlock"], "bottleneck": KINDS["Bottleneck"]}  # type: ignore[dict-item]
"""Every block type by its `block:` name: the registry a new block type joins with one entry."""


# --- the model ----------------------------------------------------------------------------------


def stage_nodes(spec: ResNetSpec, stage: int, in_channels: int) -> tuple[Node, int]:
    """Stage `stage` (0-based) as `layer{stage + 1}`, a Sequential of blocks, and its output width."""
    block = BLOCKS[spec.block_type]
    planes = spec.stage_planes[stage]
    out = planes * block.expansion
    kernels = spec.stage_kernel_sizes
    blocks = []
    for i in range(spec.stage_blocks[stage]):
        stride = 2 if stage > 0 and i == 0 else 1
        project = i == 0 and (stride != 1 or in_channels != out)
        attention = spec.attention.node(out, kernels[stage] if kernels else None)
        args = {"in_channels": in_channels, "planes": planes, "stride": stride, "downsample": spec.downsample if project else None, "attention": attention, "norm": spec.norm}
        blocks.append(Node(str(i), BLOCKS[spec.block_type].name, args))
        in_channels = out
    return Node(f"layer{stage + 1}", "Sequential", {"layers": blocks}), out


def trunk_nodes(spec: ResNetSpec, stages: int = NUM_STAGES) -> tuple[list[Node], int]:
    """The stem and the first `stages` stages, and the last one's output width."""
    nodes = STEMS[spec.stem].nodes(spec)
    channels = spec.stem_channels[-1]
    for stage in range(stages):
        layer, channels = stage_nodes(spec, stage, channels)
        nodes.append(layer)
    return nodes, channels


def head_node(spec: ResNetSpec, channels: int) -> Node:
    """The classifier `fc`: a Linear layer, or with `num_classes: 0` an Identity (the model returns its pooled features)."""
    if spec.num_classes == 0:
        return Node("fc", "Identity")
    return Node("fc", "Linear", {"in_features": channels, "out_features": spec.num_classes})


@register("ECAResNet")
class ResNetModel(Kind):
    """The whole network: stem, four stages, global average pool and the classifier `fc` (an Identity when `num_classes` is 0)."""

    module = "ecacli.models.resnet:ECAResNet"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        spec = args["spec"]
        nodes, channels = trunk_nodes(spec)
        return nodes + [Node("avgpool", "AdaptiveAvgPool2d", {"output_size": 1}), head_node(spec, channels)]

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        *body, head = node.children
        layers, out = chain(node, shape, path, body)
        head_layers, out = chain(node, out[:2], path, [head])  # the forward flattens the pooled features
        return Layer(path, self.type_name, out, children=layers + head_layers)


@register("ResNetFeatures")
class ResNetFeatures(Kind):
    """A feature extractor: the stem and the stages up to the deepest level asked for; `args` give spec and out_indices."""

    module = "ecacli.models.resnet:ResNetFeatures"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        spec, deepest = args["spec"], max(args["out_indices"])
        nodes, _ = trunk_nodes(spec, deepest)
        return nodes if deepest else nodes[:3]  # level 0 is the stem's ReLU output, before the max-pool

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        layers, out = chain(node, shape, path)
        return Layer(path, self.type_name, out, children=layers)


def plan(spec: ResNetSpec, out_indices: tuple[int, ...] | None = None) -> Node:
    """The model a ResNet spec describes, or with `out_indices` its feature extractor."""
    if out_indices is not None:
        return Node("", "ResNetFeatures", {"spec": spec, "out_indices": tuple(out_indices)})
    return Node("", "ECAResNet", {"spec": spec})


def feature_levels(spec: ResNetSpec) -> list[FeatureLevel]:
    """Level 0, the stem's ReLU output (before any max-pool), then each stage's output."""
    stem = STEMS[spec.stem]
    levels = [FeatureLevel("relu", spec.stem_channels[-1], stem.stride)]
    return levels + [FeatureLevel(f"layer{i + 1}", out, stem.reduction * 2**i) for i, out in enumerate(spec.stage_outputs)]


def stage_modules(spec: ResNetSpec) -> list[list[str]]:
    """The modules of the stem (index 0) and of each stage (1..4), as `frozen_stages` counts them."""
    return [["conv1", "bn1"]] + [[f"layer{i}"] for i in range(1, NUM_STAGES + 1)]


# --- reading a state_dict -----------------------------------------------------------------------

BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")


def claims(keys: Iterable[str]) -> bool:
    """Whether a state_dict's keys carry this family's names: residual blocks `layerN.M.*`."""
    return any(BLOCK_KEY.match(key) for key in keys)


class LayoutError(ValueError):
    """A state_dict that no spec of the family describes; the message says what was found."""


def stage_blocks(shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
    """Blocks per stage from the `layerN.M.` indices; all four stages with indices 0..M-1."""
    indices: dict[int, set[int]] = {}
    for key in shapes:
        found = BLOCK_KEY.match(key)
        if found:
            indices.setdefault(int(found.group(1)), set()).add(int(found.group(2)))
    stages = sorted(indices)
    if stages != list(range(1, NUM_STAGES + 1)):
        named = ", ".join(f"layer{s}" for s in stages) or "none"
        raise LayoutError(f"cannot infer the layout: expected the stages layer1..layer{NUM_STAGES}, found {named}.")
    counts = []
    for stage in stages:
        blocks = sorted(indices[stage])
        if blocks != list(range(len(blocks))):
            raise LayoutError(f"cannot infer the layout: layer{stage} has blocks {blocks}, not 0..{len(blocks) - 1}.")
        counts.append(len(blocks))
    return counts


def shape_of(shapes: Mapping[str, tuple[int, ...]], key: str, what: str, dims: int) -> tuple[int, ...]:
    shape = shapes.get(key)
    if shape is None:
        raise LayoutError(f"cannot infer the {what}: the state_dict has no '{key}'.")
    if len(shape) != dims:
        raise LayoutError(f"cannot infer the {what}: '{key}' has shape {list(shape)}; expected {dims} dimensions.")
    return shape


def block_attention(shapes: Mapping[str, tuple[int, ...]], prefix: str, channels: int) -> tuple[str, int | None] | None:
    """(attention type, k) of the block whose keys start with `prefix`, None without attention tensors; refuses tensors no type reads."""
    for module_name in sorted({settings.module_name for settings in ATTENTION_TYPES.values() if settings.module_name}):
        start = f"{prefix}{module_name}."
        inside = {key[len(start):]: shape for key, shape in shapes.items() if key.startswith(start)}
        if not inside:
            continue
        for name, settings in ATTENTION_TYPES.items():
            k = settings.kernel_from_shapes(inside, channels) if settings.module_name == module_name else None
            if k is not None:
                return name, k
        found = ", ".join(f"{start}{key} {list(shape)}" for key, shape in list(inside.items())[:3])
        raise LayoutError(
            f"cannot infer the attention from {found}: specs are inferred for ECA and ECA-NS kernels only "
            "(one conv.weight [1, 1, k], or [C, 1, k]). To load another attention whose names match a spec, give the spec "
            "(`ecacli export SPEC --from FILE`, `ecacli inspect FILE --spec SPEC`, `load_model(FILE, SPEC)`)."
        )
    return None


def infer_attention(shapes: Mapping[str, tuple[int, ...]], blocks: list[int], outputs: list[int]) -> dict[str, Any]:
    """The `attention:` section a state_dict's blocks fit: none, or one ECA-family type with one k per stage."""
    found = [[block_attention(shapes, f"layer{stage + 1}.{i}.", outputs[stage]) for i in range(count)] for stage, count in enumerate(blocks)]
    flat = [f for stage in found for f in stage]
    if not any(flat):
        return {"type": "none"}
    types = {f[0] for f in flat if f}
    if len(types) > 1:
        raise LayoutError(f"cannot infer the attention: the blocks mix attention types ({', '.join(sorted(types))}); a spec puts one type in every block.")
    for stage, (stage_found, count) in enumerate(zip(found, blocks), start=1):
        if None in stage_found:
            raise LayoutError(
                f"cannot infer the attention: layer{stage} has {count} blocks but {count - stage_found.count(None)} ECA kernels; "
                "a spec puts ECA in every block or in none."
            )
    kernels = []
    for stage, stage_found in enumerate(found, start=1):
        ks = [f[1] for f in stage_found if f]
        if len(set(ks)) != 1:
            raise LayoutError(f"cannot infer the attention: the ECA kernel sizes of layer{stage} differ between blocks ({ks}); a spec has one k per stage, so this checkpoint cannot be described.")
        kernels.append(ks[0])
    return {"type": types.pop(), "k_size": kernels[0] if len(set(kernels)) == 1 else kernels}


def block_type_of(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The block type whose main path's convs are exactly the first block's (`layer1.0.*.weight` of 4-d convs)."""
    found = {key[len("layer1.0."):] for key, shape in shapes.items() if key.startswith("layer1.0.conv") and len(shape) == 4}
    probe = {"in_channels": 8, "planes": 8, "stride": 1, "norm": "batch"}
    for name, block in BLOCKS.items():
        if found == {f"{node.name}.weight" for node in block.main_path(probe) if node.kind == "Conv2d"}:
            return name
    raise LayoutError(f"cannot infer the block type from layer1.0's convs {sorted(found)}; known: " + ", ".join(BLOCKS) + ".")


def infer(shapes: Mapping[str, tuple[int, ...]], name: str) -> dict[str, Any]:
    """Spec data (before validation) describing a state_dict with this family's names (without `fc`: a headless trunk, num_classes 0); LayoutError where none can."""
    blocks = stage_blocks(shapes)
    block = block_type_of(shapes)
    width = shape_of(shapes, "layer1.0.conv1.weight", "width", 4)[0]
    num_classes = shape_of(shapes, "fc.weight", "number of classes (the classifier fc)", 2)[0] if "fc.weight" in shapes or "fc.bias" in shapes else 0
    depth = next((depth for depth, known in DEPTHS.items() if known == (block, tuple(blocks))), None)
    data: dict[str, Any] = {"name": name, **({"depth": depth} if depth else {"layers": blocks, "block": block})}
    stems = [(stem, found) for stem, found in ((stem, entry.from_shapes(shapes, width)) for stem, entry in STEMS.items()) if found is not None]
    if not stems:
        seen = {key: list(shape) for key, shape in shapes.items() if key.startswith("conv1.")}
        raise LayoutError(f"cannot infer the stem from {seen or 'no conv1 tensors'}; known stems: " + "; ".join(f"{n}: {s.description}" for n, s in STEMS.items()) + ".")
    stem, stem_data = stems[0]
    data.update({"stem": stem, **stem_data})
    if any(key.endswith(".downsample.2.weight") for key in shapes):
        data["downsample"] = "avg"
    outputs = [width * 2**stage * BLOCKS[block].expansion for stage in range(NUM_STAGES)]
    data.update({"width": width, "num_classes": num_classes, "attention": infer_attention(shapes, blocks, outputs)})
    return data
