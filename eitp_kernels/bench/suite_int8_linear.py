"""Benchmark of Int8Linear's int8 path: dynamic per-row activation
quantization (quantize_int8 on the library's backend) + torch._int_mm + one
rescale, for a 4096x4096 layer at batch 1, 64 and 512 (quick: 1024x1024).

One case per batch timing Int8Linear (``fn``). Its baseline (``eager``, so
the table's "x eager" column is the speedup) is nn.Linear holding the
dequantized int8 weight (the same function, in fp32); its ``compile`` row is
torch.compile of it. On the CPU, ``quantize_dynamic`` is a row of its own:
``torch.ao.quantization.quantize_dynamic`` of that nn.Linear ({nn.Linear},
qint8: fbgemm/onednn int8 with per-tensor weight scales and dynamic
per-tensor activations).

The output check allows the activation rounding: against fp32 |diff| <= 0.05
(per-row int8 activations move an output of rms ~0.58 by ~0.005 rms), for
quantize_dynamic <= 0.15 (its per-tensor scales round more coarsely). flops =
2 m k n (the GFLOP/s column counts multiply-adds of either kind).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from eitp_kernels import _backends
from eitp_kernels.bench.cases import Alternative, Case, Target, register_suite

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
    dynamic = Alternative(
        "quantize_dynamic", "torch.ao.quantization.quantize_dynamic(nn.Linear, qint8), per-tensor scales",
        lambda inputs: functools.partial(_call(side, 2), *inputs),
        agrees=lambda out, expected: bool((out - expected).abs().max() <= 0.15),
        convention="per-tensor weight and activation scales (ours: per channel / per row)", devices=("cpu",))
    cases = []
    for batch in BATCHES:
        targets = (Target("eager", 2.0),) if batch == 64 and not quick else ()
        cases.append(Case(op=OP, shape=f"b{batch} {side}x{side}", dtype=torch.float32,
                          make_inputs=_inputs(batch, side), fn=_call(side, 1), reference=_call(side, 0),
                          implemented=_backends.IMPLEMENTED, flops=2 * batch * side * side, rtol=0.0, atol=0.05,
                          alternatives=(dynamic,), targets=targets))
    return cases


register_suite(OP, build)
