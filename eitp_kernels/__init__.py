"""eitp_kernels: fused kernels for EIT-P training measurements.

Public API:
    backends(), use_backend(name), BackendUnavailableError
    finite_minmax(x, dim=None)
    coherence_loss(x, y=None, *, diag_weight=1.0, offdiag_weight=1.0, squared=False, eps=1e-5,
                   process_group=None)
    nn.CoherenceLoss, nn.BarlowTwinsLoss (modules, in eitp_kernels.nn)
The reference implementations (the ground truth) live in
``eitp_kernels.reference``.
"""
from eitp_kernels._backends import BackendStatus, BackendUnavailableError, backends, use_backend
from eitp_kernels.ops.coherence import coherence_loss
from eitp_kernels.ops.finite_range import finite_minmax

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "backends",
    "coherence_loss",
    "finite_minmax",
    "use_backend",
]
