"""The CPU int8 product of Int8Linear by oneDNN's u8 x s8 kernel.

    out[i, j] = float32(float32( sum_k (qx[i, k] - zero_point) * w[j, k] ) * scale[j])

(the exact int32 sum converted once, times the layer's per-channel scale,
one more rounding) with ``qx`` (m, k) int8 activation codes and ``w`` (n, k)
int8 weight codes: the same value as
``(torch._int_mm(qx, w.t()) - zero_point * w.sum(1)).float() * scale``.
oneDNN's fast int8 kernels take unsigned activations, so the codes go in
shifted by 128 (the sign bit flipped) with the zero point 128 + zero_point,
which oneDNN subtracts exactly through the weight's column sums. The op is
``torch.ops.onednn.qlinear_pointwise``, the one inductor's x86 int8 lowering
uses, with the weight packed once (``qlinear_prepack``), activation scale 1
and the layer's scales as the weight's per-channel scales: the int32 ->
float32 conversion and the one product with scale[j] are the only roundings.

Why: it is the fastest exact int8 product here for more than 16 rows (the
figures are in ``eitp_kernels.nn.int8.cpu_int8_product``).

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


def applies(k: int) -> bool:
    """Whether an (m, k) x (k, n) CPU int8 product can go to oneDNN here (read
    on every call: ``torch.backends.mkldnn.enabled`` may be switched off later)."""
    return k <= MAX_K and bool(torch.backends.mkldnn.enabled) and available()


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """The op exists, oneDNN is enabled, and it matches torch._int_mm times the scales exactly on extreme codes."""
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
        scale = torch.linspace(1e-4, 3.0, 16)
        packed = PackedWeight()
        acc = torch._int_mm(qx, w.t())
        return torch.equal(product(qx, 0, packed.of(w, scale)), acc.float() * scale) and torch.equal(
            product(qx, 5, packed.of(w, scale)), (acc - 5 * w.sum(1, dtype=torch.int32)).float() * scale)
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return False


class PackedWeight:
    """oneDNN's packed copy of an int8 weight (n, k) and its per-channel
    scales, rebuilt when the weight or the scales are replaced or written in
    place (their version counters). It holds references to the tensors it
    packed, so their memory cannot be reused by others while the cache
    compares identities. Memory: one more int8 copy of the weight. Not
    copyable (an opaque oneDNN tensor): owners drop it when copied or pickled."""

    def __init__(self) -> None:
        self._tensors: tuple = (None, None)
        self._versions = None
        self._packed = self._scales = self._zero_points = None

    def of(self, weight: torch.Tensor, scale: torch.Tensor | None = None):
        """The packed weight; ``scale`` (float32 (n,)) default: 1.0 per channel."""
        versions = (weight._version, None if scale is None else scale._version)
        if self._tensors[0] is not weight or self._tensors[1] is not scale or self._versions != versions:
            n = weight.shape[0]
            self._packed = torch.ops.onednn.qlinear_prepack(weight, None)
            self._scales = (torch.ones(n, dtype=torch.float32) if scale is None
                            else scale.to(torch.float32).contiguous())
            self._zero_points = torch.zeros(n, dtype=torch.long)
            self._tensors, self._versions = (weight, scale), versions
        return self._packed, self._scales, self._zero_points


def product(qx: torch.Tensor, zero_point: int, packed) -> torch.Tensor:
    """float32 (m, n): float32(sum_k (qx - zero_point) w^T) * scale, the sum
    exact; ``packed`` is :meth:`PackedWeight.of` the weight and scales."""
    weight, scales, zero_points = packed
    shifted = qx.contiguous().view(torch.uint8).bitwise_xor(128)  # qx + 128: two's complement with the sign bit flipped
    return torch.ops.onednn.qlinear_pointwise(shifted, 1.0, 128 + int(zero_point), weight, scales, zero_points,
                                              None, 1.0, 0, torch.float32, "none", [], "")
