"""eitp_kernels: fused kernels for EIT-P training measurements.

Public API:
    backends(), use_backend(name), BackendUnavailableError
    finite_minmax(x, dim=None)
    histogram_entropy(x, bins=256, range=None, dim=None, base=None, differentiable=False, process_group=None)
    histogram_entropy_many(tensors, bins=256, range=None, base=None)
    nn.EntropyMonitor(model, bins=256, range=None, base=2.0, trainable_only=False, *, include=None,
                      exclude=None, skip_biases=False, min_numel=1, prefix="entropy"); .log(writer, step)
    quantize_int8(x, *, granularity="tensor", axis=0, group_size=128, symmetric=True, scale=None, zero_point=None)
    dequantize_int8(q, scale, zero_point=None, *, granularity="tensor", axis=0, group_size=128, dtype=torch.float32)
    fake_quant_int8(x, *, granularity="tensor", axis=0, group_size=128, symmetric=True, scale=None, zero_point=None)
    nn.FakeQuantLinear, nn.Int8Linear, nn.prepare_qat(model), nn.export_int8(model),
    nn.load_int8(state, model_or_factory)
    coherence_loss(x, y=None, *, diag_weight=1.0, offdiag_weight=1.0, squared=False, eps=1e-5,
                   process_group=None)
    nn.CoherenceLoss, nn.BarlowTwinsLoss (modules, in eitp_kernels.nn)
Every op also takes DTensor inputs (FSDP2, tensor parallelism): docs/design.md §3.3.
The reference implementations (the ground truth) live in
``eitp_kernels.reference``.
"""
from eitp_kernels._backends import (BackendStatus, BackendUnavailableError, SlowTritonHistogramWarning, backends,
                                   use_backend)
from eitp_kernels.ops.coherence import coherence_loss
from eitp_kernels.ops.finite_minmax import finite_minmax
from eitp_kernels.ops.entropy import histogram_entropy, histogram_entropy_many
from eitp_kernels.ops.quant import dequantize_int8, fake_quant_int8, quantize_int8
from eitp_kernels import nn  # noqa: E402  (EntropyMonitor, QAT modules)

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "backends",
    "coherence_loss",
    "dequantize_int8",
    "fake_quant_int8",
    "finite_minmax",
    "histogram_entropy",
    "histogram_entropy_many",
    "quantize_int8",
    "SlowTritonHistogramWarning",
    "use_backend",
]
