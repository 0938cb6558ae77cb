"""The CPU int8 product of Int8Linear by oneDNN's u8 x s8 kernel.

    out[i, j] = float32( sum_k (qx[i, k] - zero_point) * w[j, k] )      (exact int32 sum, one rounding)

with ``qx`` (m, k) int8 activation codes and ``w`` (n, k) int8 weight codes:
the same value as ``torch._int_mm(qx, w.t()) - zero_point * w.sum(1)``
converted to float32. oneDNN's fast int8 kernels take unsigned activations,
so the codes go in shifted by 128 (the sign bit flipped) with the zero point
128 + zero_point, which oneDNN subtracts exactly through the weight's column
sums. The op is ``torch.ops.onednn.qlinear_pointwise``, the one inductor's x86
int8 lowering uses, with the weight packed once (``qlinear_prepack``) and
unit scales, so only the int32 -> float32 conversion rounds.

Why: it is the faster int8 product for m >= 2 rows (at 4096 x 4096 and m =
64, 2 threads: 1.76 ms against torch._int_mm's 2.70; m = 1 stays with
torch._int_mm, 0.33 against 0.38 ms), measured by
``python benchmarks/native/int8_matmul_ab.py``.

Whether it is used is decided once per process by a probe (:func:`available`)
that requires the op and bit-equality with ``torch._int_mm`` on extreme codes
(all +-127 activations against +-127 weights: a CPU without VNNI whose
kernels add u8 x s8 pairs in saturating int16 would fail it), so a torch
without the op, or one whose op is inexact, keeps ``torch._int_mm``.
"""
from __future__ import annotations

import functools

import torch

# (255 * 128) per term in the int32 sum, before the zero point's correction.
MAX_K = (2**31 - 1) // (255 * 128)
# Below this many rows torch._int_mm is the faster one (see the module docstring).
MIN_ROWS = 2


def applies(m: int, k: int) -> bool:
    """Whether an (m, k) x (k, n) CPU int8 product goes to oneDNN here (read
    on every call: ``torch.backends.mkldnn.enabled`` may be switched off later)."""
    return m >= MIN_ROWS and k <= MAX_K and bool(torch.backends.mkldnn.enabled) and available()


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """The op exists, oneDNN is enabled, and it matches torch._int_mm exactly on extreme codes."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    try:
        k = 64
        qx = torch.full((4, k), 127, dtype=torch.int8)
        qx[1] = -127
        qx[2, ::2] = -127
        qx[3] = torch.arange(k, dtype=torch.int8) - 32
        w = torch.full((16, k), 127, dtype=torch.int8)
        w[1::2] = -127
        w[2, ::3] = 0
        packed = PackedWeight()
        acc = torch._int_mm(qx, w.t())
        return torch.equal(product(qx, 0, packed.of(w)), acc.float()) and torch.equal(
            product(qx, 5, packed.of(w)), (acc - 5 * w.sum(1, dtype=torch.int32)).float())
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return False


class PackedWeight:
    """oneDNN's packed copy of an int8 weight (n, k), rebuilt when the weight
    tensor is replaced or written in place (its version counter). It holds a
    reference to the weight it packed, so that tensor's memory cannot be reused
    by another while the cache compares identities. Memory: one more int8 copy
    of the weight. Not copyable (an opaque oneDNN tensor): owners drop it when
    copied or pickled."""

    def __init__(self) -> None:
        self._weight: torch.Tensor | None = None
        self._version = -1
        self._packed = self._unit_scales = self._zero_points = None

    def of(self, weight: torch.Tensor):
        if self._weight is not weight or self._version != weight._version:
            n = weight.shape[0]
            self._packed = torch.ops.onednn.qlinear_prepack(weight, None)
            self._unit_scales = torch.ones(n, dtype=torch.float32)
            self._zero_points = torch.zeros(n, dtype=torch.long)
            self._weight, self._version = weight, weight._version
        return self._packed, self._unit_scales, self._zero_points


def product(qx: torch.Tensor, zero_point: int, packed) -> torch.Tensor:
    """float32 (m, n): sum_k (qx - zero_point) w^T, exact before the one
    conversion; ``packed`` is :meth:`PackedWeight.of` the weight."""
    weight, unit_scales, zero_points = packed
    shifted = qx.contiguous().view(torch.uint8).bitwise_xor(128)  # qx + 128: two's complement with the sign bit flipped
    return torch.ops.onednn.qlinear_pointwise(shifted, 1.0, 128 + int(zero_point), weight, unit_scales, zero_points,
                                              None, 1.0, 0, torch.float32, "none", [], "")
