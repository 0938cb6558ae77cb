"""Benchmark of Int8Linear's int8 path (issue 14): dynamic per-row activation
quantization (quantize_int8 on the library's backend) + torch._int_mm + one
rescale, for a 4096x4096 layer at batch 1, 64 and 512 (quick: 1024x1024).

Two cases per batch, both timing the same Int8Linear (``fn``) and differing
in the baseline (``eager``, so the table's "x eager" column is the speedup):

* ``vs fp32 nn.Linear``: nn.Linear holding the dequantized int8 weight (the
  same function, in fp32); its ``compile`` row is torch.compile of it;
* ``vs quantize_dynamic`` (CPU only): ``torch.ao.quantization.quantize_dynamic``
  of that nn.Linear ({nn.Linear}, qint8: fbgemm/onednn int8 with per-tensor
  weight scales and dynamic per-tensor activations).

The output check allows the activation rounding: against fp32 |diff| <= 0.05
(per-row int8 activations move an output of rms ~0.58 by ~0.005 rms), against
quantize_dynamic <= 0.15 (its per-tensor scales round more coarsely). flops =
2 m k n (the GFLOP/s column counts multiply-adds of either kind).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from eitp_kernels.bench.cases import Case, register_suite
from eitp_kernels.ops import quant

OP = "int8_linear"
BATCHES = (1, 64, 512)


@functools.lru_cache(maxsize=1)
def _layers(side: int, device_type: str):
    """(fp32 nn.Linear, Int8Linear, quantize_dynamic module or None) with the same int8 weight."""
    from eitp_kernels import nn as enn

    torch.manual_seed(0)
    qat = enn.prepare_qat(nn.Sequential(nn.Linear(side, side)))
    int8 = enn.load_int8(enn.export_int8(qat), lambda: nn.Sequential(nn.Linear(side, side)))[0]
    fp32 = nn.Linear(side, side)
    with torch.no_grad():
        fp32.weight.copy_(int8.weight())
        fp32.bias.copy_(int8.bias)
    dynamic = None
    if device_type == "cpu":
        dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(fp32), {nn.Linear}, dtype=torch.qint8)[0]
    device = torch.device(device_type)
    for module in (fp32, int8):
        module.to(device).requires_grad_(False)
    return fp32, int8, dynamic


def _call(side: int, which: int):
    def run(x):
        with torch.no_grad():
            return _layers(side, x.device.type)[which](x)
    return run


def _inputs(batch: int, side: int):
    def make(device):
        generator = torch.Generator().manual_seed(batch)
        return (torch.randn(batch, side, generator=generator).to(device),)
    return make


def build(device: torch.device, quick: bool) -> list[Case]:
    side = 1024 if quick else 4096
    cases = []
    for batch in BATCHES:
        common = dict(op=OP, dtype=torch.float32, make_inputs=_inputs(batch, side), fn=_call(side, 1),
                      implemented=quant.IMPLEMENTED, flops=2 * batch * side * side, rtol=0.0)
        label = f"b{batch} {side}x{side}"
        cases.append(Case(shape=f"{label} vs fp32 nn.Linear", reference=_call(side, 0), atol=0.05, **common))
        if device.type == "cpu":
            cases.append(Case(shape=f"{label} vs quantize_dynamic", reference=_call(side, 2), atol=0.15, **common))
    return cases


register_suite(OP, build)
