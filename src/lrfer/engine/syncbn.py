"""Synchronised BatchNorm without host waits: one all-reduce of per-channel sums forward, one backward.

PyTorch's ``nn.SyncBatchNorm`` all-gathers every rank's mean, variance and count and drops empty ranks
with a boolean mask (``count_all[mask]``): a data-dependent shape, so the host waits for the GPU at every
BN layer, about 20 times per ResNet-18 step. :class:`SumSyncBatchNorm` computes the same statistics from
one fixed-size all-reduce of ``[sum, sum of squares, count]`` per channel (shifted by the running mean for
accuracy), and its backward all-reduces ``[sum dy, sum dy * (x - mean)]``, as torch's does. Nothing is read
on the host, so it works under gloo (the CPU) too. It holds the same parameters and buffers as the
BatchNorm it replaces, so checkpoints and optimisers do not change.

Statistics and gradients follow Ioffe & Szegedy, "Batch Normalization", ICML 2015 (arXiv:1502.03167),
eq. of Algorithm 1 and its back-propagation, with the batch being every rank's share together.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn


def _all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    if tdist.is_available() and tdist.is_initialized():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM, group=group)
    return t


def _shape(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """The reduction dimensions (all but channels) and the broadcast shape of a per-channel vector."""
    dims = [0, *range(2, x.dim())]
    view = [1, x.shape[1]] + [1] * (x.dim() - 2)
    return dims, view


class _SumSyncBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shift, eps, group):
        dims, view = _shape(x)
        xs = x.float() - shift.view(view)
        count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=torch.float32, device=x.device)
        stats = _all_reduce_sum(torch.cat([xs.sum(dims), (xs * xs).sum(dims), count]), group)
        c = x.shape[1]
        total = stats[2 * c]
        mean_shifted = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean_shifted * mean_shifted).clamp_min(0)
        mean = mean_shifted + shift
        invstd = torch.rsqrt(var + eps)
        xhat = (x.float() - mean.view(view)) * invstd.view(view)
        y = xhat
        if weight is not None:
            y = y * weight.float().view(view) + bias.float().view(view)
        ctx.save_for_backward(xhat, weight, invstd, total)
        ctx.group, ctx.x_dtype = group, x.dtype
        ctx.mark_non_differentiable(mean, var, total)
        return y.to(x.dtype), mean, var, total

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dtotal):
        xhat, weight, invstd, total = ctx.saved_tensors
        dims, view = _shape(dy)
        dy = dy.float()
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * xhat).sum(dims)
        grad_weight = sum_dy_xhat if weight is not None else None
        grad_bias = sum_dy if weight is not None else None
        c = dy.shape[1]
        both = _all_reduce_sum(torch.cat([sum_dy, sum_dy_xhat]), ctx.group)
        mean_dy, mean_dy_xhat = both[:c] / total, both[c:] / total
        scale = invstd if weight is None else invstd * weight.float()
        dx = (dy - mean_dy.view(view) - xhat * mean_dy_xhat.view(view)) * scale.view(view)
        return dx.to(ctx.x_dtype), grad_weight, grad_bias, None, None, None


class SumSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the batch of every process (see the module docstring); any input of 2+ dimensions.

    Not a subclass of ``nn.SyncBatchNorm``, which DistributedDataParallel refuses on the CPU.
    """

    def __init__(self, *args, process_group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training or not self.track_running_stats):
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        shift = self.running_mean
        if shift is None:
            shift = x.new_zeros(x.shape[1], dtype=torch.float)
        y, mean, var, total = _SumSyncBN.apply(
            x, self.weight, self.bias, shift.detach().float(), self.eps, self.process_group
        )
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative moving average
                    factor = 1.0 / self.num_batches_tracked.float()
                else:
                    factor = torch.full((), self.momentum, device=x.device)
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor.to(self.running_mean.dtype))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor.to(self.running_var.dtype))
        return y

    @classmethod
    def convert(cls, bn: nn.modules.batchnorm._BatchNorm) -> SumSyncBatchNorm:
        """A SumSyncBatchNorm holding ``bn``'s own parameters and buffers (the same tensors)."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        return new
