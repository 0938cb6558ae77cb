"""The libraries users would otherwise pick, as :class:`Alternative` rows.

Each alternative computes what its case computes, from the same inputs; the
timed call is what a user would write with that library (range or scales
included when our op computes them too); ``to_reference`` turns its output
into the reference's form outside the timing, and the runner checks it like
a kernel's before timing it. Those built on plain torch or numpy (a
different function users would call) count as peers too; ``modules`` names
what the call imports. Differences of convention (which bin holds the
maximum, ``round(x * (1/s))`` against ``round(x / s)``, the guard on a zero
scale) are stated in ``convention`` and allowed for by ``agrees``; anything
beyond that makes the row "disagrees" and it is not timed.

Peers are optional (``pip install 'eitp-kernels[peers]'``): a missing one is
named in the run's header. Packages (PyPI name -> module):
fast-histogram -> fast_histogram, boost-histogram -> boost_histogram,
torchao, optimum-quanto -> optimum.quanto, bitsandbytes, lightly.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from typing import Any

import torch

from eitp_kernels.bench.cases import Alternative, outputs_match

BINS = 256
# Barlow Twins' lambda (lightly's default; the paper's code uses 0.0051).
BARLOW_LAMBDA = 5e-3
DISTRIBUTIONS = {
    "fast_histogram": "fast-histogram",
    "boost_histogram": "boost-histogram",
    "torchao": "torchao",
    "optimum.quanto": "optimum-quanto",
    "bitsandbytes": "bitsandbytes",
    "lightly": "lightly",
}


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported (found on the path; not imported here).
    A ``None`` entry in ``sys.modules`` blocks an import, so it counts as missing."""
    if name in sys.modules and sys.modules[name] is None:
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def installed(alternative: Alternative) -> bool:
    return all(module_available(name) for name in alternative.modules)


def package_label(alternative: Alternative) -> str:
    """The alternative's name, with the version of its optional package
    (``fast-histogram 0.14``; torch and numpy have theirs in the header)."""
    versions = []
    for module in alternative.modules:
        if module in DISTRIBUTIONS:
            try:
                versions.append(importlib.metadata.version(DISTRIBUTIONS[module]))
            except importlib.metadata.PackageNotFoundError:
                pass
    return " ".join([alternative.name] + versions)


def missing_label(alternative: Alternative) -> str:
    """What to install for the alternative: its distributions' names."""
    return ", ".join(DISTRIBUTIONS.get(module, module) for module in alternative.modules
                     if not module_available(module))


# --------------------------------------------------------------------------
# histogram entropy of one tensor, 256 bins over [min, max]
# --------------------------------------------------------------------------


def _entropy_closing_last_bin(result) -> torch.Tensor:
    """(counts of half-open bins, number of values) -> the entropy with the
    values the last bin left out (those equal to the maximum) put back in it,
    as the reference's closed last bin has them."""
    counts, total = result
    counts = torch.as_tensor(counts, dtype=torch.float64).clone()
    counts[-1] += total - counts.sum()
    p = counts[counts > 0] / counts.sum()
    return (-(p * p.log()).sum()).to(torch.float32)


def eager_histc_entropy(x: torch.Tensor) -> torch.Tensor:
    """What users write in eager PyTorch: aminmax, torch.histc (which needs the
    range as Python floats: a host sync), then the entropy formula."""
    lo, hi = torch.aminmax(x)
    counts = torch.histc(x, bins=BINS, min=lo.item(), max=hi.item()).double()
    p = counts / counts.sum()
    p = p[p > 0]
    return (-(p * p.log()).sum()).to(torch.float32)


def _numpy_entropy(inputs):
    import numpy as np

    array = inputs[0].numpy()  # a view: no copy

    def call():
        counts, _ = np.histogram(array, bins=BINS)  # range (min, max), last bin closed like ours
        p = counts[counts > 0] / counts.sum()
        return -(p * np.log(p)).sum()

    return call


def _fast_histogram_entropy(inputs):
    from fast_histogram import histogram1d

    array = inputs[0].numpy()

    def call():
        return histogram1d(array, BINS, (float(array.min()), float(array.max()))), array.size

    return call


def _boost_histogram_entropy(inputs):
    import boost_histogram as bh

    array = inputs[0].numpy()
    threads = torch.get_num_threads()

    def call():
        histogram = bh.Histogram(bh.axis.Regular(BINS, float(array.min()), float(array.max())))
        histogram.fill(array, threads=threads)
        return histogram.view(), array.size  # in-range bins only: the maximum is in the overflow bin

    return call


def entropy_agrees(out: torch.Tensor, expected: torch.Tensor) -> bool:
    """Within 1e-5 relative: binning by other arithmetic moves a few values on
    a bin edge one bin over (about 1e-7 relative at 16M values)."""
    return outputs_match(out, expected, rtol=1e-5, atol=0.0)


HALF_OPEN = ("half-open bins: the maximum itself falls outside the last bin; the untimed conversion puts it "
             "back (the reference's last bin is closed)")


def entropy_alternatives() -> tuple[Alternative, ...]:
    """For ``histogram_entropy(x)`` of a 1-D fp32 CPU tensor, 256 bins, automatic range."""
    return (
        Alternative("torch.histc", "aminmax + torch.histc (range as Python floats) + -sum p ln p",
                    lambda inputs: lambda: eager_histc_entropy(*inputs), agrees=entropy_agrees, modules=("torch",),
                    convention="bins by its own arithmetic: values on a bin edge may land one bin over"),
        Alternative("numpy", "numpy.histogram(x.numpy(), 256) + -sum p ln p (float64)", _numpy_entropy,
                    to_reference=lambda h: torch.tensor(h, dtype=torch.float32), agrees=entropy_agrees,
                    modules=("numpy",), devices=("cpu",),
                    convention="bins by its own arithmetic (edges from linspace)"),
        Alternative("fast-histogram", "numpy min/max + fast_histogram.histogram1d + -sum p ln p",
                    _fast_histogram_entropy, to_reference=_entropy_closing_last_bin, agrees=entropy_agrees,
                    modules=("fast_histogram",),
                    devices=("cpu",), convention=HALF_OPEN),
        Alternative("boost-histogram", "numpy min/max + boost_histogram Regular(256) fill(threads=torch threads)",
                    _boost_histogram_entropy, to_reference=_entropy_closing_last_bin, agrees=entropy_agrees,
                    modules=("boost_histogram",),
                    devices=("cpu",), convention=HALF_OPEN),
    )


# --------------------------------------------------------------------------
# int8 per-channel symmetric quantization (axis 0): codes and scales
# --------------------------------------------------------------------------


def codes_agree(out: Any, expected: Any, max_fraction: float = 1e-4) -> bool:
    """(codes, scales, None) against the reference's: scales within 1e-6
    relative; codes within one step, and at most ``max_fraction`` of them one
    step off (a value on a rounding tie, x * (1/s) against x / s)."""
    codes, scales, _ = out
    ref_codes, ref_scales, _ = expected
    if codes.shape != ref_codes.shape or codes.dtype != torch.int8 or scales.shape != ref_scales.shape:
        return False
    if not torch.allclose(scales.double(), ref_scales.double(), rtol=1e-6, atol=0.0):
        return False
    step = (codes.int() - ref_codes.int()).abs()
    return int(step.max()) <= 1 and int((step > 0).sum()) <= max_fraction * codes.numel()


def _absmax_scale(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(dim=1) / 127


def _torch_quantize_per_channel(inputs):
    (x,) = inputs
    zero_points = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)

    def call():
        return torch.quantize_per_channel(x, _absmax_scale(x), zero_points, 0, torch.qint8)

    return call


def _torchao_quantize(inputs):
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

    (x,) = inputs
    block = (1, x.shape[1])

    def call():
        scale, zero_point = choose_qparams_affine(x, MappingType.SYMMETRIC, block, torch.int8, -127, 127)
        return quantize_affine(x, block, scale, zero_point, torch.int8, -127, 127), scale

    return call


def _quanto_quantize(inputs):
    from optimum.quanto import absmax_scale, qint8, quantize_weight

    (x,) = inputs

    def call():
        return quantize_weight(x, qtype=qint8, axis=0, scale=absmax_scale(x, qint8, axis=0))

    return call


def _bitsandbytes_quantize(inputs):
    import bitsandbytes.functional as bnb

    (x,) = inputs
    return lambda: bnb.int8_vectorwise_quant(x)


def quantize_alternatives() -> tuple[Alternative, ...]:
    """For ``quantize_int8(x, granularity="channel", axis=0)`` of a 2-D fp32 tensor."""
    return (
        Alternative("torch.q_per_ch", "absmax/127 + torch.quantize_per_channel(qint8) (a quantized tensor)",
                    _torch_quantize_per_channel,
                    to_reference=lambda q: (q.int_repr(), q.q_per_channel_scales().float(), None),
                    agrees=codes_agree, modules=("torch",),
                    convention="rounds x * (1/s); a zero scale is not guarded"),
        Alternative("torchao", "torchao choose_qparams_affine + quantize_affine (SYMMETRIC, -127..127)",
                    _torchao_quantize, to_reference=lambda out: (out[0], out[1].reshape(-1).float(), None),
                    agrees=codes_agree, modules=("torchao",), slow_import=True,
                    convention="rounds x * (1/s); scale clamped at float32 eps (ours: 0 -> 1)"),
        Alternative("optimum-quanto", "quanto absmax_scale + quantize_weight(qint8, axis=0)", _quanto_quantize,
                    to_reference=lambda w: (w._data, w._scale.reshape(-1).float(), None), agrees=codes_agree,
                    modules=("optimum.quanto",), convention="rounds x / s; code range -128..127"),
        Alternative("bitsandbytes", "bitsandbytes.functional.int8_vectorwise_quant (LLM.int8 row-wise)",
                    _bitsandbytes_quantize, to_reference=lambda out: (out[0], out[1].float() / 127, None),
                    agrees=codes_agree, modules=("bitsandbytes",), slow_import=True,
                    convention="rounds x * (127 / absmax); returns absmax, scale = absmax / 127"),
    )


# --------------------------------------------------------------------------
# Barlow Twins: coherence_loss(x, y, offdiag_weight=lambda, squared=True)
# --------------------------------------------------------------------------


def official_barlow_twins(z1: torch.Tensor, z2: torch.Tensor, bn: torch.nn.Module,
                          lambd: float = BARLOW_LAMBDA) -> torch.Tensor:
    """The Barlow Twins paper's code (facebookresearch/barlowtwins main.py):
    ``c = bn(z1).T @ bn(z2) / N``, on-diagonal ``sum (c_ii - 1)^2`` plus
    ``lambd`` times the off-diagonal ``sum c_ij^2``."""
    c = bn(z1).T @ bn(z2)
    c.div_(z1.shape[0])
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    n = c.shape[0]
    off_diag = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten().pow_(2).sum()
    return on_diag + lambd * off_diag


def _grads_of(loss_fn, x, y):
    x = x.detach().requires_grad_(True)
    y = y.detach().requires_grad_(True)
    return torch.autograd.grad(loss_fn(x, y), (x, y))


def _lightly(backward: bool):
    def make(inputs):
        from lightly.loss import BarlowTwinsLoss

        loss_fn = BarlowTwinsLoss(lambda_param=BARLOW_LAMBDA)
        if backward:
            return lambda: _grads_of(loss_fn, *inputs)
        return lambda: loss_fn(*inputs)

    return make


def _official(backward: bool):
    def make(inputs):
        x, _ = inputs
        bn = torch.nn.BatchNorm1d(x.shape[1], affine=False).to(x.device)

        def loss_fn(a, b):
            return official_barlow_twins(a, b, bn)

        if backward:
            return lambda: _grads_of(loss_fn, *inputs)
        return lambda: loss_fn(*inputs)

    return make


SAME_FORMULA = ("batch norm in training mode = our standardization (biased variance, eps 1e-5); "
                f"lambda {BARLOW_LAMBDA:g} = offdiag_weight, squared=True")


def barlow_twins_alternatives(backward: bool) -> tuple[Alternative, ...]:
    """For ``coherence_loss(x, y, offdiag_weight=BARLOW_LAMBDA, squared=True)``
    (``backward``: the gradients w.r.t. x and y)."""
    to_reference = (lambda grads: tuple(grads)) if backward else None
    return (
        Alternative("official BT", "bn(z1).T @ bn(z2) / N + on/off-diagonal sums (the paper's code)",
                    _official(backward), to_reference=to_reference,
                    convention=SAME_FORMULA + "; BatchNorm1d also updates running statistics"),
        Alternative("lightly", f"lightly.loss.BarlowTwinsLoss(lambda_param={BARLOW_LAMBDA:g})",
                    _lightly(backward), to_reference=to_reference, modules=("lightly",), slow_import=True,
                    convention=SAME_FORMULA),
    )
