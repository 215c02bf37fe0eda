"""The fused forms of a block's tail, BatchNorm -> ECA gate -> + shortcut -> ReLU (which one runs: `ecacli.layers.tail`).

- `gated_residual`, an autograd Function: BatchNorm's own kernel, one more read of its input for
  the per-plane means, then gate and shortcut added in place over the BN output (a temporary of
  this call, as torchvision's in-place `+= identity` treats it) and the ReLU in place. It saves
  what the plain tail saves (the BN input and the block output) plus per-sample gates and
  per-channel statistics; its backward rebuilds the rest: the ReLU's gradient (also the
  shortcut's) in one pass, per-sample, per-channel sums of it and of it times the normalised
  input in one read, and the input's gradient, the gate's route through the pooled mean folded
  in, as a per-plane affine map plus a per-channel multiple of z.
- `folded_residual`, inference: eval-mode BN is `scale * (z + bias)`, so the conv carries `bias`
  (`fold_terms`) and one pass applies `scale * gate` and adds the shortcut.
- `traced_residual`, torch.compile: plain tensor ops that take BN's statistics, the pooled means
  and the output all from z, for the compiler to fuse and differentiate without a BN output.

Under autocast the [N, C]-sized arithmetic (pooled means, the gate's conv, its gradient) runs in
float32 whatever the activations' dtype (a model cast to half precision keeps its own).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ecacli.layers.channel_conv import channel_correlation, conv1d_backward, gate_logits


def library_conv(module: nn.Module) -> bool:
    """Whether `module` is exactly nn.Conv2d with zero padding: what F.conv2d computes from its weight and bias (a subclass may do more, e.g. weight standardisation)."""
    return type(module) is nn.Conv2d and module.padding_mode == "zeros"


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half-precision activations, else their own dtype."""
    return torch.promote_types(t.dtype, torch.float32)


def plane_means(t: torch.Tensor) -> torch.Tensor:
    """Mean over H, W of each (sample, channel) plane, [N, C], as float32 for half-precision t.

    For bfloat16 the sum runs in t's dtype (accumulated in float32, rounded once; bfloat16 has
    float32's range): asking for a float32 result instead makes the CPU convert the whole
    tensor first, a copy several times dearer than the sum. A float16 sum can overflow (65504
    is a 56x56 plane of mean 21), so float16 takes the float32 mean.
    """
    if t.dtype == torch.float16:
        return t.mean(dim=(2, 3), dtype=torch.float32)
    return t.sum(dim=(2, 3)).to(accumulation_dtype(t)) / (t.shape[2] * t.shape[3])


def sample_channel_sums(grad: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (sample, channel): sum over H, W of `grad` and of `grad * (z - mean) * invstd`, in one read pass.

    BatchNorm's backward reduction computes exactly these two sums per channel. Viewing each
    (sample, channel) plane of an NCHW tensor as a channel of its own makes one call produce
    them per plane; a channels_last tensor has no such view, so it takes one call per sample
    (still one read, not a product and two strided reductions).
    """
    n, c, h, w = z.shape
    mask = [False, True, True]
    if z.is_contiguous() and grad.is_contiguous():
        if h * w < 256 and z.element_size() < 4 and z.device.type == "cpu":
            # The CPU's half-precision kernel has a fixed cost per plane: small planes go through float32 copies (see the benchmark notes).
            grad, z, mean, invstd = grad.float(), z.float(), mean.float(), invstd.float()
        planes = (1, n * c, h, w)
        _, dot, total = torch.ops.aten.native_batch_norm_backward(
            grad.view(planes), z.view(planes), None, None, None, mean.expand(n, c).reshape(-1), invstd.expand(n, c).reshape(-1), True, 0.0, mask
        )
        return total.view(n, c), dot.view(n, c)
    sums = [torch.ops.aten.native_batch_norm_backward(grad[i : i + 1], z[i : i + 1], None, None, None, mean, invstd, True, 0.0, mask) for i in range(n)]
    return torch.stack([s[2] for s in sums]), torch.stack([s[1] for s in sums])


def _plane(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, C] or [C] coefficients as a broadcastable [N|1, C, 1, 1] tensor of the activation dtype."""
    return (t if t.dim() == 2 else t[None]).to(dtype)[:, :, None, None]


def plane_affine(t: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """t * scale + shift with one coefficient pair per (sample, channel) plane ([N, C] each), in one pass over t.

    For NCHW, each plane is viewed as a channel of its own and run through eval-mode batch
    norm with unit statistics, whose kernel is exactly this map in one pass, rather than a
    broadcast multiply-add over small planes; other layouts take one broadcast addcmul.
    """
    n, c, h, w = t.shape
    if t.is_contiguous():
        unit = torch.ones(n * c, dtype=scale.dtype, device=scale.device)
        out = torch.native_batch_norm(t.view(1, n * c, h, w), scale.reshape(-1), shift.reshape(-1), unit.new_zeros(n * c), unit, False, 0.0, 0.0)[0]
        return out.view(n, c, h, w)
    return torch.addcmul(_plane(shift, t.dtype), t, _plane(scale, t.dtype))


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
        z_means: torch.Tensor,
    ) -> torch.Tensor:
        y, mean, invstd = torch.native_batch_norm(z, bn_weight, bn_bias, running_mean, running_var, use_batch_stats, momentum, eps)
        if not use_batch_stats:
            mean, invstd = running_mean.clone(), torch.rsqrt(running_var + eps)  # type: ignore[union-attr, operator]
        # The pooled BN output, bn(z) averaged over H, W, is the affine image of the normalised plane means.
        centred_mean = (z_means - mean) * invstd
        pooled = torch.addcmul(bn_bias, centred_mean, bn_weight)[:, None, :]
        gate = torch.sigmoid(gate_logits(conv, pooled))[:, 0, :]
        out = torch.addcmul(identity, y, _plane(gate, y.dtype), out=y).relu_()
        ctx.save_for_backward(z, out, gate, pooled, centred_mean, mean, invstd, bn_weight, bn_bias, conv_weight)
        ctx.use_batch_stats = use_batch_stats
        ctx.conv = conv
        ctx.running_stats = (running_mean, running_var)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():  # autograd runs backward with grad mode on only for create_graph=True
            return differentiable_backward(ctx, grad_out)
        z, out, gate, pooled, centred_mean, mean, invstd, bn_weight, bn_bias, conv_weight = ctx.saved_tensors
        n, _, h, w = z.shape
        area = h * w
        grad_sum = torch.ops.aten.threshold_backward(grad_out, out, 0)  # d(out)/d(sum before the ReLU) = d identity
        plane_sum, plane_dot = sample_channel_sums(grad_sum, z, mean, invstd)
        # bn(z) = bn_weight * xhat + bn_bias, so sum_hw(grad * bn(z)) = bn_weight * plane_dot + bn_bias * plane_sum.
        grad_gate = torch.addcmul(bn_bias * plane_sum, bn_weight, plane_dot)
        grad_logits = (grad_gate * gate * (1 - gate))[:, None, :]
        grad_pooled, grad_conv_weight = conv1d_backward(ctx.conv, pooled, conv_weight.to(pooled.dtype), grad_logits)
        grad_pooled = grad_pooled[:, 0, :]
        # d(loss)/d(bn output) = grad_sum * gate + grad_pooled / area (the pooled mean's share), per plane.
        grad_bias = torch.addcmul(grad_pooled, gate, plane_sum).sum(0)
        grad_weight = torch.addcmul(grad_pooled * centred_mean, gate, plane_dot).sum(0)
        scale = bn_weight * invstd
        grad_scale = scale * gate
        if ctx.use_batch_stats:
            count = n * area
            slope = scale * invstd * grad_weight / -count
            offset = scale * (grad_pooled / area - grad_bias / count) - slope * mean
            grad_z = plane_affine(grad_sum, grad_scale, offset).addcmul_(z, _plane(slope, z.dtype))
        else:
            grad_z = plane_affine(grad_sum, grad_scale, scale * grad_pooled / area)
        return grad_z, grad_sum, grad_weight, grad_bias, grad_conv_weight.to(conv_weight.dtype), None, None, None, None, None, None, None


def differentiable_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """`GatedResidual`'s gradients as a graph (create_graph=True): the tail's gated BN output recomputed from the saved inputs with the module path's ops, then differentiated.

    The ReLU's mask is constant almost everywhere, so the gradients flow through the gated BN
    output `bn(z) * gate` alone; the shortcut's gradient is the masked output gradient.
    """
    z, out, _, _, _, _, _, bn_weight, bn_bias, conv_weight = ctx.saved_tensors
    grad_sum = grad_out * (out > 0)
    needed = [t for t, wanted in zip((z, bn_weight, bn_bias, conv_weight), (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:5])) if wanted]
    grads = iter(())
    if needed:
        running_mean, running_var = ctx.running_stats
        stats = (None, None) if ctx.use_batch_stats else (running_mean, running_var)
        y = torch.nn.functional.batch_norm(z, *stats, bn_weight, bn_bias, ctx.use_batch_stats, 0.0, ctx.eps)
        gate = torch.sigmoid(gate_logits(ctx.conv, y.mean(dim=(2, 3))[:, None, :], conv_weight))[:, 0, :]
        grads = iter(torch.autograd.grad(y * gate[:, :, None, None], needed, grad_sum, create_graph=True, allow_unused=True))
    grad_z, grad_weight, grad_bias, grad_conv_weight = (next(grads) if wanted else None for wanted in (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:5]))
    return grad_z, grad_sum, grad_weight, grad_bias, grad_conv_weight, None, None, None, None, None, None, None


def batch_norm_state(bn: nn.BatchNorm2d, z: torch.Tensor) -> tuple[bool, float, torch.Tensor | None, torch.Tensor | None]:
    """What `bn(z)` would use: (batch statistics?, running-average factor, running mean and variance to read or update, or None).

    Refuses one value per channel in training as BatchNorm does, and advances `num_batches_tracked`.
    """
    if bn.training and z.numel() // z.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(z.shape)}")
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    tracked = not bn.training or bn.track_running_stats
    return use_batch_stats, factor, bn.running_mean if tracked else None, bn.running_var if tracked else None


def gated_residual(bn: nn.BatchNorm2d, conv: nn.Conv1d, z: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """relu(eca(bn(z)) + identity) with BatchNorm's running statistics updated as `bn(z)` would."""
    use_batch_stats, factor, running_mean, running_var = batch_norm_state(bn, z)
    means = plane_means(z.detach())
    return GatedResidual.apply(z, identity, bn.weight, bn.bias, conv.weight, running_mean, running_var, use_batch_stats, factor, bn.eps, conv, means)


def traced_residual(bn: nn.BatchNorm2d, conv: nn.Conv1d, z: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """relu(eca(bn(z)) + identity) as plain tensor ops, for torch.compile to fuse and differentiate.

    BatchNorm's statistics, the pooled BN output (the affine image of z's plane means) and the
    gated output all come from z, computed in float32 or wider: the compiler neither stores nor
    saves a BN output, where the module-by-module tail makes it materialise `bn(z)` for its two
    readers, the pooling and the gating. The running statistics are updated as BatchNorm updates
    them (unbiased variance).
    """
    use_batch_stats, factor, running_mean, running_var = batch_norm_state(bn, z)
    wide = z.to(accumulation_dtype(z))
    if use_batch_stats:
        var, mean = torch.var_mean(wide, dim=(0, 2, 3), correction=0)
        if bn.training and running_mean is not None and running_var is not None:
            count = z.numel() // z.shape[1]
            with torch.no_grad():
                running_mean.lerp_(mean.to(running_mean.dtype), factor)
                running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), factor)
    else:
        mean, var = running_mean, running_var
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    shift = bn.bias - mean * scale
    with torch.autocast(z.device.type, enabled=False):  # the [N, C] gate in float32, as the fused tail computes it
        gate = torch.sigmoid(channel_correlation(wide.mean(dim=(2, 3)) * scale + shift, conv))
    out = wide * (scale * gate)[:, :, None, None] + (shift * gate)[:, :, None, None] + identity
    return out.to(z.dtype).relu_()


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """The dtype a conv of u computes in: autocast's where it is on for u's device, else u's own."""
    device = u.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else u.dtype


def gate_times_scale(gate_conv: nn.Conv1d, means: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * sigmoid(gate_conv(scale * means)): the ECA gate of an eval-mode BN output `scale * (z + bias)`, whose plane means `means` are, times BN's scale."""
    return torch.sigmoid(gate_logits(gate_conv, (means * scale)[:, None, :]))[:, 0, :] * scale


def fold_terms(norm: nn.BatchNorm2d, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, bias) of eval-mode BatchNorm written as `scale * (z + bias)`, for a conv of u to carry `bias`; None where there is no such form.

    A BatchNorm without running statistics (which normalises by the batch's) has none, and
    float16's range (65504) leaves a conv output no room for the shift it would carry. A scale
    too small to divide BN's shift by (a zero-scale channel, pruned or zero-initialised) is raised
    to the smallest that keeps `bias` under 2**-64 of the dtype's range (room for the conv's
    values and their plane sums): the channel's output stays BN's shift, plus the conv's output
    times that floor (under 1e-19 of the shift per unit of conv output in float32).
    Decided from dtypes alone: nothing here waits on the tensors' values.
    """
    dtype = compute_dtype(u)
    if norm.running_var is None or norm.running_mean is None or torch.finfo(dtype).max < torch.finfo(torch.float32).max / 2:
        return None
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)  # type: ignore[operator]
    floor = (norm.bias.abs() * (2.0**64 / torch.finfo(dtype).max)).clamp_min(torch.finfo(scale.dtype).tiny)
    scale = torch.where(scale.abs() < floor, floor, scale)
    return scale, norm.bias / scale - norm.running_mean  # type: ignore[operator]


def folded_bias(conv: nn.Conv2d, bias: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The bias the block's last conv runs with in the fold: BatchNorm's (from `fold_terms`) plus the conv's own, in the conv's dtype."""
    if conv.bias is not None:
        bias = bias + conv.bias
    if not torch.is_autocast_enabled(u.device.type):
        bias = bias.to(conv.weight.dtype)  # a BN kept in float32 beside half-precision convs
    return bias


def folded_residual(z: torch.Tensor, scale: torch.Tensor, gate_conv: nn.Conv1d, identity: torch.Tensor) -> torch.Tensor:
    """relu(eca(bn(conv(u))) + identity) for an eval-mode BN, given z = conv(u) + bias with (scale, bias) from `fold_terms`.

    The gating multiply applies `scale * gate` and adds the shortcut in one pass, then the ReLU:
    two passes where BN, the add and the ReLU take three. The pooled BN output is `scale` times
    z's plane means. Rounding: z carries BN's shift as the BN output does, so its error, scaled
    back by `scale`, is the BN output's own.
    """
    scaled_gate = gate_times_scale(gate_conv, plane_means(z), scale)
    return torch.addcmul(identity, z, _plane(scaled_gate, z.dtype), out=z).relu_()
