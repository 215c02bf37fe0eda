"""Layer-by-layer statistics of a spec's model, computed by torchinfo on the meta device.

The model is built on `torch.device("meta")`, so shapes, parameter counts and mult-adds come
from torchinfo's own hooks without allocating a single weight or activation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchinfo
from torch import nn

from ecacli.errors import UserError
from ecacli.layers import EcaModule
from ecacli.models import build_model
from ecacli.spec import ResNetSpec


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
    """What `ecacli summary` shows, in plain data (its JSON form is `asdict`)."""

    spec: str
    input_size: list[int]
    total_params: int
    trainable_params: int
    mult_adds: int
    param_bytes: int
    activation_bytes: int
    input_bytes: int
    eca_params: int
    eca_param_share: float
    eca_kernel_sizes: list[int]
    layers: list[LayerRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def input_shape(spec: ResNetSpec, batch: int = 1, input_size: int | None = None) -> tuple[int, int, int, int]:
    side = input_size or spec.input_size
    return (batch, spec.in_chans, side, side)


def meta_model(spec: ResNetSpec) -> nn.Module:
    """The spec's model with meta tensors: every shape, no storage."""
    with torch.device("meta"):
        return build_model(spec)


def run_torchinfo(spec: ResNetSpec, batch: int = 1, input_size: int | None = None, depth: int = 3, **kwargs: Any) -> torchinfo.ModelStatistics:
    """torchinfo's statistics for the spec's model, traced on the meta device."""
    model = meta_model(spec)
    shape = input_shape(spec, batch, input_size)
    try:
        return torchinfo.summary(model, input_size=shape, device="meta", depth=depth, verbose=0, **kwargs)
    except RuntimeError as exc:
        raise UserError(f"spec '{spec.name}': the network cannot take input {list(shape)}: {exc}".split("\n")[0]) from None


def _eca_kernels(module: nn.Module) -> list[int]:
    return sorted({m.kernel_size for m in module.modules() if isinstance(m, EcaModule)})


def summarize(spec: ResNetSpec, batch: int = 1, input_size: int | None = None, depth: int = 3) -> SummaryReport:
    """Summary statistics and rows down to `depth` levels below the model.

    A row's mult-adds sum the leaf layers of its subtree, as torchinfo's total does.
    """
    stats = run_torchinfo(spec, batch, input_size, depth)
    model = stats.summary_list[0].module
    names = {id(m): name for name, m in model.named_modules()}
    layers = stats.summary_list
    rows = []
    for index, info in enumerate(layers):
        if info.depth == 0 or info.depth > depth:
            continue
        subtree_macs = info.macs if info.is_leaf_layer else 0
        for child in layers[index + 1 :]:
            if child.depth <= info.depth:
                break
            subtree_macs += child.macs if child.is_leaf_layer else 0
        rows.append(
            LayerRow(
                name=names.get(id(info.module), info.var_name),
                type=info.class_name,
                depth=info.depth,
                output_shape=list(info.output_size),
                params=info.num_params,
                mult_adds=subtree_macs,
                eca_k=_eca_kernels(info.module),
            )
        )
    eca_params = sum(p.numel() for m in model.modules() if isinstance(m, EcaModule) for p in m.parameters())
    return SummaryReport(
        spec=spec.name,
        input_size=list(input_shape(spec, batch, input_size)),
        total_params=stats.total_params,
        trainable_params=stats.trainable_params,
        mult_adds=stats.total_mult_adds,
        param_bytes=stats.total_param_bytes,
        activation_bytes=stats.total_output_bytes,
        input_bytes=stats.total_input,
        eca_params=eca_params,
        eca_param_share=eca_params / stats.total_params if stats.total_params else 0.0,
        eca_kernel_sizes=spec.block_kernel_sizes or [],
        layers=rows,
    )


def torchinfo_table(spec: ResNetSpec, batch: int = 1, input_size: int | None = None, depth: int = 3) -> str:
    """torchinfo's own text table (the format the write-up shows), traced on the meta device."""
    stats = run_torchinfo(spec, batch, input_size, depth, col_names=("input_size", "output_size", "num_params", "mult_adds"))
    return str(stats)
