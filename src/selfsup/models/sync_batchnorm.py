"""BatchNorm over the global batch when several processes train (SimCLR, BYOL and MoCo heads, ResNets): batch
statistics are those of every process's samples together, as one process with the whole batch would compute.

On GPUs this is torch's SyncBatchNorm. It does not run on CPUs, so there GlobalBatchNorm does the same from
all-reduced sums (Σx and n, then Σ(x − mean)², per channel) with an all-reduce whose backward sums the gradients
of every process, so the normalisation's gradient is the global batch's too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup.dist import all_reduce_with_grad
from selfsup.models.blocks import wide


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm1d/2d/3d over the global batch; (N, C, ...) inputs."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected (N, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, C] + [1] * (x.dim() - 2)
        xf = wide(x)
        total = all_reduce_with_grad(torch.cat([xf.sum(dims), xf.new_tensor([xf.numel() / C])]))  # (C + 1,)
        n = total[-1]
        mean = total[:C] / n
        # two passes, as BatchNorm itself: Σ(x − mean)² rather than Σx² − n·mean², which loses digits in fp32
        var = all_reduce_with_grad(((xf - mean.view(shape)) ** 2).sum(dims)) / n  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), m)  # unbiased, as BatchNorm
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def synchronize_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` made global-batch: SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            for p_new, p_old in zip(new.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            setattr(module, name, new.to(next(child.buffers(), torch.empty(0)).device))
        else:
            synchronize_batchnorm(child, device)
    return module
