"""`ecacli summary` data: layer rows and totals of a spec's model, without importing torch.

Numbers come from `ecacli.arch` (pure Python, equal to torchinfo's by test); only the
`--torchinfo` table runs torchinfo itself, on the meta device so no weight or activation exists.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ecacli.arch import FLOAT32_BYTES, feature_levels, model_layers
from ecacli.errors import OptionError
from ecacli.spec import FAMILIES, NetworkSpec

if TYPE_CHECKING:
    import torchinfo


@dataclass
class LayerRow:
    """One module of the summary table: totals over its whole subtree."""

    name: str
    type: str
    depth: int
    output_shape: list[int]
    params: int
    mult_adds: int
    eca_k: list[int]


@dataclass
class SummaryReport:
    """What `ecacli summary` shows, in plain data (its JSON form is `to_dict`)."""

    spec: str
    input_size: list[int]
    total_params: int
    trainable_params: int
    mult_adds: int
    param_bytes: int
    activation_bytes: int
    input_bytes: int
    attention_type: str
    attention_params: int
    eca_params: int
    eca_param_share: float
    eca_kernel_sizes: list[int]
    layers: list[LayerRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(spec: NetworkSpec, batch: int = 1, input_size: int | None = None, depth: int = 3) -> SummaryReport:
    """Summary statistics, with one row per module down to `depth` levels below the model: counted without torch for ecacli's families, by torchinfo on the meta device for base specs."""
    if spec.family is None:
        return summarize_built(spec, batch, input_size, depth)
    model = model_layers(spec, batch, input_size)
    rows = [
        LayerRow(layer.name, layer.type, d, layer.output_shape, layer.total_params, layer.total_macs, layer.eca_kernels)
        for d, layer in model.walk()
        if 1 <= d <= depth
    ]
    total = model.total_params
    attention_params = model.attention_params
    eca_params = attention_params if spec.group_kernel_sizes else 0
    shape = spec.input_shape(batch, input_size)
    return SummaryReport(
        spec=spec.name,
        input_size=shape,
        total_params=total,
        trainable_params=total,
        mult_adds=model.total_macs,
        param_bytes=total * FLOAT32_BYTES,
        activation_bytes=model.activation_bytes,
        input_bytes=math.prod(shape) * FLOAT32_BYTES,
        attention_type=spec.attention.type,
        attention_params=attention_params,
        eca_params=eca_params,
        eca_param_share=eca_params / total,
        eca_kernel_sizes=spec.block_kernel_sizes or [],
        layers=rows,
    )


def summarize_built(spec: NetworkSpec, batch: int = 1, input_size: int | None = None, depth: int = 3) -> SummaryReport:
    """Summary statistics of the built model, read off torchinfo's own statistics on the meta device (rows total their subtrees, as `summarize`'s do)."""
    from ecacli.checkpoints.infer import is_attention_module

    stats = run_torchinfo(spec, batch, input_size, depth=max(depth, 1))
    model = stats.summary_list[0].module
    names = {id(module): name for name, module in model.named_modules()}
    leaf_macs: dict[str, int] = {}
    for layer in stats.summary_list:
        if layer.is_leaf_layer:  # as torchinfo totals them
            name = names.get(id(layer.module), "")
            leaf_macs[name] = leaf_macs.get(name, 0) + layer.macs
    attention = [(name, module) for name, module in model.named_modules() if is_attention_module(module)]

    def within(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    rows, seen = [], set()
    for layer in stats.summary_list[1:]:
        name = names.get(id(layer.module))
        if name is None or name in seen or not 1 <= name.count(".") + 1 <= depth:
            continue
        seen.add(name)
        rows.append(
            LayerRow(
                name, layer.class_name, name.count(".") + 1, list(layer.output_size), sum(p.numel() for p in layer.module.parameters()),
                sum(macs for inner, macs in leaf_macs.items() if within(inner, name)),
                [m.kernel_size for inner, m in attention if within(inner, name) and hasattr(m, "kernel_size")],
            )
        )
    attention_params = sum(p.numel() for _, module in attention for p in module.parameters())
    kernels = [module.kernel_size for _, module in attention if hasattr(module, "kernel_size")]
    eca_params = attention_params if kernels else 0
    return SummaryReport(
        spec=spec.name,
        input_size=spec.input_shape(batch, input_size),
        total_params=stats.total_params,
        trainable_params=stats.trainable_params,
        mult_adds=stats.total_mult_adds,
        param_bytes=stats.total_param_bytes,
        activation_bytes=stats.total_output_bytes,
        input_bytes=math.prod(spec.input_shape(batch, input_size)) * FLOAT32_BYTES,
        attention_type=spec.attention.type,
        attention_params=attention_params,
        eca_params=eca_params,
        eca_param_share=eca_params / stats.total_params if stats.total_params else 0.0,
        eca_kernel_sizes=kernels,
        layers=rows,
    )


@dataclass
class FeatureRow:
    """One level a feature extractor returns (`build_model(spec, features_only=True)`): its index, module, channels, stride and output shape."""

    index: int
    module: str
    channels: int
    stride: int
    output_shape: list[int]


def feature_rows(spec: NetworkSpec, batch: int = 1, input_size: int | None = None) -> list[FeatureRow]:
    """Every feature level of the spec's model, with its output shape at the input size (torch-free)."""
    if spec.family is None:
        raise OptionError(f"spec '{spec.name}' names a base model ({spec.base}): feature levels are described for ecacli's own families ({', '.join(FAMILIES)}).")  # type: ignore[attr-defined]
    model = model_layers(spec, batch, input_size)
    shapes = {layer.name: layer.output_shape for _, layer in model.walk()}
    return [FeatureRow(i, level.module, level.channels, level.reduction, shapes[level.module]) for i, level in enumerate(feature_levels(spec))]


def run_torchinfo(spec: NetworkSpec, batch: int = 1, input_size: int | None = None, depth: int = 3, **kwargs: Any) -> torchinfo.ModelStatistics:
    """torchinfo's own statistics for the spec's model, traced on the meta device: the model and its
    input are meta tensors (torchinfo's `input_size` would allocate a real input first), so no
    weight, input or activation takes memory at any batch or input size.
    """
    import torch
    import torchinfo

    from ecacli.models import build_model

    with torch.device("meta"):
        model = build_model(spec)
        inputs = torch.empty(spec.input_shape(batch, input_size))
    return torchinfo.summary(model, input_data=[inputs], device="meta", depth=depth, verbose=0, **kwargs)


def torchinfo_table(spec: NetworkSpec, batch: int = 1, input_size: int | None = None, depth: int = 3) -> str:
    """torchinfo's own text table (the format the write-up shows)."""
    stats = run_torchinfo(spec, batch, input_size, depth, col_names=("input_size", "output_size", "num_params", "mult_adds"))
    return str(stats)
