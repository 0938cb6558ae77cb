"""Int8Linear's own CPU int8 product for a few rows, its epilogue included:
one call of ``eitp::int8_linear_rows``, or of ``eitp::int8_linear_float_rows``
with the rows' quantization (csrc/cpu/int8_linear_cpu.cpp, AVX-512 VNNI).

    out[i, j] = (float32(sum_k qx[i, k] w[j, k]) * weight_scale[j]) * row_scale[i] + bias[j]

each float step rounded on its own (no fused multiply-add), the sum exact in
int32: the value of ``torch._int_mm(qx, w.t()).float() * weight_scale``
times ``row_scale``, plus ``bias``, which is how Int8Linear's other products
finish (``eitp_kernels.nn.int8``). The weight is packed once
(:class:`PackedWeight`, :func:`pack`): k padded to a multiple of 4 and n to a
multiple of GROUP with zero codes, laid out (n / GROUP, k / 4, GROUP, 4) for
vpdpbusd, with the column sums the unsigned activations' offset needs.

Why: for a few rows the layer's cost was the steps around torch's int8
products (separate quantization, conversion, rescale and bias ops, each with
its fixed cost); this is one op after the row quantization, or one op in
all with it (:func:`float_product`). Used where a
probe (:func:`available`) found the op and bit-equality with torch._int_mm on
extreme codes: a CPU without AVX-512 VNNI (the op raises) keeps the others.
"""
from __future__ import annotations

import functools

import torch

from eitp_kernels import _extension

# Output channels per packed group: kInt8LinearGroup of csrc/kernels/int8_linear.h (the op checks it).
GROUP = 32
# (255 * 128) per term in the int32 sum, before the offset's correction.
MAX_K = (2**31 - 1) // (255 * 128)


def applies(k: int) -> bool:
    """Whether an (m, k) x (k, n) CPU int8 product can use the op here."""
    return k <= MAX_K and available()


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """The op exists and matches torch._int_mm's epilogue bit for bit on extreme codes."""
    if not _extension.load()[0]:
        return False
    try:
        k = 68
        qx = torch.full((5, k), 127, dtype=torch.int8)
        qx[1] = -127
        qx[2] = -128
        qx[3] = torch.arange(k, dtype=torch.int8) - 32
        w = torch.full((70, k), 127, dtype=torch.int8)
        w[1::2] = -127
        w[2, ::3] = 0
        w[3] = -128
        weight_scale = torch.linspace(1e-4, 3.0, 70)
        row_scale = torch.linspace(0.5, 2.0, 5).unsqueeze(1)
        bias = torch.linspace(-1.0, 1.0, 70)
        packed = PackedWeight().of(w)
        expected = (torch._int_mm(qx, w.t()).float() * weight_scale) * row_scale
        if not (torch.equal(product(qx, row_scale, packed, weight_scale, None), expected)
                and torch.equal(product(qx, row_scale, packed, weight_scale, bias), expected + bias)):
            return False
        x = torch.linspace(-3.0, 5.0, 5 * k).reshape(5, k)
        x[1, 3], x[2] = float("nan"), 0.0
        codes, scales, _ = torch.ops.eitp.quantize_int8_rows.default(x, None, None, True)
        return torch.equal(float_product(x, packed, weight_scale, bias),
                           product(codes, scales, packed, weight_scale, bias))
    except (RuntimeError, AttributeError, TypeError, NotImplementedError, ValueError):
        return False  # ValueError: an extension built for another packing refuses this one


def pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed (n_pad / GROUP, k_pad / 4, GROUP, 4) int8, column sums (n_pad,) int32) of an (n, k) int8 weight."""
    n, k = weight.shape
    n_pad, k_pad = -(-n // GROUP) * GROUP, -(-k // 4) * 4
    padded = torch.zeros(n_pad, k_pad, dtype=torch.int8)
    padded[:n, :k] = weight
    packed = padded.view(n_pad // GROUP, GROUP, k_pad // 4, 4).permute(0, 2, 1, 3).contiguous()
    return packed, padded.sum(dim=1, dtype=torch.int32)


class PackedWeight:
    """:func:`pack` of an int8 weight, rebuilt when the weight is replaced or
    written in place (its version counter). It holds a reference to the
    weight it packed, so its memory cannot be reused by another while the
    cache compares identities. Memory: one more int8 copy of the weight
    (padded). Dropped by owners when copied or pickled (rebuilt on use)."""

    def __init__(self) -> None:
        self._weight: torch.Tensor | None = None
        self._version = -1
        self._packed: tuple | None = None

    def of(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._weight is not weight or self._version != weight._version:
            self._packed = pack(weight.detach())
            self._weight, self._version = weight, weight._version
        return self._packed


def float_product(x: torch.Tensor, packed: tuple[torch.Tensor, torch.Tensor], weight_scale: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`product` of float32 (m, k) activations ``x`` quantized per row
    (symmetric) inside the op: ``qx, row_scale = quantize_int8(x,
    granularity="channel", axis=0)``'s codes and scales bit for bit, then the
    module docstring's formula. One op instead of two; the threads share the
    rows' quantization (AVX-512, straight into the bytes the product reads)
    and then the product."""
    return torch.ops.eitp.int8_linear_float_rows.default(x, packed[0], packed[1], weight_scale, bias)


def product(qx: torch.Tensor, row_scale: torch.Tensor, packed: tuple[torch.Tensor, torch.Tensor],
            weight_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """float32 (m, n): the formula of the module docstring; ``packed`` is
    :meth:`PackedWeight.of` the weight, ``row_scale`` float32 (m,) or (m, 1),
    ``bias`` float32 (n,) or None."""
    return torch.ops.eitp.int8_linear_rows.default(qx, row_scale, packed[0], packed[1], weight_scale, bias)
