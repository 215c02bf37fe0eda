"""The ECA module as the paper defines it: global average pool, k-tap 1-D conv across channels, sigmoid gate."""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn

from ecacli.layers.channel_conv import ChannelConv
from ecacli.layers.fused_eca import folded_residual, gated_residual, library_conv, observed, plane_means, pointwise_conv_means, traced_residual

EcaImpl = Literal["fast", "reference"]


class EcaModule(nn.Module):
    """Scales each channel of x by sigmoid(conv1d_k(mean over H, W of x)), with no bias.

    The conv slides over the channel axis with zero padding (k - 1) / 2, so each gate sees
    its k nearest channels (with `circular`, CECA: padding wraps around, so the first and last
    channels are neighbours); its weight is named `conv.weight` with shape [1, 1, k] as in the
    paper's released checkpoints.

    `impl` only changes how a residual block uses the module, never its parameters or names:
    "reference" gates the BN output as written above and leaves the add and ReLU to the block;
    "fast" offers `residual_tail`, the block's BN -> gate -> add -> ReLU in one fused step.
    """

    fold_min_elements = 1 << 18
    """Block outputs smaller than this take the module-by-module tail in inference: below it the fold's
    extra [N, C] operations cost more than the pass it saves (measured here: batch 2 at 32-64 px,
    3-6% faster end to end; batch 8 at 160 px, where every block output is larger, unchanged)."""

    def __init__(self, kernel_size: int, circular: bool = False, impl: EcaImpl = "fast") -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd and >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.circular = circular
        self.impl = impl
        self.conv = ChannelConv(kernel_size, padding_mode="circular" if circular else "zeros")

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-channel gates of shape [N, C, 1, 1] in x's dtype (computed in float32 for half-precision x)."""
        logits = self.conv(plane_means(x)[:, None, :])
        return torch.sigmoid(logits)[:, 0, :, None, None].to(x.dtype)

    def forward(self, x: torch.Tensor, shortcut: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """x * gate(x); given a block's `shortcut`, x * gate(x) + shortcut() in one pass."""
        gate = self.gate(x)
        if shortcut is None:
            return x * gate
        return torch.addcmul(shortcut(), x, gate)

    @property
    def fuses_residual(self) -> bool:
        """Whether a block should hand its tail to `residual_tail` instead of calling this module."""
        return self.impl == "fast"

    def residual_tail(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d,
        u: torch.Tensor,
        shortcut: Callable[[], torch.Tensor],
        relu: nn.Module,
    ) -> torch.Tensor:
        """relu(self(bn(conv(u))) + shortcut()), equal to the unfused tail.

        With autograd on (or BN in training mode), one custom Function does BN, gate, add and
        ReLU and saves no BN output; in eval mode on CPU without autograd, BN's shift rides in
        the conv's bias and its scale in the gating pass (see `fused_eca`). A bottleneck's
        pooled means come from conv's input where that is cheaper. Under torch.compile the tail
        is plain tensor ops that take everything from the conv's output, for the compiler to
        fuse (`traced_residual`). While hooks watch this module, its conv or `bn` (torchinfo,
        profilers, feature extractors), for a BN without affine parameters, and in inference for
        block outputs under `fold_min_elements`, the modules run in the unfused order, the add
        folded into the gating pass.
        """
        compiling = torch.compiler.is_compiling()
        inference = not (torch.is_grad_enabled() or bn.training or bn.running_mean is None)
        small = inference and u.numel() // u.shape[1] * conv.out_channels < self.fold_min_elements  # the block's output: its last conv keeps H, W
        if not bn.affine or any(observed(m) for m in (self, self.conv, bn)) or (small and not compiling):
            return relu(self(bn(conv(u)), shortcut))
        if compiling:
            return traced_residual(bn, self.conv, conv(u), shortcut())
        if inference and u.device.type == "cpu" and library_conv(conv) and not observed(conv):
            out = folded_residual(conv, bn, self.conv, u, shortcut)
            if out is not None:
                return out
        means = pointwise_conv_means(u, conv)  # before the conv runs, while u is still in cache
        return gated_residual(bn, self.conv, conv(u), shortcut(), means)

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}, circular={self.circular}, impl={self.impl}"
