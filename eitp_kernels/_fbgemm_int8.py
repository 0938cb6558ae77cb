"""The CPU int8 product of Int8Linear for a few rows, by fbgemm's prepacked int8 GEMM.

    out[i, j] = float32( sum_k (qx[i, k] - zero_point) * w[j, k] )      (exact int32 sum, one rounding)

with ``qx`` (m, k) int8 activation codes and ``w`` (n, k) int8 weight codes:
the same value as ``torch._int_mm(qx, w.t()) - zero_point * w.sum(1)``
converted to float32, and as ``_onednn_int8.product``.

The op is ``torch.ops.quantized.linear_dynamic`` (what torch.ao's
``quantize_dynamic`` Linear calls) with the weight packed once
(``quantized.linear_prepack`` of the codes as a qint8 tensor of scale 1.0,
zero point 0, no bias). It quantizes its float input itself, per tensor:
with ``reduce_range=False``, scale = (max - min) / 255 over [min, max]
widened to include 0, zero point = -min / scale, codes round(x / scale) +
zero point. So it gets the integers v = qx - zero_point as floats plus one
extra row whose first two elements are -128 - zero_point and 127 -
zero_point (the rest 0): the tensor's range is then exactly [-128 -
zero_point, 127 - zero_point] whatever the codes, its scale 255 / 255 = 1.0
and its zero point 128 + zero_point, so its own codes are v + 128 + zero_point
= qx + 128 (exact), and its output is float32(sum_k v w) * (1.0 * 1.0). The
extra row's output is dropped. This is how the layer's own activation codes
(per row or per tensor, symmetric or affine) reach fbgemm unchanged.

Why: for 2-16 rows fbgemm's packed product is the fastest exact int8 product
here (torch._int_mm reorders the weight on every call: 10 ms at 4096 x 4096,
8 rows; oneDNN's packed kernel pays a fixed cost per call); one row stays with
torch._int_mm and more than 16 go to oneDNN (``MIN_ROWS``, ``MAX_ROWS``);
measured by ``python benchmarks/native/int8_matmul_ab.py``.

Whether it is used is decided once per process by a probe (:func:`available`)
that requires the op and bit-equality with ``torch._int_mm`` on extreme codes
(all +-127 activations against +-127 weights, and zero points at both ends):
a CPU without VNNI, whose fbgemm kernels add u8 x s8 pairs in saturating int16
(the reason torch.ao quantizes activations to 7 bits there), fails it and
keeps the other products.
"""
from __future__ import annotations

import functools
import warnings

import torch

# (255 * 128) per term in the int32 sum, before the zero point's correction.
MAX_K = (2**31 - 1) // (255 * 128)
# Rows sent to fbgemm: one row is faster with torch._int_mm (oneDNN's GEMV, no packing), more
# than MAX_ROWS with oneDNN's packed product (_onednn_int8).
MIN_ROWS, MAX_ROWS = 2, 16


def applies(m: int, k: int) -> bool:
    """Whether an (m, k) x (k, n) CPU int8 product goes to fbgemm here."""
    return MIN_ROWS <= m <= MAX_ROWS and 2 <= k <= MAX_K and available()


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """The ops exist and match torch._int_mm exactly on extreme codes and zero points."""
    try:
        k = 64
        qx = torch.full((3, k), 127, dtype=torch.int8)
        qx[1] = -127
        qx[2] = torch.arange(k, dtype=torch.int8) - 32
        w = torch.full((16, k), 127, dtype=torch.int8)
        w[1::2] = -127
        w[2, ::3] = 0
        packed = PackedWeight()
        acc = torch._int_mm(qx, w.t())
        sums = w.sum(1, dtype=torch.int32)
        return all(torch.equal(product(qx, zp, packed.of(w)), (acc - zp * sums).float()) for zp in (0, -128, 127, 5))
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return False


class PackedWeight:
    """fbgemm's packed copy of an int8 weight (n, k), rebuilt when the weight
    tensor is replaced or written in place (its version counter) or the
    quantized engine changes. It holds a reference to the weight it packed, so
    that tensor's memory cannot be reused by another while the cache compares
    identities. Memory: one more int8 copy of the weight. Not copyable (an
    opaque packed object): owners drop it when copied or pickled."""

    def __init__(self) -> None:
        self._weight: torch.Tensor | None = None
        self._key = None
        self._packed = None

    def of(self, weight: torch.Tensor):
        key = (weight._version, torch.backends.quantized.engine)
        if self._weight is not weight or self._key != key:
            with warnings.catch_warnings():  # quantized tensors' deprecation notice (the op itself is current)
                warnings.simplefilter("ignore", UserWarning)
                unit = torch._make_per_tensor_quantized_tensor(weight.contiguous(), 1.0, 0)
                self._packed = torch.ops.quantized.linear_prepack(unit, None)
            self._weight, self._key = weight, key
        return self._packed


@functools.lru_cache(maxsize=64)
def _range_row(k: int, zero_point: int) -> torch.Tensor:
    """(1, k) float32: -128 - zero_point, 127 - zero_point, then zeros (see the module docstring)."""
    row = torch.zeros(1, k)
    row[0, 0], row[0, 1] = -128 - zero_point, 127 - zero_point
    return row


def product(qx: torch.Tensor, zero_point: int, packed) -> torch.Tensor:
    """float32 (m, n): sum_k (qx - zero_point) w^T, exact before the one
    conversion; ``packed`` is :meth:`PackedWeight.of` the weight."""
    zero_point = int(zero_point)
    values = qx.to(torch.float32)
    if zero_point:
        values.sub_(zero_point)
    rows = torch.cat((values, _range_row(qx.shape[1], zero_point)))
    return torch.ops.quantized.linear_dynamic(rows, packed, False)[: qx.shape[0]]
