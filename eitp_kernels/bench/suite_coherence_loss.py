"""Benchmark cases of coherence_loss (DESIGN §2.2): forward, and forward +
backward (the gradient w.r.t. x), for the issue's shapes.

GFLOP/s counts the standard cost of the correlation product, 2*N*D^2 flops
for the forward (the fused kernels do about half for self-correlation, so
this is the eager-equivalent rate) and 3x that for forward + backward.
"""
from __future__ import annotations

import torch

import eitp_kernels
from eitp_kernels import reference
from eitp_kernels.bench.cases import Case, randn_inputs, register_suite, size_label
from eitp_kernels.ops import coherence

OP = "coherence_loss"


def forward_and_grad(loss_fn):
    """x -> dL/dx through ``loss_fn`` (the time of one training step's share)."""
    def run(x):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x), x)
        return grad
    return run


def build(device: torch.device, quick: bool) -> list[Case]:
    shapes = ((512, 256), (128, 1024)) if quick else ((2048, 1024), (512, 4096))
    cases = []
    for n, d in shapes:
        flops = 2 * n * d * d
        cases.append(Case(op=OP, shape=f"{size_label(n, d)} fwd", dtype=torch.float32,
                          make_inputs=randn_inputs((n, d), torch.float32), fn=eitp_kernels.coherence_loss,
                          reference=reference.coherence_loss, implemented=coherence.IMPLEMENTED, flops=flops,
                          rtol=1e-4, atol=1e-6))
        cases.append(Case(op=OP, shape=f"{size_label(n, d)} fwd+bwd", dtype=torch.float32,
                          make_inputs=randn_inputs((n, d), torch.float32),
                          fn=forward_and_grad(eitp_kernels.coherence_loss),
                          reference=forward_and_grad(reference.coherence_loss), implemented=coherence.IMPLEMENTED,
                          flops=3 * flops, rtol=1e-4, atol=1e-7))
    return cases


register_suite(OP, build)
