"""Benchmark of Int8Linear (eitp_kernels.nn): a large and a small square
layer (4096 and 1024 features; quick: 1024 and 256) at batch 1, 8, 64 and
512, and the 64-512-512-10 MLP exported with export_int8 / load_int8 at batch
1 and 64.

Each case times Int8Linear (``fn``, its ``matmul="auto"`` paths: int8 where
faster, weight-only int8 on a GPU for 1-16 rows, else the cached dequantized
weight; ``eitp_kernels.nn.int8_summary``). Its baseline (``eager``, so the
table's "x eager" column is the speedup) is the fp32 source: nn.Linear (or
the MLP of nn.Linear) holding the dequantized int8 weights; its ``compile``
row is torch.compile of it. Alternatives: on the CPU
``torch.ao.quantization.quantize_dynamic`` of that nn.Linear ({nn.Linear},
qint8: fbgemm int8 with per-tensor weight scales and dynamic per-tensor
activations, reduce_range); on a GPU the same nn.Linear in bf16 (weights and
input converted once, outside the timing).

Targets: on the CPU at least quantize_dynamic's speed at every batch; the
MLP at least 0.9x its fp32 source at batch 1 and 1.0x at batch 64; on a GPU
(4096 x 4096) at least 3x fp32 and 1.3x bf16 at batch 1 and 2x fp32 at batch 64.

The output check allows the activation rounding: against fp32 |diff| <= 0.05
(per-row int8 activations move an output of rms ~0.58 by ~0.005 rms), for
quantize_dynamic <= 0.15 (its per-tensor scales round more coarsely), for
bf16 <= 0.05. flops = 2 m k n (the GFLOP/s column counts multiply-adds of
either kind).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from eitp_kernels import _backends
from eitp_kernels.bench.cases import Alternative, Case, Target, register_suite

OP = "int8_linear"
BATCHES = (1, 8, 64, 512)
MLP_WIDTHS = (64, 512, 512, 10)
MLP_BATCHES = {1: 0.9, 64: 1.0}  # batch -> the fp32 source's median / the int8 model's, at least


def _mlp(widths) -> nn.Sequential:
    layers = []
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(k, n)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


@functools.lru_cache(maxsize=4)
def _models(widths: tuple, device_type: str):
    """(fp32 source, int8 model, quantize_dynamic model or None, bf16 model or None) with the same int8 weights."""
    from eitp_kernels import nn as enn

    torch.manual_seed(0)
    qat = enn.prepare_qat(_mlp(widths))
    int8 = enn.load_int8(enn.export_int8(qat), lambda: _mlp(widths))
    fp32 = _mlp(widths)
    with torch.no_grad():
        for source, layer in zip(fp32, int8):
            if isinstance(source, nn.Linear):
                source.weight.copy_(layer.weight())
                source.bias.copy_(layer.bias)
    device = torch.device(device_type)
    dynamic = bf16 = None
    if device_type == "cpu":
        dynamic = torch.ao.quantization.quantize_dynamic(_copy(fp32), {nn.Linear}, dtype=torch.qint8)
    else:
        bf16 = _copy(fp32).to(device=device, dtype=torch.bfloat16).requires_grad_(False)
    for module in (fp32, int8):
        module.to(device).requires_grad_(False)
    return fp32, int8, dynamic, bf16


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def _call(widths: tuple, which: int):
    def run(x):
        with torch.no_grad():
            return _models(widths, x.device.type)[which](x)
    return run


def _inputs(batch: int, features: int):
    def make(device):
        generator = torch.Generator().manual_seed(batch)
        return (torch.randn(batch, features, generator=generator).to(device),)
    return make


def _alternatives(widths: tuple) -> tuple[Alternative, ...]:
    def bf16_call(inputs):
        x = inputs[0].to(torch.bfloat16)
        model = _models(widths, x.device.type)[3]

        def run():
            with torch.no_grad():
                return model(x)
        return run

    return (
        Alternative("quantize_dynamic", "torch.ao.quantization.quantize_dynamic(nn.Linear, qint8), per-tensor scales",
                    lambda inputs: functools.partial(_call(widths, 2), *inputs),
                    agrees=lambda out, expected: bool((out - expected).abs().max() <= 0.15),
                    convention="per-tensor weight and activation scales (ours: per channel / per row)",
                    devices=("cpu",)),
        Alternative("bf16", "nn.Linear in bfloat16 (weights and input converted once, untimed)", bf16_call,
                    to_reference=lambda out: out.float(),
                    agrees=lambda out, expected: bool((out - expected).abs().max() <= 0.05),
                    convention="bfloat16 weights and activations", devices=("cuda",)),
    )


def _targets(device: torch.device, side: int, batch: int, quick: bool) -> tuple[Target, ...]:
    if quick:
        return ()
    if device.type == "cpu":
        return (Target("quantize_dynamic", 1.0),)
    if side == 4096 and batch == 1:
        return Target("eager", 3.0), Target("bf16", 1.3)
    if side == 4096 and batch == 64:
        return (Target("eager", 2.0),)
    return ()


def build(device: torch.device, quick: bool) -> list[Case]:
    cases = []
    for side in ((1024, 256) if quick else (4096, 1024)):
        widths = (side, side)
        for batch in BATCHES:
            cases.append(Case(op=OP, shape=f"b{batch} {side}x{side}", dtype=torch.float32,
                              make_inputs=_inputs(batch, side), fn=_call(widths, 1), reference=_call(widths, 0),
                              implemented=_backends.IMPLEMENTED, flops=2 * batch * side * side, rtol=0.0, atol=0.05,
                              alternatives=_alternatives(widths), targets=_targets(device, side, batch, quick)))
    macs = sum(k * n for k, n in zip(MLP_WIDTHS, MLP_WIDTHS[1:]))
    for batch, ratio in MLP_BATCHES.items():
        cases.append(Case(op=OP, shape=f"b{batch} mlp {'-'.join(map(str, MLP_WIDTHS))}", dtype=torch.float32,
                          make_inputs=_inputs(batch, MLP_WIDTHS[0]), fn=_call(MLP_WIDTHS, 1),
                          reference=_call(MLP_WIDTHS, 0), implemented=_backends.IMPLEMENTED, flops=2 * batch * macs,
                          rtol=0.0, atol=0.05, alternatives=_alternatives(MLP_WIDTHS),
                          targets=() if quick else (Target("eager", ratio, source="fp32 source model"),)))
    return cases


register_suite(OP, build)
