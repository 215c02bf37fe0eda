"""The ECA module as the paper defines it: global average pool, k-tap 1-D conv across channels, sigmoid gate."""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn

from ecacli.layers.fused_eca import accumulation_dtype, channel_correlation, gated_residual

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

    def __init__(self, kernel_size: int, circular: bool = False, impl: EcaImpl = "fast") -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd and >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.circular = circular
        self.impl = impl
        padding_mode = "circular" if circular else "zeros"
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, padding_mode=padding_mode, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-channel gates of shape [N, C, 1, 1]."""
        # Accumulating in float32 explicitly gives the same mean for half-precision x, and on CPU
        # avoids a bfloat16 reduction kernel that is many times slower than the float32 one.
        pooled = x.mean(dim=(2, 3), dtype=accumulation_dtype(x)).to(x.dtype)
        if torch.compiler.is_compiling():
            # The same k-tap correlation as tensor ops the compiler fuses, instead of three
            # library convolution calls (forward, two backward) per block.
            logits = channel_correlation(pooled, self.conv)
        else:
            logits = self.conv(pooled.unsqueeze(1)).squeeze(1)
        return torch.sigmoid(logits)[:, :, None, None]

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

    def residual_tail(self, bn: nn.BatchNorm2d, z: torch.Tensor, shortcut: Callable[[], torch.Tensor], relu: nn.Module) -> torch.Tensor:
        """relu(self(bn(z)) + shortcut()), equal to the unfused tail.

        In eager mode with autograd on, one custom Function does it all and saves no BN output
        (see `fused_eca`; the gate's conv still runs as a module). Otherwise (inference,
        torchinfo, torch.compile, whose compiler fuses these few elementwise ops itself and
        recomputes rather than saves them) bn, this module, its conv, the shortcut and relu
        run as modules in the unfused order, the add folded into the gating pass.
        """
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return gated_residual(bn, self.conv, z, shortcut())
        return relu(self(bn(z), shortcut))

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}, circular={self.circular}, impl={self.impl}"
