"""The CPU int8 product of Int8Linear for few rows, by fbgemm's prepacked int8 GEMM.

    out[i, j] = float32(float32( sum_k (qx[i, k] - zero_point) * w[j, k] ) * scale[j])

(the exact int32 sum converted once, times the layer's per-channel scale,
one more rounding) with ``qx`` (m, k) int8 activation codes and ``w`` (n, k)
int8 weight codes: the same value as
``(torch._int_mm(qx, w.t()) - zero_point * w.sum(1)).float() * scale`` and as
``_onednn_int8.product``.

The op is ``torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32``
(fbgemm's int8 linear with the activation's quantization given, fp32 out;
the kernel torch.ao's ``quantize_dynamic`` Linear runs) with the weight packed
once (``quantized.linear_prepack`` of the codes as a qint8 tensor with the
per-channel scales ``scale`` and zero points 0, no bias). It quantizes its
float input with the scale and zero point it is given: it gets the integers
v = qx - zero_point as floats with scale 1.0 and zero point 128 + zero_point,
so its codes are v + 128 + zero_point = qx + 128 (exact, in [0, 255]), it
subtracts 128 + zero_point again in its exact int32 sum, and its output is
float32(sum_k v w) * (1.0 * scale[j]), fbgemm's own rescale. This is how the
layer's own activation codes (per row or per tensor, symmetric or affine)
reach fbgemm unchanged, and why one call gives the product with the weight
scales applied. The float buffers for v are kept per thread and row count
(:class:`_Buffers`): one copy of the codes into them per call, no allocation.

Why: for 2-16 rows where our own kernel (``_int8_gemv``) does not apply
(affine activations, a bfloat16 layer, a CPU without AVX-512 VNNI)
fbgemm's packed product is the fastest exact int8 product here
(torch._int_mm reorders the weight on every call; oneDNN's packed kernel pays
a larger fixed cost per call): the figures are in
``eitp_kernels.nn.int8.cpu_int8_product``.

Whether it is used is decided once per process by a probe (:func:`available`)
that requires the op and bit-equality with ``torch._int_mm`` times the scales
on extreme codes (all +-127 activations against +-127 weights, and zero
points at both ends): a CPU without VNNI, whose fbgemm kernels add u8 x s8
pairs in saturating int16 (the reason torch.ao quantizes activations to 7
bits there), fails it and keeps the other products.
"""
from __future__ import annotations

import functools
import threading
import warnings

import torch

# (255 * 128) per term in the int32 sum, before the zero point's correction.
MAX_K = (2**31 - 1) // (255 * 128)
# k = 1 gives wrong sums for n > 1 (torch 2.14's fbgemm; every k from 2 to 40 and 63-257 was exact).
MIN_K = 2


def applies(k: int) -> bool:
    """Whether an (m, k) x (k, n) CPU int8 product can go to fbgemm here."""
    return MIN_K <= k <= MAX_K and available()


def available() -> bool:
    """The ops exist under the current quantized engine (``torch.backends.quantized.engine``:
    "x86" or "fbgemm" run fbgemm) and match torch._int_mm times the scales exactly on
    extreme codes and zero points; probed once per engine."""
    return _probe(torch.backends.quantized.engine)


@functools.lru_cache(maxsize=None)
def _probe(engine: str) -> bool:
    try:
        k = 64
        qx = torch.full((3, k), 127, dtype=torch.int8)
        qx[1] = -127
        qx[2] = torch.arange(k, dtype=torch.int8) - 32
        w = torch.full((16, k), 127, dtype=torch.int8)
        w[1::2] = -127
        w[2, ::3] = 0
        scale = torch.linspace(1e-4, 3.0, 16)
        packed = PackedWeight()
        acc = torch._int_mm(qx, w.t())
        sums = w.sum(1, dtype=torch.int32)
        return all(torch.equal(product(qx, zp, packed.of(w, scale)), (acc - zp * sums).float() * scale)
                   for zp in (0, -128, 127, 5))
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return False


class PackedWeight:
    """fbgemm's packed copy of an int8 weight (n, k) with per-channel scales, rebuilt when the weight or the scales are
    replaced or written in place (their version counters) or the quantized
    engine changes. It holds references to the tensors it packed, so their
    memory cannot be reused by others while the cache compares identities.
    Memory: one more int8 copy of the weight. Not copyable (an opaque packed
    object): owners drop it when copied or pickled."""

    def __init__(self) -> None:
        self._tensors: tuple = (None, None)
        self._key = None
        self._packed = None

    def of(self, weight: torch.Tensor, scale: torch.Tensor | None = None):
        """The packed weight; ``scale`` (float32 (n,)) default: 1.0 per channel."""
        key = (weight._version, None if scale is None else scale._version, torch.backends.quantized.engine)
        if self._tensors[0] is not weight or self._tensors[1] is not scale or self._key != key:
            n = weight.shape[0]
            scales = torch.ones(n, dtype=torch.float64) if scale is None else scale.to(torch.float64)
            with warnings.catch_warnings():  # quantized tensors' deprecation notice (the op itself is current)
                warnings.simplefilter("ignore", UserWarning)
                codes = torch._make_per_channel_quantized_tensor(weight.contiguous(), scales, torch.zeros(n, dtype=torch.long), 0)
                self._packed = torch.ops.quantized.linear_prepack(codes, None)
            self._tensors, self._key = (weight, scale), key
        return self._packed


class _Buffers(threading.local):
    """Per thread: (m, k) -> an (m, k) float32 buffer; a few shapes are kept (the oldest dropped)."""

    LIMIT = 32

    def __init__(self) -> None:
        self.entries: dict = {}

    def get(self, m: int, k: int) -> torch.Tensor:
        buffer = self.entries.get((m, k))
        if buffer is None:
            if len(self.entries) >= self.LIMIT:
                del self.entries[next(iter(self.entries))]
            buffer = self.entries[(m, k)] = torch.empty(m, k)
        return buffer


_BUFFERS = _Buffers()


def product(qx: torch.Tensor, zero_point: int, packed) -> torch.Tensor:
    """float32 (m, n): float32(sum_k (qx - zero_point) w^T) * scale, the sum
    exact; ``packed`` is :meth:`PackedWeight.of` the weight and scales. A new tensor."""
    zero_point = int(zero_point)
    values = _BUFFERS.get(*qx.shape).copy_(qx)
    if zero_point:
        values.sub_(zero_point)
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(values, 1.0, 128 + zero_point, packed)
