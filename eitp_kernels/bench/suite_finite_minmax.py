"""Benchmark cases of finite_minmax: the whole tensor and row-wise (dim=1).

Bytes moved: the input read once plus the (lo, hi) pairs written.
"""
from __future__ import annotations

import functools

import torch

import eitp_kernels
from eitp_kernels import reference
from eitp_kernels.bench.cases import Case, one_tensor_case, register_suite, size_label

OP = "finite_minmax"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def build(device: torch.device, quick: bool) -> list[Case]:
    n, side = (1 << 20, 1024) if quick else (1 << 24, 4096)
    cases = []
    for dtype in DTYPES:
        cases.append(_case(size_label(n), (n,), dtype, outputs=1))
        cases.append(_case(f"{size_label(side, side)} dim=1", (side, side), dtype, outputs=side, dim=1))
    return cases


def _case(label: str, shape: tuple[int, ...], dtype: torch.dtype, outputs: int, **kwargs) -> Case:
    return one_tensor_case(OP, label, shape, dtype, functools.partial(eitp_kernels.finite_minmax, **kwargs),
                           functools.partial(reference.finite_minmax, **kwargs), values_written=2 * outputs)


register_suite(OP, build)
