"""Modules (losses, QAT layers, monitors) built on the fused ops."""
from __future__ import annotations

import torch
from torch import nn

from eitp_kernels.ops.coherence import coherence_loss


class CoherenceLoss(nn.Module):
    """``coherence_loss`` as a module: ``forward(x, y=None)``; options as the function.

    ``L2 = diag_weight * sum_i (R_ii - 1)^2 + offdiag_weight * sum_{i!=j} R_ij^2``
    with R the column correlations (biased variance, ``eps``) of x (and y);
    returns ``sqrt(L2)`` unless ``squared``. Defaults give the EIT-P coherence
    term ``||R - I||_F``.
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
    """

    def __init__(self, lambda_offdiag: float = 0.0051, *, eps: float = 1e-5, process_group=None):
        super().__init__(diag_weight=1.0, offdiag_weight=lambda_offdiag, squared=True, eps=eps,
                         process_group=process_group)
        self.lambda_offdiag = lambda_offdiag

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(z1, z2)
