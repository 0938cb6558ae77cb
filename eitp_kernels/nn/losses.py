"""Loss modules built on coherence_loss: CoherenceLoss and BarlowTwinsLoss."""
from __future__ import annotations

import math

import torch
from torch import nn

from eitp_kernels.ops.coherence import coherence_loss


class CoherenceLoss(nn.Module):
    """``coherence_loss`` as a module: ``forward(x, y=None)``; options as the function.

    ``L2 = diag_weight * sum_i (R_ii - 1)^2 + offdiag_weight * sum_{i!=j} R_ij^2``
    with R the column correlations (biased variance, ``eps``) of x (and y);
    returns ``sqrt(L2)`` unless ``squared``. Defaults give the EIT-P coherence
    term ``||R - I||_F``.

    ``process_group`` (e.g. ``torch.distributed.group.WORLD`` under DDP):
    statistics over the concatenation of the ranks' batches, the same loss on
    every rank; each rank's input receives ``world_size * dL/dx_rank``, so
    DDP's averaging of parameter gradients gives exactly single-process
    training on the global batch (see ``coherence_loss``).
    """

    def __init__(self, *, diag_weight: float = 1.0, offdiag_weight: float = 1.0, squared: bool = False,
                 eps: float = 1e-5, process_group=None):
        super().__init__()
        self.diag_weight, self.offdiag_weight = diag_weight, offdiag_weight
        self.squared, self.eps, self.process_group = squared, eps, process_group

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return coherence_loss(x, y, diag_weight=self.diag_weight, offdiag_weight=self.offdiag_weight,
                              squared=self.squared, eps=self.eps, process_group=self.process_group)

    def extra_repr(self) -> str:
        return (f"diag_weight={self.diag_weight}, offdiag_weight={self.offdiag_weight}, "
                f"squared={self.squared}, eps={self.eps}")


class BarlowTwinsLoss(CoherenceLoss):
    """Barlow Twins redundancy reduction: ``forward(z1, z2)``.

    ``sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i!=j} C_ij^2`` with ``C`` the
    cross-correlation of the two embeddings batch-normalized without affine
    (biased variance, eps 1e-5), as in Zbontar et al. 2021 (lambda = 0.0051).
    ``z1`` and ``z2`` are (N, D) (or (N, *), flattened) with the same N and the
    same width D: C is square, its diagonal pairs feature i of one view with
    feature i of the other. Different widths raise ValueError (the general
    ``coherence_loss`` keeps its D x D' form for that). Dimensionless, float32
    (float64 for float64 input). ``process_group``: as ``CoherenceLoss``.
    """

    def __init__(self, lambda_offdiag: float = 0.0051, *, eps: float = 1e-5, process_group=None):
        super().__init__(diag_weight=1.0, offdiag_weight=lambda_offdiag, squared=True, eps=eps,
                         process_group=process_group)
        self.lambda_offdiag = lambda_offdiag

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if isinstance(z1, torch.Tensor) and isinstance(z2, torch.Tensor) and z1.dim() >= 1 and z2.dim() >= 1:
            width1, width2 = math.prod(z1.shape[1:]), math.prod(z2.shape[1:])
            if width1 != width2:
                raise ValueError(
                    f"BarlowTwinsLoss: z1 and z2 must have the same feature width (the two views' embeddings), "
                    f"got z1 of shape {tuple(z1.shape)} ({width1} features) and z2 of shape {tuple(z2.shape)} "
                    f"({width2} features); coherence_loss(x, y) takes different widths")
        return super().forward(z1, z2)
