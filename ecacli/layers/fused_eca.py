"""A block's whole tail, BatchNorm -> ECA gate -> + shortcut -> ReLU, as one autograd Function.

Written naively (`bn(z) * gate + identity`, then ReLU) the tail keeps the BN output alive for
the backward pass of the gating multiply and spends several extra passes over the block's
largest tensor. Here the forward runs BatchNorm's own kernel, reads z once more for the
per-plane means, and gates, adds and rectifies in one pass plus an in-place ReLU; the BN
output is freed at once. It saves only what the plain ResNet tail saves anyway (the BN input
and the block output) plus per-sample gates and per-channel statistics. The backward
rebuilds what it needs from them:

- grad of the ReLU (this is also the shortcut's gradient) -> one pass;
- per-sample, per-channel sums of that gradient and of it times the normalised input -> one
  read-only pass; they give the gate's gradient and, summed over the batch, BatchNorm's;
- the input's gradient, with the gate's route back through the pooled mean folded in -> one
  product and two in-place updates.

The 1-D conv of the gate is still `conv` called as a module, so its hooks fire."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def batch_norm_factor(bn: nn.BatchNorm2d) -> tuple[bool, float]:
    """(normalise with batch statistics?, running-average factor), advancing `num_batches_tracked` as BatchNorm does."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    return use_batch_stats, factor


def sample_channel_sums(grad: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (sample, channel): sum over H, W of `grad` and of `grad * (z - mean) * invstd`, in one read pass.

    BatchNorm's backward reduction computes exactly these two sums per channel. Viewing each
    (sample, channel) plane of an NCHW tensor as a channel of its own makes one call produce
    them per plane; a channels_last tensor has no such view, so it takes one call per sample
    (still far cheaper than a product and two strided reductions).
    """
    n, c, h, w = z.shape
    mask = [False, True, True]
    if z.is_contiguous() and grad.is_contiguous():
        planes = (1, n * c, h, w)
        _, dot, total = torch.ops.aten.native_batch_norm_backward(
            grad.view(planes), z.view(planes), None, None, None, mean.repeat(n), invstd.repeat(n), True, 0.0, mask
        )
        return total.view(n, c), dot.view(n, c)
    sums = [torch.ops.aten.native_batch_norm_backward(grad[i : i + 1], z[i : i + 1], None, None, None, mean, invstd, True, 0.0, mask) for i in range(n)]
    return torch.stack([s[2] for s in sums]), torch.stack([s[1] for s in sums])


def channel_windows(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """[N, 1, C] -> [N, 1, C, k]: the k inputs each output position of the gate's conv sees, padded as the conv pads."""
    pad = conv.padding[0]
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, (pad, pad), mode=mode).unfold(-1, conv.kernel_size[0], 1)


def channel_correlation(pooled: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """conv(pooled[:, None, :])[:, 0, :] for the gate's 1-input, 1-output, bias-free conv, as plain tensor ops."""
    return channel_windows(pooled[:, None, :], conv)[:, 0] @ conv.weight.view(-1)


def conv1d_backward(conv: nn.Conv1d, pooled: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the gate's 1-D conv (zero or circular padding) w.r.t. its input [N, 1, C] and weight [1, 1, k].

    Written with a few small tensor ops rather than a convolution backward: on CPU the library
    convolution spends far longer setting up than these few hundred multiply-adds take. The
    input's gradient is the same padded correlation with the kernel flipped.
    """
    windows = channel_windows(pooled, conv)  # [N, 1, C, k]: the inputs each output saw
    grad_weight = (windows * grad[..., None]).sum(dim=(0, 2)).view_as(weight)
    grad_in = (channel_windows(grad, conv) * weight.view(-1).flip(0)).sum(-1)
    return grad_in, grad_weight


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half-precision activations, else their own dtype."""
    return torch.promote_types(t.dtype, torch.float32)


def _plane(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, C] or [C] coefficients as a broadcastable [N|1, C, 1, 1] tensor of the activation dtype."""
    return (t if t.dim() == 2 else t[None]).to(dtype)[:, :, None, None]


class GatedResidual(torch.autograd.Function):
    """relu(bn(z) * sigmoid(conv(mean_hw(bn(z)))) + identity), saving z, the output and the gates."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        z: torch.Tensor,
        identity: torch.Tensor,
        bn_weight: torch.Tensor,
        bn_bias: torch.Tensor,
        conv_weight: torch.Tensor,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        use_batch_stats: bool,
        momentum: float,
        eps: float,
        conv: nn.Conv1d,
    ) -> torch.Tensor:
        y, mean, invstd = torch.native_batch_norm(z, bn_weight, bn_bias, running_mean, running_var, use_batch_stats, momentum, eps)
        if not use_batch_stats:
            mean, invstd = running_mean.clone(), torch.rsqrt(running_var + eps)  # type: ignore[union-attr, operator]
        # The pooled BN output, bn(z) averaged over H, W, is the affine image of the normalised plane means.
        centred_mean = (z.mean(dim=(2, 3), dtype=accumulation_dtype(z)) - mean) * invstd
        pooled = (centred_mean * bn_weight + bn_bias)[:, None, :]
        logits = conv(pooled)
        gate = torch.sigmoid(logits)[:, 0, :]
        out = torch.addcmul(identity, y, gate.to(y.dtype)[:, :, None, None]).relu_()
        ctx.save_for_backward(z, out, gate, pooled.to(logits.dtype), centred_mean, mean, invstd, bn_weight, bn_bias, conv_weight)
        ctx.use_batch_stats = use_batch_stats
        ctx.conv = conv
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        z, out, gate, pooled, centred_mean, mean, invstd, bn_weight, bn_bias, conv_weight = ctx.saved_tensors
        n, _, h, w = z.shape
        area = h * w
        grad_sum = torch.ops.aten.threshold_backward(grad_out, out, 0)  # d(out)/d(sum before the ReLU) = d identity
        plane_sum, plane_dot = sample_channel_sums(grad_sum, z, mean, invstd)
        gate_acc = gate.to(plane_sum.dtype)
        # bn(z) = bn_weight * xhat + bn_bias, so sum_hw(grad * bn(z)) = bn_weight * plane_dot + bn_bias * plane_sum.
        grad_gate = bn_weight * plane_dot + bn_bias * plane_sum
        grad_logits = (grad_gate * gate_acc * (1 - gate_acc))[:, None, :].to(pooled.dtype)
        grad_pooled, grad_conv_weight = conv1d_backward(ctx.conv, pooled, conv_weight.to(pooled.dtype), grad_logits)
        grad_pooled = grad_pooled[:, 0, :].to(plane_sum.dtype)
        # d(loss)/d(bn output) = grad_sum * gate + grad_pooled / area (the pooled mean's share), per plane.
        grad_bias = (gate_acc * plane_sum + grad_pooled).sum(0)
        grad_weight = (gate_acc * plane_dot + grad_pooled * centred_mean).sum(0)
        scale = bn_weight * invstd
        grad_scale = scale * gate_acc
        if ctx.use_batch_stats:
            count = n * area
            slope = -scale * invstd * grad_weight / count
            offset = scale * (grad_pooled / area - grad_bias / count) - slope * mean
            # Three ops, each with the small operand second: addcmul with a broadcast first operand is far slower on CPU.
            grad_z = torch.mul(grad_sum, _plane(grad_scale, z.dtype))
            grad_z.addcmul_(z, _plane(slope, z.dtype)).add_(_plane(offset, z.dtype))
        else:
            grad_z = torch.mul(grad_sum, _plane(grad_scale, z.dtype)).add_(_plane(scale * grad_pooled / area, z.dtype))
        return grad_z, grad_sum, grad_weight, grad_bias, grad_conv_weight.to(conv_weight.dtype), None, None, None, None, None, None


def gated_residual(bn: nn.BatchNorm2d, conv: nn.Conv1d, z: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """relu(eca(bn(z)) + identity) with BatchNorm's running statistics updated as `bn(z)` would."""
    if bn.training and z.numel() // z.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(z.shape)}")
    use_batch_stats, factor = batch_norm_factor(bn)
    tracked = not bn.training or bn.track_running_stats
    running_mean = bn.running_mean if tracked else None
    running_var = bn.running_var if tracked else None
    return GatedResidual.apply(z, identity, bn.weight, bn.bias, conv.weight, running_mean, running_var, use_batch_stats, factor, bn.eps, conv)
