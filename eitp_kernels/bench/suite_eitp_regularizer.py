"""Benchmark of the EIT-P regularizer's cost per training step.

One step = forward of an MLP (batch 256, 512 -> 1024 -> 1024 -> 10, tanh),
cross-entropy, EITPRegularizer on both hidden layers (differentiable entropy
+ coherence loss), backward. Rows: the step on the fused backends against
the same step with every eitp op forced to the reference backend ('eager'),
and a plain step without the regularizer for scale ("plain"; "+reg" is the
regularized step): the overhead of the regularizer is (step - plain step).
"""
from __future__ import annotations

import torch
from torch import nn

import eitp_kernels
from eitp_kernels import _backends
from eitp_kernels.bench.cases import Case, register_suite

OP = "eitp_regularizer"


def _step_fn(batch: int, width: int, regularized: bool, backend: str | None):
    from eitp_kernels.training import EITPRegularizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))
    reg = EITPRegularizer(model, ["1", "3"], lambda_coherence=1e-3, bins=64) if regularized else None

    def step(x, y):
        model.to(x.device)
        with eitp_kernels.use_backend(backend):
            loss = nn.functional.cross_entropy(model(x), y)
            if reg is not None:
                loss = loss + reg()[0]
            grads = torch.autograd.grad(loss, list(model.parameters()))
        return grads[0]
    return step


def build(device: torch.device, quick: bool) -> list[Case]:
    batch, width = (64, 256) if quick else (256, 1024)

    def make(dev):
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(batch, 512, generator=generator).to(dev),
                torch.randint(0, 10, (batch,), generator=generator).to(dev))

    label = f"MLP b{batch} w{width}"
    # The plain step: same model and data, no regularizer ('eager' = itself).
    plain = Case(op=OP, shape=f"{label} plain", dtype=torch.float32, make_inputs=make,
                 fn=_step_fn(batch, width, False, None), reference=_step_fn(batch, width, False, None),
                 implemented=_backends.IMPLEMENTED, rtol=1e-4, atol=1e-6)
    regularized = Case(op=OP, shape=f"{label} +reg", dtype=torch.float32, make_inputs=make,
                       fn=_step_fn(batch, width, True, None), reference=_step_fn(batch, width, True, "reference"),
                       implemented=_backends.IMPLEMENTED, rtol=1e-3, atol=1e-5)
    return [plain, regularized]


register_suite(OP, build)
