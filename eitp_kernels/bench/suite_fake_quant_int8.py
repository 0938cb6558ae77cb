"""Benchmark cases of int8 quantization (DESIGN §2.3): fake-quant per channel,
per tensor and per group of 128, quantize and dequantize per channel.

Bytes moved (minimum): fake-quant reads and writes x (2 x 4 B/elem fp32);
quantize reads x and writes codes (4 + 1 B/elem) plus scales; dequantize the
reverse. The "% copy bw" column is the issue's memory floor: quantize per
channel should be within 2x of a plain copy, i.e. >= 50%.
"""
from __future__ import annotations

import functools

import torch

import eitp_kernels
from eitp_kernels import reference
from eitp_kernels.bench.cases import Case, randn_inputs, register_suite, size_label
from eitp_kernels.ops import quant

OP = "fake_quant_int8"
GRANULARITIES = (("channel", {"granularity": "channel", "axis": 0}),
                 ("tensor", {"granularity": "tensor"}),
                 ("group128", {"granularity": "group", "group_size": 128}))


def build(device: torch.device, quick: bool) -> list[Case]:
    side = 1024 if quick else 4096
    shape, n = (side, side), side * side
    cases = [
        Case(op=OP, shape=f"{size_label(side, side)} {label}", dtype=torch.float32,
             make_inputs=randn_inputs(shape, torch.float32),
             fn=functools.partial(eitp_kernels.fake_quant_int8, **kwargs),
             reference=functools.partial(reference.fake_quant_int8, **kwargs),
             implemented=quant.IMPLEMENTED, bytes=8 * n)
        for label, kwargs in GRANULARITIES
    ]
    cases.append(_against_torch_fake_quantize(side))
    channel = {"granularity": "channel", "axis": 0}
    cases.append(Case(op="quantize_int8", shape=f"{size_label(side, side)} channel", dtype=torch.float32,
                      make_inputs=randn_inputs(shape, torch.float32),
                      fn=functools.partial(eitp_kernels.quantize_int8, **channel),
                      reference=functools.partial(reference.quantize_int8, **channel),
                      implemented=quant.IMPLEMENTED, bytes=5 * n + 4 * side))
    cases.append(Case(op="dequantize_int8", shape=f"{size_label(side, side)} channel", dtype=torch.float32,
                      make_inputs=_codes_and_scales(shape),
                      fn=functools.partial(eitp_kernels.dequantize_int8, **channel),
                      reference=functools.partial(reference.dequantize_int8, **channel),
                      implemented=quant.IMPLEMENTED, bytes=5 * n + 4 * side))
    return cases


def _codes_and_scales(shape):
    def make(device):
        generator = torch.Generator().manual_seed(0)
        q = torch.randint(-127, 128, shape, generator=generator, dtype=torch.int8)
        scale = torch.rand(shape[0], generator=generator) + 0.01
        return q.to(device), scale.to(device)
    return make


def _against_torch_fake_quantize(side: int) -> Case:
    """'eager' = torch.fake_quantize_per_channel_affine given precomputed scales
    (the scale computation is not timed for it). PyTorch multiplies by 1/scale
    where we divide, so a value on a rounding tie can land one step away: the
    check allows one quantization step."""
    def make(device):
        (x,) = randn_inputs((side, side), torch.float32)(device)
        scale = (x.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        return x, scale, torch.zeros(side, dtype=torch.int32, device=device)

    def torch_fake_quantize(x, scale, zero_point):
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, 0, -127, 127)

    def ours(x, scale, zero_point):
        return eitp_kernels.fake_quant_int8(x, granularity="channel", axis=0)

    return Case(op=OP, shape=f"{size_label(side, side)} channel eager=torch.fake_quantize", dtype=torch.float32,
                make_inputs=make, fn=ours, reference=torch_fake_quantize, implemented=quant.IMPLEMENTED,
                bytes=8 * side * side, rtol=0.0, atol=0.05)


register_suite(OP, build)
