"""The MobileNetV2 family, described once: torchvision's layout and names, with the paper's ECA in every inverted residual.

`features.0` is the stem (3x3/2 conv, BN, ReLU6); `features.1..` the inverted residuals of the
(t, c, n, s) table, each a `conv` Sequential (1x1 expansion unless t = 1, 3x3 depthwise, 1x1
projection, BN) with the attention appended after the projection's BN, before the residual add,
as the paper's release places it (`features.N.conv.4.conv.weight`, `.conv.3.` when t = 1); then
a 1x1 conv to `last_channel` and the classifier (Dropout, Linear). Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ecacli.arch.attention import ATTENTION_TYPES
from ecacli.arch.nodes import FeatureLevel, Kind, Layer, Node, Shape, chain, conv, norm, register, sequential
from ecacli.arch.resnet import LayoutError, shape_of

if TYPE_CHECKING:
    from ecacli.spec import MobileNetV2Spec

DEFAULT_SETTING: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
"""torchvision's inverted-residual table: expansion t, output channels c, repeats n, first stride s."""
STEM_CHANNELS = 32
DEFAULT_LAST_CHANNEL = 1280


def make_divisible(value: float, divisor: int) -> int:
    """A width rounded to the nearest multiple of `divisor` (at least `divisor`), never more than 10% below `value` (torchvision's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_norm_activation(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, norm_kind: str) -> list[Node]:
    """Conv (no bias, same padding), norm, ReLU6: torchvision's Conv2dNormActivation."""
    return [conv("c", in_channels, out_channels, kernel_size, stride, groups=groups), norm("n", out_channels, norm_kind), Node("a", "ReLU6", {"inplace": True})]


@register("InvertedResidual")
class InvertedResidual(Kind):
    """One row step of the table: `args` give in_channels, out_channels, stride, expand_ratio, attention (Node or None), norm."""

    module = "ecacli.models.mobilenetv2:InvertedResidual"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        inp, out, t, n = args["in_channels"], args["out_channels"], args["expand_ratio"], args["norm"]
        hidden = hidden_width(inp, t)
        layers = [] if t == 1 else [sequential("x", conv_norm_activation(inp, hidden, 1, 1, 1, n))]
        layers += [
            sequential("x", conv_norm_activation(hidden, hidden, 3, args["stride"], hidden, n)),
            conv("x", hidden, out, 1),
            norm("x", out, n),
        ]
        if args["attention"] is not None:
            layers.append(args["attention"])
        return [sequential("conv", layers)]

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        layers, out = chain(node, shape, path)
        return Layer(path, self.type_name, out, children=layers)


def hidden_width(in_channels: int, expand_ratio: int) -> int:
    """The expansion's width, as torchvision rounds it."""
    return int(round(in_channels * expand_ratio))


def block_rows(spec: MobileNetV2Spec) -> list[tuple[int, int, int, int, int]]:
    """(row, in_channels, out_channels, stride, expand_ratio) of every inverted residual, in order."""
    rows = []
    channels = spec.stem_channels
    for row, (t, c, n, s) in enumerate(spec.inverted_residual_setting):
        out = make_divisible(c * spec.width_mult, spec.round_nearest)
        for i in range(n):
            rows.append((row, channels, out, s if i == 0 else 1, t))
            channels = out
    return rows


def feature_nodes(spec: MobileNetV2Spec) -> list[Node]:
    """`features`' layers: the stem, every inverted residual, the last 1x1 conv."""
    n = spec.norm
    layers = [sequential("x", conv_norm_activation(spec.in_chans, spec.stem_channels, 3, 2, 1, n))]
    kernels = spec.group_kernel_sizes
    rows = block_rows(spec)
    for row, inp, out, stride, t in rows:
        attention = spec.attention.node(out, kernels[row] if kernels else None)
        args = {"in_channels": inp, "out_channels": out, "stride": stride, "expand_ratio": t, "attention": attention, "norm": n}
        layers.append(Node("x", "InvertedResidual", args))
    layers.append(sequential("x", conv_norm_activation(rows[-1][2], spec.last_channel_width, 1, 1, 1, n)))
    return layers


@register("MobileNetV2")
class MobileNetV2Model(Kind):
    """The whole network: `features` (stem, inverted residuals, last 1x1 conv), global average pool (functional), `classifier` (an Identity when `num_classes` is 0)."""

    module = "ecacli.models.mobilenetv2:MobileNetV2"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        spec = args["spec"]
        if spec.num_classes == 0:
            classifier = Node("classifier", "Identity")
        else:
            classifier = sequential("classifier", [Node("x", "Dropout", {"p": spec.dropout}), Node("x", "Linear", {"in_features": spec.last_channel_width, "out_features": spec.num_classes})])
        return [sequential("features", feature_nodes(spec)), classifier]

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        features, classifier = node.children
        layers, out = chain(node, shape, path, [features])
        head, out = chain(node, [out[0], out[1]], path, [classifier])
        return Layer(path, self.type_name, out, children=layers + head)


@register("MobileNetV2Features")
class MobileNetV2Features(Kind):
    """A feature extractor: `features` up to the deepest level asked for; `args` give spec and out_indices."""

    module = "ecacli.models.mobilenetv2:MobileNetV2Features"

    def children(self, args: Mapping[str, Any]) -> list[Node]:
        spec = args["spec"]
        last = int(feature_levels(spec)[max(args["out_indices"])].module.rpartition(".")[2])
        return [sequential("features", feature_nodes(spec)[: last + 1])]

    def account(self, node: Node, shape: Shape, path: str) -> Layer:
        layers, out = chain(node, shape, path)
        return Layer(path, self.type_name, out, children=layers)


def plan(spec: MobileNetV2Spec, out_indices: tuple[int, ...] | None = None) -> Node:
    """The model a MobileNetV2 spec describes, or with `out_indices` its feature extractor."""
    if out_indices is not None:
        return Node("", "MobileNetV2Features", {"spec": spec, "out_indices": tuple(out_indices)})
    return Node("", "MobileNetV2", {"spec": spec})


def level_blocks(spec: MobileNetV2Spec) -> list[list[int]]:
    """The `features` indices of each feature level: every block (from features.1) grouped by its reduction."""
    groups: list[list[int]] = []
    reduction, last = 2, None
    for index, (_, _, _, stride, _) in enumerate(block_rows(spec), start=1):
        reduction *= stride
        if reduction != last:
            groups.append([])
            last = reduction
        groups[-1].append(index)
    return groups


def feature_levels(spec: MobileNetV2Spec) -> list[FeatureLevel]:
    """One level per reduction: the output of its last inverted residual (as timm's MobileNetV2 features)."""
    rows = block_rows(spec)
    levels = []
    for group in level_blocks(spec):
        reduction = 2 * 2 ** sum(1 for row in rows[: group[-1]] if row[3] == 2)
        levels.append(FeatureLevel(f"features.{group[-1]}", rows[group[-1] - 1][2], reduction))
    return levels


def stage_modules(spec: MobileNetV2Spec) -> list[list[str]]:
    """Index 0: the stem (features.0) with the blocks at its reduction (level 0's); then each further level's blocks, as `frozen_stages` counts them."""
    first, *rest = level_blocks(spec)
    return [["features.0"] + [f"features.{i}" for i in first]] + [[f"features.{i}" for i in group] for group in rest]


# --- reading a state_dict -----------------------------------------------------------------------

FEATURE_KEY = re.compile(r"^features\.(\d+)\.")
INVERTED_RESIDUAL_KEY = re.compile(r"^features\.\d+\.conv\.")


def claims(keys: Iterable[str]) -> bool:
    """Whether a state_dict's keys carry this family's names: inverted residuals `features.N.conv.*` (torchvision's EfficientNet, also `features.*`, has `features.N.M.block.*`)."""
    return any(INVERTED_RESIDUAL_KEY.match(key) for key in keys)


WIDTH_MULTIPLIERS = (1.0, 0.35, 0.5, 0.75, 1.3, 1.4)
"""Width multipliers tried when a state_dict's block widths are not the default table's."""


def block_at(shapes: Mapping[str, tuple[int, ...]], index: int, in_channels: int) -> tuple[int, int, tuple[str, int] | None]:
    """(expansion t, output channels, (attention type, k) or None) of the inverted residual `features.{index}`."""
    prefix = f"features.{index}.conv."
    expanded = f"{prefix}1.0.weight" in shapes  # with an expansion conv the depthwise conv is conv.1, else conv.0
    hidden = shape_of(shapes, f"{prefix}{1 if expanded else 0}.0.weight", f"block features.{index}", 4)[0]
    out = shape_of(shapes, f"{prefix}{2 if expanded else 1}.weight", f"block features.{index}", 4)[0]
    t = hidden // in_channels if expanded else 1
    if expanded and hidden != hidden_width(in_channels, t):
        raise LayoutError(f"cannot infer block features.{index}: its expansion from {in_channels} to {hidden} channels is not a whole ratio.")
    start = f"{prefix}{4 if expanded else 3}."
    inside = {key[len(start):]: shape for key, shape in shapes.items() if key.startswith(start)}
    if not inside:
        return t, out, None
    for name, settings in ATTENTION_TYPES.items():
        k = settings.kernel_from_shapes(inside, out)
        if k is not None:
            return t, out, (name, k)
    raise LayoutError(f"cannot infer the attention of features.{index} from {sorted(inside)}: specs are inferred for ECA and ECA-NS kernels only (give the spec).")


def infer(shapes: Mapping[str, tuple[int, ...]], name: str) -> dict[str, Any]:
    """Spec data (before validation) describing a MobileNetV2 state_dict with torchvision's names (without `classifier`: a headless trunk, num_classes 0); LayoutError where none can.

    The blocks' shapes give each one's expansion, width and attention; strides cannot be read
    from weights, so the blocks must form torchvision's table (at some width multiplier).
    """
    indices = sorted({int(m.group(1)) for key in shapes if (m := FEATURE_KEY.match(key))})
    if len(indices) < 3 or indices != list(range(len(indices))):
        raise LayoutError(f"cannot infer the layout: expected features.0 .. features.N, found indices {indices[:20]}.")
    stem = shape_of(shapes, "features.0.0.weight", "stem", 4)
    last = shape_of(shapes, f"features.{indices[-1]}.0.weight", "last conv", 4)
    headless = "classifier.1.weight" not in shapes and "classifier.1.bias" not in shapes
    num_classes = 0 if headless else shape_of(shapes, "classifier.1.weight", "number of classes (classifier.1)", 2)[0]
    blocks, channels = [], stem[0]
    for index in indices[1:-1]:
        t, channels, found = block_at(shapes, index, channels)
        blocks.append((t, channels, found))
    layout = [(t, c) for t, c, _ in blocks]
    width_mult = next((w for w in WIDTH_MULTIPLIERS if layout == [(t, make_divisible(c * w, 8)) for t, c, n, _ in DEFAULT_SETTING for _ in range(n)]), None)
    if width_mult is None:
        raise LayoutError(
            f"cannot infer the table: the blocks' (expansion, width) are {layout}, not torchvision's inverted-residual table at any width multiplier "
            f"of {', '.join(map(str, WIDTH_MULTIPLIERS))}; strides cannot be read from weights, so give the spec (with inverted_residual_setting)."
        )
    data: dict[str, Any] = {"name": name, "arch": "mobilenetv2", "num_classes": num_classes, "in_chans": stem[1]}
    if width_mult != 1.0:
        data["width_mult"] = width_mult
    if last[0] != make_divisible(DEFAULT_LAST_CHANNEL * max(1.0, width_mult), 8):
        data["last_channel"] = last[0]
    row_of = [row for row, (_, _, n, _) in enumerate(DEFAULT_SETTING) for _ in range(n)]
    found = [f for _, _, f in blocks]
    if not any(found):
        data["attention"] = {"type": "none"}
        return data
    if None in found or len({f[0] for f in found if f}) > 1:
        raise LayoutError("cannot infer the attention: a spec puts one attention type in every inverted residual or in none.")
    kernels: list[int] = []
    for row in range(len(DEFAULT_SETTING)):
        ks = {f[1] for f, r in zip(found, row_of) if r == row and f}
        if len(ks) != 1:
            raise LayoutError(f"cannot infer the attention: the ECA kernel sizes of table row {row + 1} differ between blocks ({sorted(ks)}); a spec has one k per row.")
        kernels.append(ks.pop())
    data["attention"] = {"type": found[0][0], "k_size": kernels[0] if len(set(kernels)) == 1 else kernels}  # type: ignore[index]
    return data
