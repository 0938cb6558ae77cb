"""Modules built on the fused ops, one file per kind:

- ``monitor``: EntropyMonitor (histogram entropy of a model's parameters, logged in one call);
- ``qat``: FakeQuantLinear / FakeQuantConv1d / FakeQuantConv2d and prepare_qat;
- ``int8``: export_int8 / load_int8 and the int8 layers Int8Linear / Int8Conv1d / Int8Conv2d;
- ``losses``: CoherenceLoss and BarlowTwinsLoss.

Every public name is importable from ``eitp_kernels.nn`` itself.
"""
from eitp_kernels.nn.int8 import (Int8Conv1d, Int8Conv2d, Int8Linear, export_int8, int8_matmul_supported, int8_summary,
                                  load_int8, weight_only_supported)
from eitp_kernels.nn.losses import BarlowTwinsLoss, CoherenceLoss
from eitp_kernels.nn.monitor import EntropyMonitor, entropy_unit
from eitp_kernels.nn.qat import FakeQuantConv1d, FakeQuantConv2d, FakeQuantLinear, prepare_qat

__all__ = [
    "EntropyMonitor",
    "entropy_unit",
    "FakeQuantLinear",
    "FakeQuantConv1d",
    "FakeQuantConv2d",
    "prepare_qat",
    "Int8Linear",
    "Int8Conv1d",
    "Int8Conv2d",
    "int8_matmul_supported",
    "weight_only_supported",
    "int8_summary",
    "export_int8",
    "load_int8",
    "CoherenceLoss",
    "BarlowTwinsLoss",
]
