"""The ECA gate's k-tap convolution across channels, in the form each context runs fastest.

The conv is tiny (one input and one output channel, k taps, a few thousand multiply-adds per
block), so what it costs is per-call overhead: eagerly on CPU it runs as the direct convolution
(im2col + GEMM, `thnn_conv2d` and its backward), whose setup is lighter than the library
conv1d's (the benchmark notes in the README give the A/B); under torch.compile it is plain
tensor ops the compiler fuses; wherever a graph is recorded, the library conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channel_windows(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """[N, 1, C] -> [N, 1, C, k]: the k inputs each output position of the gate's conv sees, padded as the conv pads."""
    pad = conv.padding[0]
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, (pad, pad), mode=mode).unfold(-1, conv.kernel_size[0], 1)


def graph_recorded(x: torch.Tensor) -> bool:
    """Whether `x` flows through a graph being recorded (torch.jit.trace, FX symbolic tracing, ONNX export, torch.export), which must hold library calls only."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch < 2.7 has none; its torch.export counts as compiling
    return torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy) or torch.onnx.is_in_onnx_export() or exporting()


def channel_correlation(pooled: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """conv(pooled[:, None, :])[:, 0, :] for the gate's 1-input, 1-output, bias-free conv, as plain tensor ops."""
    return channel_windows(pooled[:, None, :], conv)[:, 0] @ conv.weight.view(-1)


def _direct_operands(x: torch.Tensor, conv: nn.Conv1d) -> tuple[torch.Tensor, int]:
    """The input as a [N, 1, 1, C'] image and the conv padding to use: circular padding is applied here, zeros by the conv."""
    pad = conv.padding[0]
    if conv.padding_mode == "circular" and pad:
        return F.pad(x, (pad, pad), mode="circular").unsqueeze(2), 0
    return x.unsqueeze(2), pad


def direct_conv1d(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """conv(x) for a [N, 1, C] CPU input through the direct convolution, with autograd."""
    image, pad = _direct_operands(x, conv)
    return torch.ops.aten.thnn_conv2d(image, conv.weight.to(x.dtype).unsqueeze(2), [1, conv.kernel_size[0]], None, [1, 1], [0, pad]).squeeze(2)


def conv1d_backward(conv: nn.Conv1d, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the gate's conv w.r.t. its input [N, 1, C] and weight [1, 1, k], given the output's gradient.

    CPU: the direct convolution's backward; other devices: the library's. Circular padding's
    gradient is folded back from the padded margins onto the channels they copied.
    """
    k = weight.shape[-1]
    image, pad = _direct_operands(x, conv)
    if x.device.type == "cpu":
        grad_image, grad_weight, _ = torch.ops.aten._slow_conv2d_backward.output_mask(
            grad.unsqueeze(2), image, weight.unsqueeze(2), [1, k], [1, 1], [0, pad], [True, True, False]
        )
    else:
        grad_image, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad.unsqueeze(2), image, weight.unsqueeze(2), None, [1, 1], [0, pad], [1, 1], False, [0, 0], 1, [True, True, False]
        )
    grad_x = grad_image.squeeze(2)
    margin = conv.padding[0]
    if conv.padding_mode == "circular" and margin:
        wrapped = grad_x[..., margin:-margin].clone()
        wrapped[..., -margin:] += grad_x[..., :margin]
        wrapped[..., :margin] += grad_x[..., -margin:]
        grad_x = wrapped
    return grad_x, grad_weight.squeeze(2)


class ChannelConv(nn.Conv1d):
    """nn.Conv1d(1, 1, k, bias=False) across channels (zero or circular padding) that runs cheaply in every context.

    Same parameter, name and shape as the library module ([1, 1, k], as in the paper's
    checkpoints), called as a module so hooks see it; only the kernel that computes it differs.
    Scripted, traced, FX-traced or exported, it is the library conv (what the graph records).
    """

    def __init__(self, kernel_size: int, padding_mode: str = "zeros") -> None:
        super().__init__(1, 1, kernel_size, padding=(kernel_size - 1) // 2, padding_mode=padding_mode, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            fast = self.fast_forward(x)
            if fast is not None:
                return fast
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def fast_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """The conv by a cheaper kernel where one applies: fusable tensor ops under torch.compile, the direct convolution on CPU; else None."""
        if graph_recorded(x):
            return None
        if torch.compiler.is_compiling():
            return channel_correlation(x[:, 0, :], self)[:, None, :]
        if x.device.type == "cpu":
            return direct_conv1d(x, self)
        return None
