"""Bad-input matrix: every public op x every CPU backend x every bad-input class.

Each case is either

* ``raises(ExcType, "argname")``: the call must raise that exception type with
  a message naming the argument (checked before any kernel runs), or
* ``SAME``: the documented numeric result, i.e. exactly what the reference
  backend returns for the same call (NaN where the reference gives NaN; codes,
  scales and zero points bit for bit; floats within fp32 rounding).

The case list is built at import (inputs are built lazily, inside the test) and
``test_matrix_size`` prints ``bad-input matrix: N cases`` (run pytest with -s
or -rA to see it). The Triton column runs only in the interpreter process
(``TRITON_INTERPRET=1 pytest -m triton_interpret``), as tests/conftest.py does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch

import eitp_kernels as ek
from conftest import cpu_backends

META = torch.device("meta")
F16_MAX = torch.finfo(torch.float16).max  # 65504
DENORM32 = 1e-40  # subnormal in float32 (min normal 1.2e-38)


@dataclass(frozen=True)
class Raises:
    exc: type
    arg: str  # the message must name this argument


SAME = "same-as-reference"


def raises(exc, arg):
    return Raises(exc, arg)


@dataclass(frozen=True)
class Case:
    op: str
    what: str
    call: Callable[[], Any]
    expect: Any

    @property
    def id(self):
        return f"{self.op}-{self.what}"


def _r(*shape, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(1234 + sum(shape))
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _special(dtype=torch.float32):
    x = _r(5, 8, dtype=torch.float32)
    x[0, 1] = float("nan")
    x[1, 2] = float("inf")
    x[2, 3] = float("-inf")
    x[3, 0] = float("nan")
    return x.to(dtype)


def _all_nan(dtype=torch.float32):
    return torch.full((3, 4), float("nan"), dtype=dtype)


def _denormals():
    return _r(4, 8, dtype=torch.float64).mul(DENORM32).to(torch.float32)


def _fp16_near_max():
    x = _r(4, 8).clamp(-1, 1).mul(F16_MAX).to(torch.float16)
    x[0, 0] = F16_MAX
    x[1, 1] = -F16_MAX
    return x


def _huge_span():  # finite values whose span (hi - lo) overflows float32
    return torch.tensor([[-1.9e38, 1.7e38, 0.0, 1e37], [3e38, -3e38, 1.0, 2.0]])


def _expanded():  # overlapping view: every row aliases the same memory
    return _r(1, 8).expand(6, 8)


def _noncontig():  # transposed and strided
    return _r(8, 12).t()[::2]


def _codes(*shape):
    g = torch.Generator().manual_seed(7)
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)


CASES: list[Case] = []


def case(op, what, expect):
    def deco(fn):
        CASES.append(Case(op, what, fn, expect))
        return fn

    return deco


def add(op, what, expect, fn):
    CASES.append(Case(op, what, fn, expect))


# --------------------------------------------------------------------------
# finite_minmax
# --------------------------------------------------------------------------
fm = ek.finite_minmax
add("finite_minmax", "int32", raises(TypeError, "x"), lambda: fm(torch.arange(6, dtype=torch.int32)))
add("finite_minmax", "complex", raises(TypeError, "x"), lambda: fm(torch.zeros(4, dtype=torch.complex64)))
add("finite_minmax", "bool", raises(TypeError, "x"), lambda: fm(torch.ones(4, dtype=torch.bool)))
add("finite_minmax", "not-a-tensor", raises(TypeError, "x"), lambda: fm([1.0, 2.0]))
add("finite_minmax", "empty", raises(ValueError, "x"), lambda: fm(torch.empty(0, 3)))
add("finite_minmax", "bad-dim", raises(ValueError, "dim"), lambda: fm(_r(3, 4), dim=2))
add("finite_minmax", "dim-on-0d", raises(ValueError, "dim"), lambda: fm(torch.tensor(1.0), dim=0))
add("finite_minmax", "dim-float", raises(TypeError, "dim"), lambda: fm(_r(3, 4), dim=1.0))
add("finite_minmax", "nan-inf", SAME, lambda: fm(_special(), dim=1))
add("finite_minmax", "all-nan", SAME, lambda: fm(_all_nan(), dim=0))
add("finite_minmax", "denormals", SAME, lambda: fm(_denormals(), dim=1))
add("finite_minmax", "fp16-near-max", SAME, lambda: fm(_fp16_near_max()))
add("finite_minmax", "expand", SAME, lambda: fm(_expanded(), dim=0))
add("finite_minmax", "noncontig", SAME, lambda: fm(_noncontig(), dim=1))
add("finite_minmax", "0d", SAME, lambda: fm(torch.tensor(3.0)))

# --------------------------------------------------------------------------
# histogram_entropy
# --------------------------------------------------------------------------
he = ek.histogram_entropy
add("entropy", "int32", raises(TypeError, "x"), lambda: he(torch.arange(6, dtype=torch.int32)))
add("entropy", "int64", raises(TypeError, "x"), lambda: he(torch.arange(6)))
add("entropy", "complex", raises(TypeError, "x"), lambda: he(torch.zeros(4, dtype=torch.complex64)))
add("entropy", "bool", raises(TypeError, "x"), lambda: he(torch.ones(4, dtype=torch.bool)))
add("entropy", "bins-0", raises(ValueError, "bins"), lambda: he(_r(10), bins=0))
add("entropy", "bins-negative", raises(ValueError, "bins"), lambda: he(_r(10), bins=-5))
add("entropy", "bins-float", raises(TypeError, "bins"), lambda: he(_r(10), bins=2.5))
add("entropy", "bins-bool", raises(TypeError, "bins"), lambda: he(_r(10), bins=True))
add("entropy", "bins-huge", raises(ValueError, "bins"), lambda: he(_r(10), bins=2**40))
add("entropy", "codes-bins", raises(ValueError, "bins"), lambda: he(_codes(10), bins=16))
add("entropy", "codes-range", raises(ValueError, "range"), lambda: he(_codes(10), range=(0, 1)))
add("entropy", "range-equal", raises(ValueError, "range"), lambda: he(_r(10), range=(1.0, 1.0)))
add("entropy", "range-reversed", raises(ValueError, "range"), lambda: he(_r(10), range=(2.0, -1.0)))
add("entropy", "range-nan", raises(ValueError, "range"), lambda: he(_r(10), range=(float("nan"), 1.0)))
add("entropy", "range-inf", raises(ValueError, "range"), lambda: he(_r(10), range=(0.0, float("inf"))))
add("entropy", "range-scalar", raises(TypeError, "range"), lambda: he(_r(10), range=1.0))
add("entropy", "base-1", raises(ValueError, "base"), lambda: he(_r(10), base=1))
add("entropy", "base-negative", raises(ValueError, "base"), lambda: he(_r(10), base=-2.0))
add("entropy", "bad-dim", raises(ValueError, "dim"), lambda: he(_r(3, 4), dim=-3))
add("entropy", "dim-on-0d", raises(ValueError, "dim"), lambda: he(torch.tensor(1.0), dim=0))
add("entropy", "differentiable-codes", raises(TypeError, "differentiable"),
    lambda: he(_codes(10), differentiable=True))
add("entropy", "differentiable-int", raises(TypeError, "differentiable"), lambda: he(_r(10), differentiable=1))
add("entropy", "process-group-str", raises(TypeError, "process_group"), lambda: he(_r(10), process_group="world"))
add("entropy", "empty", SAME, lambda: he(torch.empty(0)))
add("entropy", "empty-rows", SAME, lambda: he(torch.empty(3, 0), dim=1))
add("entropy", "0d", SAME, lambda: he(torch.tensor(2.0)))
add("entropy", "nan-inf", SAME, lambda: he(_special(), bins=7, dim=1))
add("entropy", "nan-inf-range", SAME, lambda: he(_special(), bins=7, range=(-1.0, 1.0)))
add("entropy", "all-nan", SAME, lambda: he(_all_nan(), dim=1))
add("entropy", "constant", SAME, lambda: he(torch.full((3, 5), 2.5), dim=1))
add("entropy", "denormals", SAME, lambda: he(_denormals(), bins=16, dim=1))
add("entropy", "fp16-near-max", SAME, lambda: he(_fp16_near_max(), bins=33))
add("entropy", "fp16-near-max-range", SAME, lambda: he(_fp16_near_max(), bins=10, range=(-F16_MAX, F16_MAX)))
add("entropy", "expand", SAME, lambda: he(_expanded(), bins=5, dim=0))
add("entropy", "noncontig", SAME, lambda: he(_noncontig(), bins=9, dim=0))
add("entropy", "codes-noncontig", SAME, lambda: he(_codes(6, 10).t(), dim=1, base=2))
add("entropy", "codes-expand", SAME, lambda: he(_codes(1, 10).expand(4, 10), dim=1))
add("entropy", "differentiable-nan", SAME, lambda: he(_special(), bins=5, dim=1, differentiable=True))
add("entropy", "differentiable-expand", SAME, lambda: he(_expanded(), bins=5, differentiable=True))
add("entropy", "bins-1", SAME, lambda: he(_r(4, 6), bins=1, dim=1))
# hi - lo overflows float32 (w = inf): documented degenerate, every counted value in bin 0 (found by fuzzing)
add("entropy", "width-overflow", SAME, lambda: he(_huge_span(), bins=4, dim=1))
add("entropy", "width-overflow-range", SAME, lambda: he(_huge_span(), bins=4, range=(-3e38, 3e38)))
add("entropy", "width-overflow-diff", SAME, lambda: he(_huge_span(), bins=4, dim=1, differentiable=True))
add("entropy", "width-overflow-bf16", SAME, lambda: he(_huge_span().to(torch.bfloat16), bins=3))

# --------------------------------------------------------------------------
# histogram_entropy_many
# --------------------------------------------------------------------------
hm = ek.histogram_entropy_many
add("entropy_many", "tensor-not-list", raises(TypeError, "tensors"), lambda: hm(_r(4, 4)))
add("entropy_many", "empty-list", raises(ValueError, "tensors"), lambda: hm([]))
add("entropy_many", "not-a-tensor", raises(TypeError, r"tensors\[1\]"), lambda: hm([_r(4), 3.0]))
add("entropy_many", "complex", raises(TypeError, r"tensors\[1\]"), lambda: hm([_r(4), torch.zeros(3, dtype=torch.cfloat)]))
add("entropy_many", "int32", raises(TypeError, r"tensors\[0\]"), lambda: hm([torch.arange(4, dtype=torch.int32)]))
add("entropy_many", "bool", raises(TypeError, r"tensors\[0\]"), lambda: hm([torch.ones(4, dtype=torch.bool)]))
add("entropy_many", "meta-device", raises(ValueError, r"tensors\[1\]"), lambda: hm([_r(4), torch.empty(4, device=META)]))
add("entropy_many", "bins-0", raises(ValueError, "bins"), lambda: hm([_r(4)], bins=0))
add("entropy_many", "codes-bins", raises(ValueError, "bins"), lambda: hm([_r(4), _codes(4)], bins=10))
add("entropy_many", "range-bad", raises(ValueError, "range"), lambda: hm([_r(4)], range=(1.0, 0.0)))
add("entropy_many", "mixed-dtypes", SAME,
    lambda: hm([_r(5, 3, dtype=torch.float16), _codes(7), _r(4, dtype=torch.float64), _r(3, dtype=torch.bfloat16)]))
add("entropy_many", "with-empty", SAME, lambda: hm([_r(5), torch.empty(0), _r(2, 2)]))
add("entropy_many", "nan-inf", SAME, lambda: hm([_special(), _all_nan(), _denormals()], bins=11))
add("entropy_many", "fp16-near-max", SAME, lambda: hm([_fp16_near_max(), _r(3)], bins=20))
add("entropy_many", "width-overflow", SAME, lambda: hm([_huge_span(), _huge_span().to(torch.bfloat16)], bins=5))
add("entropy_many", "views", SAME, lambda: hm([_expanded(), _noncontig(), torch.tensor(1.0)], bins=6))

# --------------------------------------------------------------------------
# coherence_loss
# --------------------------------------------------------------------------
cl = ek.coherence_loss
add("coherence", "int32", raises(TypeError, "x"), lambda: cl(torch.ones(4, 3, dtype=torch.int32)))
add("coherence", "complex", raises(TypeError, "x"), lambda: cl(torch.ones(4, 3, dtype=torch.complex64)))
add("coherence", "bool", raises(TypeError, "x"), lambda: cl(torch.ones(4, 3, dtype=torch.bool)))
add("coherence", "codes", raises(TypeError, "x"), lambda: cl(_codes(4, 3)))
add("coherence", "0d", raises(ValueError, "x"), lambda: cl(torch.tensor(1.0)))
add("coherence", "one-row", raises(ValueError, "x"), lambda: cl(_r(1, 4)))
add("coherence", "empty", raises(ValueError, "x"), lambda: cl(torch.empty(0, 4)))
add("coherence", "empty-features", raises(ValueError, "x"), lambda: cl(torch.empty(4, 0)))
add("coherence", "y-int", raises(TypeError, "y"), lambda: cl(_r(4, 3), torch.ones(4, 3, dtype=torch.int64)))
add("coherence", "y-batch-mismatch", raises(ValueError, "y"), lambda: cl(_r(4, 3), _r(5, 3)))
add("coherence", "y-meta", raises(ValueError, "y"), lambda: cl(_r(4, 3), torch.empty(4, 3, device=META)))
add("coherence", "y-empty", raises(ValueError, "y"), lambda: cl(_r(4, 3), torch.empty(4, 0)))
add("coherence", "diag-negative", raises(ValueError, "diag_weight"), lambda: cl(_r(4, 3), diag_weight=-1.0))
add("coherence", "offdiag-nan", raises(ValueError, "offdiag_weight"), lambda: cl(_r(4, 3), offdiag_weight=float("nan")))
add("coherence", "offdiag-tensor", raises(TypeError, "offdiag_weight"),
    lambda: cl(_r(4, 3), offdiag_weight=torch.tensor(1.0)))
add("coherence", "eps-negative", raises(ValueError, "eps"), lambda: cl(_r(4, 3), eps=-1e-5))
add("coherence", "eps-inf", raises(ValueError, "eps"), lambda: cl(_r(4, 3), eps=float("inf")))
add("coherence", "squared-int", raises(TypeError, "squared"), lambda: cl(_r(4, 3), squared=1))
add("coherence", "process-group-str", raises(TypeError, "process_group"), lambda: cl(_r(4, 3), process_group="x"))
add("coherence", "nan-inf", SAME, lambda: cl(_special()))
add("coherence", "nan-in-y", SAME, lambda: cl(_r(5, 3), _special()[:, :4]))
add("coherence", "constant-column", SAME, lambda: cl(torch.cat([_r(6, 3), torch.full((6, 1), 4.0)], 1)))
add("coherence", "constant-eps0", SAME, lambda: cl(torch.cat([_r(6, 3), torch.full((6, 1), 4.0)], 1), eps=0.0))
add("coherence", "denormals", SAME, lambda: cl(_denormals()))
add("coherence", "denormals-eps0", SAME, lambda: cl(_denormals(), eps=0.0, squared=True))
add("coherence", "fp16-near-max", SAME, lambda: cl(_fp16_near_max()))
add("coherence", "expand", SAME, lambda: cl(_expanded()))
add("coherence", "noncontig", SAME, lambda: cl(_noncontig()))
add("coherence", "noncontig-xy", SAME, lambda: cl(_r(3, 7).t(), _r(14, 5)[::2]))
add("coherence", "rank3", SAME, lambda: cl(_r(5, 2, 3), _r(5, 4)))
add("coherence", "rank1", SAME, lambda: cl(_r(6)))
add("coherence", "mixed-precision", SAME, lambda: cl(_r(6, 3), _r(6, 2, dtype=torch.float64)))
add("coherence", "bf16", SAME, lambda: cl(_r(6, 3, dtype=torch.bfloat16), squared=True))
add("coherence", "zero-weights", SAME, lambda: cl(_r(6, 3), diag_weight=0, offdiag_weight=0))

# --------------------------------------------------------------------------
# quantize_int8 / fake_quant_int8 (same argument checks), dequantize_int8
# --------------------------------------------------------------------------
for name, fn in (("quantize", ek.quantize_int8), ("fake_quant", ek.fake_quant_int8)):
    def _add(what, expect, call, _name=name):
        add(_name, what, expect, call)

    _add("int32", raises(TypeError, "x"), lambda fn=fn: fn(torch.arange(8, dtype=torch.int32)))
    _add("codes", raises(TypeError, "x"), lambda fn=fn: fn(_codes(8)))
    _add("complex", raises(TypeError, "x"), lambda fn=fn: fn(torch.zeros(8, dtype=torch.complex64)))
    _add("bool", raises(TypeError, "x"), lambda fn=fn: fn(torch.ones(8, dtype=torch.bool)))
    _add("granularity", raises(ValueError, "granularity"), lambda fn=fn: fn(_r(4, 8), granularity="row"))
    _add("channel-0d", raises(ValueError, "granularity"), lambda fn=fn: fn(torch.tensor(1.0), granularity="channel"))
    _add("group-0d", raises(ValueError, "granularity"), lambda fn=fn: fn(torch.tensor(1.0), granularity="group"))
    _add("axis-out-of-range", raises(ValueError, "axis"), lambda fn=fn: fn(_r(4, 8), granularity="channel", axis=2))
    _add("axis-negative-oor", raises(ValueError, "axis"), lambda fn=fn: fn(_r(4, 8), granularity="channel", axis=-3))
    _add("axis-float", raises(TypeError, "axis"), lambda fn=fn: fn(_r(4, 8), granularity="channel", axis=0.0))
    _add("group-0", raises(ValueError, "group_size"), lambda fn=fn: fn(_r(4, 8), granularity="group", group_size=0))
    _add("group-negative", raises(ValueError, "group_size"), lambda fn=fn: fn(_r(4, 8), granularity="group", group_size=-4))
    _add("group-not-divisor", raises(ValueError, "group_size"), lambda fn=fn: fn(_r(4, 8), granularity="group", group_size=3))
    _add("group-float", raises(TypeError, "group_size"), lambda fn=fn: fn(_r(4, 8), granularity="group", group_size=4.0))
    _add("symmetric-int", raises(TypeError, "symmetric"), lambda fn=fn: fn(_r(4, 8), symmetric=1))
    _add("scale-0", raises(ValueError, "scale"), lambda fn=fn: fn(_r(4, 8), scale=0.0))
    _add("scale-negative", raises(ValueError, "scale"), lambda fn=fn: fn(_r(4, 8), scale=-0.5))
    _add("scale-nan", raises(ValueError, "scale"), lambda fn=fn: fn(_r(4, 8), scale=float("nan")))
    _add("scale-inf", raises(ValueError, "scale"), lambda fn=fn: fn(_r(4, 8), scale=float("inf")))
    _add("scale-tensor-0", raises(ValueError, "scale"), lambda fn=fn: fn(_r(4, 8), scale=torch.tensor(0.0)))
    _add("scale-channel-negative", raises(ValueError, "scale"),
         lambda fn=fn: fn(_r(4, 8), granularity="channel", scale=torch.tensor([0.1, 0.2, -0.1, 0.3])))
    _add("scale-group-nan", raises(ValueError, "scale"),
         lambda fn=fn: fn(_r(2, 8), granularity="group", group_size=4,
                          scale=torch.tensor([[0.1, float("nan")], [0.2, 0.3]])))
    _add("scale-wrong-shape", raises(ValueError, "scale"),
         lambda fn=fn: fn(_r(4, 8), granularity="channel", scale=torch.ones(8)))
    _add("scale-number-per-channel", raises(ValueError, "scale"),
         lambda fn=fn: fn(_r(4, 8), granularity="channel", scale=0.1))
    _add("scale-int-tensor", raises(TypeError, "scale"), lambda fn=fn: fn(_r(4, 8), scale=torch.tensor(1)))
    _add("scale-str", raises(TypeError, "scale"), lambda fn=fn: fn(_r(4, 8), scale="0.1"))
    _add("scale-meta", raises(ValueError, "scale"), lambda fn=fn: fn(_r(4, 8), scale=torch.ones((), device=META)))
    _add("zp-without-scale", raises(ValueError, "zero_point"), lambda fn=fn: fn(_r(4, 8), symmetric=False, zero_point=0))
    _add("zp-symmetric", raises(ValueError, "zero_point"), lambda fn=fn: fn(_r(4, 8), scale=0.1, zero_point=0))
    _add("affine-no-zp", raises(ValueError, "zero_point"), lambda fn=fn: fn(_r(4, 8), symmetric=False, scale=0.1))
    _add("zp-float", raises(TypeError, "zero_point"),
         lambda fn=fn: fn(_r(4, 8), symmetric=False, scale=0.1, zero_point=torch.tensor(1.5)))
    _add("zp-meta", raises(ValueError, "zero_point"),
         lambda fn=fn: fn(_r(4, 8), symmetric=False, scale=0.1, zero_point=torch.zeros((), dtype=torch.int32, device=META)))
    _add("empty", SAME, lambda fn=fn: fn(torch.empty(0, 8)))
    _add("empty-channel", SAME, lambda fn=fn: fn(torch.empty(3, 0), granularity="channel"))
    _add("empty-group", SAME, lambda fn=fn: fn(torch.empty(0, 8), granularity="group", group_size=4))
    _add("0d", SAME, lambda fn=fn: fn(torch.tensor(-2.5)))
    _add("nan-inf", SAME, lambda fn=fn: fn(_special()))
    _add("nan-inf-affine-channel", SAME, lambda fn=fn: fn(_special(), granularity="channel", symmetric=False))
    _add("nan-inf-group", SAME, lambda fn=fn: fn(_special(), granularity="group", group_size=4))
    _add("all-nan", SAME, lambda fn=fn: fn(_all_nan(), granularity="channel", axis=1))
    _add("all-zero", SAME, lambda fn=fn: fn(torch.zeros(3, 4), symmetric=False))
    _add("denormals", SAME, lambda fn=fn: fn(_denormals(), granularity="channel"))
    _add("denormals-affine", SAME, lambda fn=fn: fn(_denormals(), symmetric=False))
    _add("fp16-near-max", SAME, lambda fn=fn: fn(_fp16_near_max()))
    _add("fp16-near-max-affine", SAME, lambda fn=fn: fn(_fp16_near_max(), granularity="channel", symmetric=False))
    _add("expand", SAME, lambda fn=fn: fn(_expanded(), granularity="group", group_size=2))
    _add("noncontig", SAME, lambda fn=fn: fn(_noncontig(), granularity="channel", axis=1))
    _add("static-clip", SAME, lambda fn=fn: fn(_r(4, 8, scale=10.0), scale=0.01))
    _add("static-tiny-scale", SAME, lambda fn=fn: fn(_special(), scale=1e-38))
    _add("static-affine-extreme-zp", SAME,
         lambda fn=fn: fn(_r(4, 8), symmetric=False, scale=0.05, zero_point=10**6))
    _add("static-denormal-scale", SAME, lambda fn=fn: fn(_r(4, 8), scale=DENORM32))

dq = ek.dequantize_int8
add("dequantize", "float-q", raises(TypeError, "q"), lambda: dq(_r(4, 8), 0.1))
add("dequantize", "uint8-q", raises(TypeError, "q"), lambda: dq(torch.zeros(4, dtype=torch.uint8), 0.1))
add("dequantize", "bool-q", raises(TypeError, "q"), lambda: dq(torch.zeros(4, dtype=torch.bool), 0.1))
add("dequantize", "dtype-int", raises(TypeError, "dtype"), lambda: dq(_codes(4, 8), 0.1, dtype=torch.int32))
add("dequantize", "dtype-complex", raises(TypeError, "dtype"), lambda: dq(_codes(4, 8), 0.1, dtype=torch.complex64))
add("dequantize", "scale-shape", raises(ValueError, "scale"),
    lambda: dq(_codes(4, 8), torch.ones(3), granularity="channel"))
add("dequantize", "scale-int", raises(TypeError, "scale"), lambda: dq(_codes(4, 8), torch.ones((), dtype=torch.int32)))
add("dequantize", "scale-meta", raises(ValueError, "scale"), lambda: dq(_codes(4, 8), torch.ones((), device=META)))
add("dequantize", "scale-missing", raises(TypeError, "scale"), lambda: dq(_codes(4, 8), None))
add("dequantize", "zp-float", raises(TypeError, "zero_point"), lambda: dq(_codes(4, 8), 0.1, torch.tensor(0.5)))
add("dequantize", "zp-shape", raises(ValueError, "zero_point"),
    lambda: dq(_codes(4, 8), torch.ones(4), torch.zeros(5, dtype=torch.int32), granularity="channel"))
add("dequantize", "axis", raises(ValueError, "axis"), lambda: dq(_codes(4, 8), torch.ones(4), granularity="channel", axis=5))
add("dequantize", "group", raises(ValueError, "group_size"), lambda: dq(_codes(4, 8), torch.ones(4, 2), granularity="group", group_size=3))
add("dequantize", "scale-0", SAME, lambda: dq(_codes(4, 8), 0.0))
add("dequantize", "scale-negative", SAME, lambda: dq(_codes(4, 8), torch.tensor([1.0, -1.0, 0.5, 2.0]), granularity="channel"))
add("dequantize", "scale-nan-inf", SAME,
    lambda: dq(_codes(4, 8), torch.tensor([float("nan"), float("inf"), 1e-40, 3e38]), granularity="channel"))
add("dequantize", "to-fp16-overflow", SAME, lambda: dq(_codes(4, 8), 1000.0, dtype=torch.float16))
add("dequantize", "to-bf16", SAME, lambda: dq(_codes(4, 8), 0.37, 3, dtype=torch.bfloat16))
add("dequantize", "empty", SAME, lambda: dq(torch.empty(0, 4, dtype=torch.int8), 0.1))
add("dequantize", "expand", SAME, lambda: dq(_codes(1, 8).expand(4, 8), torch.ones(4, 2), granularity="group", group_size=4))
add("dequantize", "noncontig", SAME, lambda: dq(_codes(8, 6).t()[::2], _r(3).abs() + 0.1, granularity="channel"))
add("dequantize", "fp64", SAME, lambda: dq(_codes(3, 4), _r(3, dtype=torch.float64).abs(), granularity="channel",
                                           dtype=torch.float64))

BACKENDS = cpu_backends()


def test_matrix_size():
    n_backends = len(BACKENDS)
    ops = sorted({c.op for c in CASES})
    print(f"\nbad-input matrix: {len(CASES)} cases x {n_backends} backends = {len(CASES) * n_backends} "
          f"({sum(isinstance(c.expect, Raises) for c in CASES)} must raise, "
          f"{sum(c.expect == SAME for c in CASES)} must match the reference; ops: {', '.join(ops)})")
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
    assert len(CASES) >= 150


def _as_list(out):
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


def _assert_same(got, want, what):
    got, want = _as_list(got), _as_list(want)
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        if w is None:
            assert g is None, what
            continue
        assert isinstance(g, torch.Tensor), what
        assert g.dtype == w.dtype and g.shape == w.shape and g.device == w.device, (what, g, w)
        if w.dtype.is_floating_point:
            exact = w.dtype in (torch.float16, torch.bfloat16) or what.startswith(("quantize", "fake_quant", "dequantize", "finite_minmax"))
            if exact:
                torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True, msg=what)
            else:
                torch.testing.assert_close(g, w, rtol=2e-5, atol=1e-6, equal_nan=True, msg=what)
        else:
            assert torch.equal(g, w), what


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, backend):
    if isinstance(c.expect, Raises):
        with ek.use_backend(backend):
            with pytest.raises(c.expect.exc) as info:
                c.call()
        msg = str(info.value)
        assert re.search(rf"(^|[^A-Za-z_]){c.expect.arg}([^A-Za-z_]|$)", msg), f"message does not name {c.expect.arg!r}: {msg}"
        assert not isinstance(info.value, ek.BackendUnavailableError), msg
        return
    with ek.use_backend("reference"):
        want = c.call()
    with ek.use_backend(backend):
        got = c.call()
    _assert_same(got, want, c.id)


# --------------------------------------------------------------------------
# Extreme ranges found by tests/test_fuzz.py (formerly wrong results, now
# defined behaviour on every backend).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["affine-fp32", "symmetric-fp64", "affine-fp64-beyond-fp32"])
def test_range_wider_than_float32_gets_a_finite_scale(backend, which):
    """A range too wide for float32 arithmetic (affine max - min > 3.4e38, or
    fp64 values beyond float32) is computed in float64 with a saturated scale:
    finite scale, the same bits on every backend, and the values within
    float32's reach come back within half a step."""
    if which == "affine-fp32":
        x, sym = torch.tensor([-2e38, 1.5e38, 1e37, -3e37, 1.0]), False
    elif which == "symmetric-fp64":
        x, sym = torch.tensor([1e39, -5e38, 1e36, 1.0], dtype=torch.float64), True
    else:
        x, sym = torch.tensor([-1e300, 3e38, 1e38, 0.0], dtype=torch.float64), False
    with ek.use_backend("reference"):
        want = ek.quantize_int8(x, symmetric=sym)
    with ek.use_backend(backend):
        got = ek.quantize_int8(x, symmetric=sym)
        fake = ek.fake_quant_int8(x, symmetric=sym)
    _assert_same(got, want, f"quantize {which}")
    q, s, z = got
    assert torch.isfinite(s).all() and s.item() > 0
    if which != "affine-fp64-beyond-fp32":
        # every value is within range: fake-quant is within half a step
        err = (fake.double() - x.double()).abs().max().item()
        assert err <= 0.5 * s.item() * (1 + 1e-5), (err, s.item())
    else:
        # the scale saturates at float32's max; values beyond 255 steps clip
        assert s.item() == torch.finfo(torch.float32).max
        assert q[0].item() == -128 and q[3].item() == z.item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_coherence_huge_fp32_columns(backend):
    """Column statistics are summed in float64 everywhere: huge finite fp32
    columns standardize correctly while their squared deviations fit float32,
    and beyond that the loss is NaN (not a column silently counted as
    constant), on every backend as in the reference."""
    g = torch.Generator().manual_seed(7)
    fits = torch.randn(1000, 3, generator=g)
    fits[:, 0] = 3e38                     # constant, at the edge of float32 (a float32 sum overflows)
    fits[5, 1] = 1e19                     # one outlier: its square (1e38) fits, a float32 sum of squares would not
    fits[:, 2] = fits[:, 1] * 1e-3 + fits[:, 2]
    beyond = torch.tensor([[-1.5946e38, 1.0], [-8.4532e37, 2.0], [6.1120e37, 0.5], [-5.9418e37, 3.0], [-1.2519e38, 1.0]])
    beyond_by_one = fits.clone()
    beyond_by_one[7, 2] = 3e19            # (3e19 - mean)^2 overflows float32
    with ek.use_backend("reference"):
        want_fits, want_beyond = ek.coherence_loss(fits, squared=True), ek.coherence_loss(beyond)
        assert torch.isnan(ek.coherence_loss(beyond_by_one))
    exact = np.corrcoef(fits[:, 1:].double().numpy(), rowvar=False)
    # the constant column: R_00 = 0 (eps > 0), so it adds (0 - 1)^2 = 1
    assert want_fits.item() == pytest.approx(1 + 2 * exact[0, 1] ** 2, rel=1e-4, abs=1e-5)
    assert torch.isnan(want_beyond)
    with ek.use_backend(backend):
        got_fits, got_beyond = ek.coherence_loss(fits, squared=True), ek.coherence_loss(beyond)
        assert torch.isnan(ek.coherence_loss(beyond_by_one))
    torch.testing.assert_close(got_fits, want_fits, rtol=1e-4, atol=1e-5)
    assert torch.isnan(got_beyond)
