"""Loss modules built on coherence_loss: CoherenceLoss and BarlowTwinsLoss.

Both check their constructor arguments in the constructor and their inputs
under their own names (``x``/``y`` for CoherenceLoss, ``z1``/``z2`` for
BarlowTwinsLoss) before calling ``coherence_loss``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from eitp_kernels import _validation
from eitp_kernels.ops.coherence import coherence_loss


def _check_pair(op: str, names: tuple[str, str], a, b, *, min_dim: int) -> None:
    """Both tensors float, at least ``min_dim``-D, on one device, with one batch size N >= 2
    (``b`` may be None where the loss allows it)."""
    name_a, name_b = names
    _validation.check_tensor(op, name_a, a, min_dim=min_dim)
    if a.shape[0] < 2:
        raise ValueError(f"{op}: {name_a} must have at least 2 rows (the batch dimension N; correlations need "
                         f"N >= 2), got shape {tuple(a.shape)}")
    if b is None:
        return
    _validation.check_tensor(op, name_b, b, min_dim=min_dim)
    _validation.check_same_device(op, name_a, a, name_b, b)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"{op}: {name_a} and {name_b} must have the same batch size (dim 0), got {name_a} of "
                         f"shape {tuple(a.shape)} and {name_b} of shape {tuple(b.shape)}")


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
        """``diag_weight`` (a >= 0) and ``offdiag_weight`` (b >= 0): the weights of the
        diagonal and off-diagonal terms (dimensionless); ``squared``: return L2 rather
        than sqrt(L2); ``eps`` >= 0: added to each column's variance (in the input's
        squared units) before the inverse square root; ``process_group``: None or a
        ``torch.distributed.ProcessGroup`` whose ranks' batches are concatenated.
        Each is checked here (TypeError/ValueError naming it)."""
        super().__init__()
        op = type(self).__name__
        self.diag_weight = _validation.check_float(op, "diag_weight", diag_weight, non_negative=True)
        self.offdiag_weight = _validation.check_float(op, "offdiag_weight", offdiag_weight, non_negative=True)
        self.squared = _validation.check_bool(op, "squared", squared)
        self.eps = _validation.check_float(op, "eps", eps, non_negative=True)
        _validation.check_process_group(op, process_group)
        self.process_group = process_group

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of ``x`` (N, D) or (N, *) (flattened to D features), with the columns of
        ``y`` (N, D') when given (else self-correlation), N >= 2. Returns a 0-d tensor,
        dimensionless, float64 if x or y is float64 else float32; differentiable in x and y."""
        _check_pair(type(self).__name__, ("x", "y"), x, y, min_dim=1)
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
        """``lambda_offdiag`` >= 0: the off-diagonal weight (0.0051 in the paper);
        ``eps`` >= 0: the batch norm's epsilon (squared input units);
        ``process_group``: as ``CoherenceLoss``. Checked here."""
        super().__init__(diag_weight=1.0, offdiag_weight=lambda_offdiag, squared=True, eps=eps,
                         process_group=process_group)
        self.lambda_offdiag = self.offdiag_weight

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The loss of two views' embeddings ``z1``, ``z2``: (N, D) or (N, *), the same N >= 2
        and the same number of features D (1-D inputs are rejected: they would be N
        embeddings of one feature each). Returns a 0-d tensor, float32 (float64 for float64
        input); differentiable in both."""
        op = type(self).__name__
        _check_pair(op, ("z1", "z2"), z1, z2, min_dim=2)
        width1, width2 = math.prod(z1.shape[1:]), math.prod(z2.shape[1:])
        if width1 != width2:
            raise ValueError(
                f"{op}: z1 and z2 must have the same feature width (the two views' embeddings), "
                f"got z1 of shape {tuple(z1.shape)} ({width1} features) and z2 of shape {tuple(z2.shape)} "
                f"({width2} features); coherence_loss(x, y) takes different widths")
        return coherence_loss(z1, z2, diag_weight=self.diag_weight, offdiag_weight=self.offdiag_weight,
                              squared=self.squared, eps=self.eps, process_group=self.process_group)

    def extra_repr(self) -> str:
        return f"lambda_offdiag={self.lambda_offdiag}, eps={self.eps}"
