"""Rules the C++ extension owns, and what the Python side relies on them for:
the coherence forward's keep-the-product rule and the histogram bin limit."""
import os
import subprocess
import sys

import pytest
import torch

import eitp_kernels
from eitp_kernels import reference
from eitp_kernels.ops import coherence as coherence_ops
from eitp_kernels.ops.entropy import MAX_BINS

from conftest import cpu_backends

# --------------------------------------------------------------------------
# coherence: keep_product means "a backward will follow"; C++ decides the path
# --------------------------------------------------------------------------

# (N, D, D' or None) just on each side of gram_path_is_cheaper
# (csrc/bindings/coherence.cpp): the N x N Gram path when it costs under half
# the multiply-adds of P's blocks, i.e. self 2N < D, cross N (D + D') < D D'.
GRAM_SIDE = [(20, 41, None), (23, 40, 60)]
BLOCK_SIDE = [(20, 40, None), (24, 40, 60)]


def _ids(shape):
    return "x".join(map(str, (shape[0], shape[1], shape[2] or "self")))


def _inputs(shape, dtype=torch.float64):
    n, d, dp = shape
    x = torch.randn(n, d, dtype=dtype) * 2 + 1
    y = None if dp is None else torch.randn(n, dp, dtype=dtype) + 0.3 * x[:, :1]
    return x, y


@pytest.mark.parametrize("shape", GRAM_SIDE + BLOCK_SIDE, ids=_ids)
def test_product_is_kept_exactly_off_the_gram_path(shape):
    n, d, dp = shape
    x, y = _inputs(shape)
    kept = torch.ops.eitp.coherence_forward(x, y, 0.5, 2.0, False, 1e-5, True)
    plain = torch.ops.eitp.coherence_forward(x, y, 0.5, 2.0, False, 1e-5, False)
    expected = (0,) if shape in GRAM_SIDE else (d, dp or d)
    assert kept[5].shape == expected
    assert plain[5].shape == (0,)
    # Same path with or without keep_product: the same loss to the bit.
    assert torch.equal(kept[0], plain[0])


@pytest.mark.parametrize("shape", GRAM_SIDE + BLOCK_SIDE, ids=_ids)
def test_fake_kernel_gives_the_product_shape_of_the_real_one(shape):
    # The fake reads the path from C++ (coherence_forward_keeps_product):
    # opcheck compares its output shapes with the real kernel's.
    n, d, dp = shape
    assert torch.ops.eitp.coherence_forward_keeps_product(n, d, dp) == (shape in BLOCK_SIDE)
    x, y = _inputs(shape)
    x.requires_grad_()
    torch.library.opcheck(torch.ops.eitp.coherence_forward.default, (x, y, 0.5, 2.0, False, 1e-5, True))


@pytest.mark.parametrize("shape", GRAM_SIDE + BLOCK_SIDE, ids=_ids)
def test_python_asks_for_the_product_whenever_a_gradient_is_taken(shape):
    x, y = _inputs(shape)
    assert not coherence_ops._keeps_product(x, y)
    x.requires_grad_()
    assert coherence_ops._keeps_product(x, y)
    with torch.no_grad():
        assert not coherence_ops._keeps_product(x, y)


@pytest.mark.parametrize("shape", GRAM_SIDE + BLOCK_SIDE, ids=_ids)
def test_gradient_through_the_compiled_op_matches_the_reference(shape):
    x, y = _inputs(shape)
    ours = [x.clone().requires_grad_(), None if y is None else y.clone().requires_grad_()]
    ref = [x.clone().requires_grad_(), None if y is None else y.clone().requires_grad_()]
    with eitp_kernels.use_backend("cpp"):
        out = eitp_kernels.coherence_loss(ours[0], ours[1], diag_weight=0.7, offdiag_weight=1.3)
    expected = reference.coherence_loss(ref[0], ref[1], diag_weight=0.7, offdiag_weight=1.3)
    torch.testing.assert_close(out, expected, rtol=1e-11, atol=0)
    got = torch.autograd.grad(out * 1.5, [t for t in ours if t is not None])
    want = torch.autograd.grad(expected * 1.5, [t for t in ref if t is not None])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------
# histogram bins: at most MAX_BINS, the number of csrc/kernels/entropy.h
# --------------------------------------------------------------------------


def test_compiled_ops_take_exactly_max_bins():
    # No rows: the (0, bins) outputs cost nothing, so the limit itself is tried.
    x, lo, hi = torch.empty(0, 3), torch.empty(0), torch.empty(0)
    assert torch.ops.eitp.histogram_counts(x, lo, hi, MAX_BINS, False).shape == (0, MAX_BINS)
    assert torch.ops.eitp.soft_histogram(x, lo, hi, MAX_BINS, False).shape == (0, MAX_BINS)
    message = rf"bins must be in \[1, {MAX_BINS}\], got {MAX_BINS + 1}"
    with pytest.raises(ValueError, match=message):
        torch.ops.eitp.histogram_counts(x, lo, hi, MAX_BINS + 1, False)
    with pytest.raises(ValueError, match=message):
        torch.ops.eitp.soft_histogram(x, lo, hi, MAX_BINS + 1, False)
    with pytest.raises(ValueError, match=message):
        torch.ops.eitp.histogram_counts_many([torch.randn(3)], MAX_BINS + 1, None)


@pytest.mark.parametrize("backend", cpu_backends())
def test_every_backend_rejects_more_than_max_bins(backend):
    message = f"bins must be <= {MAX_BINS}, got {MAX_BINS + 1}"
    with eitp_kernels.use_backend(backend):
        with pytest.raises(ValueError, match=message):
            eitp_kernels.histogram_entropy(torch.randn(10), bins=MAX_BINS + 1)
        with pytest.raises(ValueError, match=message):
            eitp_kernels.histogram_entropy(torch.randn(10, requires_grad=True), bins=MAX_BINS + 1,
                                           differentiable=True)
        with pytest.raises(ValueError, match=message):
            eitp_kernels.histogram_entropy_many([torch.randn(10)], bins=MAX_BINS + 1)


def test_the_limit_holds_without_the_extension():
    code = ("import torch, eitp_kernels\n"
            "print('extension loaded:', eitp_kernels._extension.load()[0])\n"
            "try:\n"
            "    eitp_kernels.histogram_entropy(torch.randn(10), bins=(1 << 24) + 1)\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    env = dict(os.environ, EITP_NO_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "extension loaded: False" in out
    assert f"bins must be <= {MAX_BINS}" in out
