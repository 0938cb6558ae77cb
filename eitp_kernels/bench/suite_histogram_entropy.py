"""Benchmark cases of histogram_entropy (DESIGN §2.1) and histogram_entropy_many.

Bytes moved: the minimum, the input read once plus the entropies written (the
automatic range makes the kernels read float input twice: one range pass and
one counting pass).
"""
from __future__ import annotations

import functools

import torch

import eitp_kernels
from eitp_kernels import reference
from eitp_kernels.bench.cases import Case, element_bytes, randn_inputs, register_suite, size_label
from eitp_kernels.ops import entropy

OP = "histogram_entropy"
MANY_OP = "histogram_entropy_many"
DTYPES = (torch.float32, torch.bfloat16)


def build(device: torch.device, quick: bool) -> list[Case]:
    n, side = (1 << 20, 1024) if quick else (1 << 24, 4096)
    cases = []
    for dtype in DTYPES:
        cases.append(_case(size_label(n), (n,), dtype, outputs=1))
        cases.append(_case(f"{size_label(side, side)} dim=1", (side, side), dtype, outputs=side, dim=1))
    cases.append(_histc_case(n))
    cases.append(_codes_case(n))
    cases.append(_many_case(quick))
    cases.append(_many_case(quick, against_loop=True))
    return cases


def eager_histc_entropy(x: torch.Tensor) -> torch.Tensor:
    """What users write in eager PyTorch: aminmax, torch.histc (which needs the
    range as Python floats: a host sync), then the entropy formula."""
    lo, hi = torch.aminmax(x)
    counts = torch.histc(x, bins=256, min=lo.item(), max=hi.item()).double()
    p = counts / counts.sum()
    p = p[p > 0]
    return (-(p * p.log()).sum()).to(torch.float32)


def _histc_case(n: int) -> Case:
    """The issue's eager baseline (aminmax + histc + formula) as the 'eager' column.
    histc bins with its own arithmetic, so a few edge values may land in a
    neighbouring bin: the check allows 1e-5 relative."""
    return Case(
        op=OP, shape=f"{size_label(n)} eager=histc", dtype=torch.float32, make_inputs=randn_inputs((n,), torch.float32),
        fn=eitp_kernels.histogram_entropy, reference=eager_histc_entropy, implemented=entropy.IMPLEMENTED,
        bytes=element_bytes((n,), torch.float32) + 4, rtol=1e-5,
    )


def _case(label, shape, dtype, outputs, **kwargs) -> Case:
    return Case(
        op=OP,
        shape=label,
        dtype=dtype,
        make_inputs=randn_inputs(shape, dtype),
        fn=functools.partial(eitp_kernels.histogram_entropy, **kwargs),
        reference=functools.partial(reference.histogram_entropy, **kwargs),
        implemented=entropy.IMPLEMENTED,
        bytes=element_bytes(shape, dtype) + element_bytes((outputs,), reference.compute_dtype(dtype)),
        rtol=1e-6 if dtype != torch.float64 else 1e-12,
    )


def _codes_case(n: int) -> Case:
    def make(device):
        generator = torch.Generator().manual_seed(0)
        return (torch.randint(-128, 128, (n,), generator=generator, dtype=torch.int8).to(device),)

    return Case(
        op=OP, shape=f"{size_label(n)} codes", dtype=torch.int8, make_inputs=make,
        fn=functools.partial(eitp_kernels.histogram_entropy, base=2),
        reference=functools.partial(reference.histogram_entropy, base=2),
        implemented=entropy.IMPLEMENTED, bytes=n + 4, rtol=1e-6,
    )


def _model_shapes(quick: bool) -> list[tuple[int, ...]]:
    """The 50 parameter tensors of 25 Linear layers (weights and biases)."""
    a, b = (128, 64) if quick else (512, 256)
    shapes = []
    for i in range(25):
        fan_in, fan_out = (a, b) if i % 2 else (b, a)
        shapes += [(fan_out, fan_in), (fan_out,)]
    return shapes


def _many_case(quick: bool, against_loop: bool = False) -> Case:
    """The model's parameters in one call. ``against_loop``: the 'eager' column
    is a Python loop of single fused histogram_entropy calls (the issue's
    baseline for the batching itself) instead of a loop of references."""
    shapes = _model_shapes(quick)

    def make(device):
        generator = torch.Generator().manual_seed(0)
        return tuple(torch.randn(s, generator=generator).to(device) for s in shapes)

    def reference_many(*tensors):
        return torch.stack([reference.histogram_entropy(t) for t in tensors])

    def loop_of_single_calls(*tensors):
        return torch.stack([eitp_kernels.histogram_entropy(t) for t in tensors])

    elements = sum(torch.Size(s).numel() for s in shapes)
    return Case(
        op=MANY_OP, shape=f"50 tensors ({elements} elements)" + (" eager=loop of calls" if against_loop else ""),
        dtype=torch.float32, make_inputs=make,
        fn=lambda *tensors: eitp_kernels.histogram_entropy_many(list(tensors)),
        reference=loop_of_single_calls if against_loop else reference_many, implemented=entropy.IMPLEMENTED_MANY,
        bytes=4 * elements + 4 * len(shapes), rtol=1e-6,
    )


register_suite(OP, build)
