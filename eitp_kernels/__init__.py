"""eitp_kernels: fused kernels for EIT-P training measurements.

Public API:
    backends(), use_backend(name), BackendUnavailableError
    finite_minmax(x, dim=None)
    histogram_entropy(x, bins=256, range=None, dim=None, base=None, differentiable=False, process_group=None)
    histogram_entropy_many(tensors, bins=256, range=None, base=None)
    nn.EntropyMonitor(model, bins=256, range=None, base=2.0, trainable_only=False)
The reference implementations (the ground truth) live in
``eitp_kernels.reference``.
"""
from eitp_kernels._backends import BackendStatus, BackendUnavailableError, backends, use_backend
from eitp_kernels.ops.finite_range import finite_minmax
from eitp_kernels.ops.entropy import histogram_entropy, histogram_entropy_many
from eitp_kernels import nn  # noqa: E402  (EntropyMonitor)

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "backends",
    "finite_minmax",
    "histogram_entropy",
    "histogram_entropy_many",
    "use_backend",
]
