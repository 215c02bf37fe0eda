"""`ecacli summary` data: layer rows and totals of a spec's model, without importing torch.

Numbers come from `ecacli.arch` (pure Python, equal to torchinfo's by test); only the
`--torchinfo` table runs torchinfo itself, on the meta device so no weight or activation exists.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ecacli.arch import FLOAT32_BYTES, feature_levels, model_layers
from ecacli.spec import NetworkSpec

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
    """Summary statistics, with one row per module down to `depth` levels below the model."""
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
