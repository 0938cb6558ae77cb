"""Every GPU kernel against the reference, eagerly. Skipped without a CUDA device.

Each CUDA and Triton kernel path that the older GPU tests did not reach:
CUDA ``entropy_kernel<double>``; the soft histogram's global-memory path
(bins > 6144) and explicit-range soft kernels; ``hist_rows_kernel`` for
int8/uint8 codes (values, exact); the fake-quant backward for every dtype;
static quantization with a given scale (every dtype) and an affine zero
point; the > 65535-row slicing loops; coherence tile reductions across
several blocks and the symmetric Gram panels; Triton's soft histogram and
backward, codes, bins=1, and a tensor on a device that is not the current one.
First run on an NVIDIA H200 (torch 2.11, triton 3.6) on 2026-11-30; also
the inductor compile of a step that uses every differentiable op.
"""
import math

import pytest
import torch

import eitp_kernels
from eitp_kernels import reference
from eitp_kernels.ops import entropy as ops

from conftest import FLOAT_DTYPES

pytestmark = pytest.mark.gpu
BACKENDS = ["cuda", "triton"]


def _rtol(dtype):
    return 1e-12 if dtype == torch.float64 else 1e-6


def _rel(a, b):
    return (a.double() - b.double()).norm().item() / max(b.double().norm().item(), 1e-300)


def test_tf32_is_off_in_gpu_tests():
    assert torch.backends.cuda.matmul.allow_tf32 is False


# ---------------------------------------------------------------- entropy


@pytest.mark.parametrize("log_base", [None, math.log(2.0)])
def test_cuda_entropy_from_float64_counts(log_base):
    # entropy_kernel<double>: the soft counts' dtype
    counts = torch.rand(37, 5000, dtype=torch.float64, device="cuda") * 10
    counts[3] = 0  # nothing counted: NaN
    counts[5, 100:] = 0
    got = torch.ops.eitp.entropy_from_counts(counts, log_base)
    expected = ops._entropy_torch(counts, log_base)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bins,rng", [(300, (-1.0, 2.5)), (6145, None), (20000, None), (20000, (-2.0, 2.0)), (1, None)])
def test_soft_histogram_and_backward(backend, dtype, bins, rng):
    # bins > 6144: the CUDA kernel's global-memory path; an explicit range; bins=1 (a Triton constant)
    x = (torch.randn(3, 70001, device="cuda") * 1.5).to(dtype)
    x[0, 5] = float("nan")
    xd = x.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(xd, bins=bins, range=rng, dim=1, differentiable=True)
    hr = reference.histogram_entropy(xr, bins=bins, range=rng, dim=1, differentiable=True)
    torch.testing.assert_close(h, hr, rtol=_rtol(dtype) * 10, atol=1e-12, equal_nan=True)
    h.sum().backward()
    hr.sum().backward()
    scale = float(xr.grad.abs().max()) or 1.0
    torch.testing.assert_close(xd.grad, xr.grad, rtol=0, atol=scale * 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("code", [torch.int8, torch.uint8])
def test_code_histograms_exact(backend, code):
    lo, hi = (-128, 128) if code == torch.int8 else (0, 256)
    x = torch.randint(lo, hi, (5, 300007), dtype=code, device="cuda")
    x[1] = lo  # one code only: entropy 0
    ref_counts = reference.histogram_counts(x, bins=256, dim=1)
    rows, _ = reference.slices_as_rows(x, 1)
    with eitp_kernels.use_backend(backend):
        counts = ops._counts_rows(backend, rows.contiguous(), None, None, 256, False)
        h = eitp_kernels.histogram_entropy(x, dim=1, base=2.0)
        whole = eitp_kernels.histogram_entropy(x)
    torch.testing.assert_close(counts.to(ref_counts.dtype), ref_counts, rtol=0, atol=0)
    torch.testing.assert_close(h, reference.histogram_entropy(x, dim=1, base=2.0), rtol=1e-6, atol=0)
    torch.testing.assert_close(whole, reference.histogram_entropy(x), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_bins_one(backend, dtype):
    x = torch.randn(4, 1000, device="cuda").to(dtype)
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(x, bins=1, dim=1)
        hr = eitp_kernels.histogram_entropy(x, bins=1, range=(-1.0, 1.0))
        many = eitp_kernels.histogram_entropy_many([x, x[0]], bins=1)
    assert torch.equal(h, reference.histogram_entropy(x, bins=1, dim=1))
    assert torch.equal(hr, reference.histogram_entropy(x, bins=1, range=(-1.0, 1.0)))
    assert torch.equal(many, torch.zeros_like(many))


def _minmax_entropy_and_soft_grad(x, bins):
    """finite_minmax, histogram_entropy and the differentiable entropy with its
    gradient, per row of x (dim=1), on the backend in use."""
    lo, hi = eitp_kernels.finite_minmax(x, dim=1)
    h = eitp_kernels.histogram_entropy(x, bins=bins, dim=1)
    xd = x.clone().requires_grad_()
    hs = eitp_kernels.histogram_entropy(xd, bins=bins, dim=1, differentiable=True)
    hs.sum().backward()
    return lo, hi, h, hs, xd.grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_than_65535_rows(backend):
    # the CUDA launchers' row slicing and the Triton flat grids
    x = torch.randn(70001, 33, device="cuda")
    x[-1] = -torch.relu(x[-1])  # -0.0 maxima in the last slice
    with eitp_kernels.use_backend(backend):
        lo, hi, h, hs, grad = _minmax_entropy_and_soft_grad(x, 16)
        q, s, zp = eitp_kernels.quantize_int8(x, granularity="channel", symmetric=False)
    rlo, rhi = reference.finite_minmax(x, dim=1)
    assert torch.equal(lo, rlo) and torch.equal(hi, rhi)
    torch.testing.assert_close(h, reference.histogram_entropy(x, bins=16, dim=1), rtol=1e-6, atol=0)
    xr = x.clone().requires_grad_()
    hsr = reference.histogram_entropy(xr, bins=16, dim=1, differentiable=True)
    hsr.sum().backward()
    torch.testing.assert_close(hs, hsr, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(grad, xr.grad, rtol=0, atol=float(xr.grad.abs().max()) * 1e-5)
    rq, rs, rzp = reference.quantize_int8(x, granularity="channel", symmetric=False)
    assert torch.equal(q, rq) and torch.equal(s, rs) and torch.equal(zp, rzp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_zero_maxima_across_blocks(backend):
    # the float atomics' -0.0 rule: rows of -relu(x) span several blocks
    x = -torch.relu(torch.randn(3, 1_000_003, device="cuda"))
    with eitp_kernels.use_backend(backend):
        lo, hi = eitp_kernels.finite_minmax(x, dim=1)
        h = eitp_kernels.histogram_entropy(x, bins=64, dim=1)
    rlo, rhi = reference.finite_minmax(x, dim=1)
    assert torch.equal(lo, rlo) and torch.equal(hi, rhi)
    assert torch.equal(torch.signbit(hi), torch.signbit(rhi)) or bool((hi == 0).all())
    torch.testing.assert_close(h, reference.histogram_entropy(x, bins=64, dim=1), rtol=1e-6, atol=0)


# ---------------------------------------------------------------- quant


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_fake_quant_backward_every_dtype(backend, dtype):
    x = (torch.randn(64, 3001, device="cuda") * 3).to(dtype)
    x[0, 0] = float("inf")
    scale = torch.full((64,), 0.02, device="cuda")
    grad_out = torch.randn(64, 3001, device="cuda").to(dtype)
    for symmetric, zp in ((True, None), (False, torch.full((64,), 5, dtype=torch.int32, device="cuda"))):
        xd = x.clone().requires_grad_()
        with eitp_kernels.use_backend(backend):
            out = eitp_kernels.fake_quant_int8(xd, granularity="channel", symmetric=symmetric, scale=scale,
                                               zero_point=zp)
        out.backward(grad_out)
        xr = x.clone().requires_grad_()
        ref = reference.fake_quant_int8(xr, "channel", 0, 128, symmetric, scale, zp)
        ref.backward(grad_out)
        assert torch.equal(out.detach(), ref.detach())
        assert torch.equal(xd.grad, xr.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_static_quant_given_scale_and_zero_point(backend, dtype):
    x = (torch.randn(33, 20001, device="cuda") * 2).to(dtype)
    scale = torch.rand(33, device="cuda") * 0.05 + 0.001
    zp = torch.randint(-20, 20, (33,), dtype=torch.int32, device="cuda")
    for symmetric, z in ((True, None), (False, zp)):
        with eitp_kernels.use_backend(backend):
            q, s, zo = eitp_kernels.quantize_int8(x, granularity="channel", symmetric=symmetric, scale=scale,
                                                  zero_point=z)
            whole = eitp_kernels.quantize_int8(x, symmetric=symmetric, scale=scale[0],
                                               zero_point=None if z is None else z[0])
            back = eitp_kernels.dequantize_int8(q, s, zo, granularity="channel", dtype=dtype)
        rq, rs, rzo = reference.quantize_int8(x, "channel", 0, 128, symmetric, scale, z)
        assert torch.equal(q, rq) and torch.equal(s, rs)
        assert (zo is None and rzo is None) or torch.equal(zo, rzo)
        wq = reference.quantize_int8(x, "tensor", 0, 128, symmetric, scale[0], None if z is None else z[0])[0]
        assert torch.equal(whole[0], wq)
        assert torch.equal(back, reference.dequantize_int8(rq, rs, rzo, "channel", 0, 128, dtype))


# ---------------------------------------------------------------- coherence


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d,dp", [(64, 300, None), (600, 300, None), (40, 700, None), (50, 200, 1100),
                                    (300, 129, 1030)])
def test_coherence_many_blocks_and_gram_panels(backend, dtype, n, d, dp):
    # D > 128 and D' > 1024: tile reductions across several blocks; N > 256: symmetric Gram panels;
    # N < D / 2: the N x N Gram path
    x = torch.randn(n, d, device="cuda", dtype=dtype)
    x[:, 1] = 0.7 * x[:, 0] + 0.3 * x[:, 1]
    x = x.requires_grad_()
    y = None if dp is None else torch.randn(n, dp, device="cuda", dtype=dtype).requires_grad_()
    with eitp_kernels.use_backend(backend):
        out = eitp_kernels.coherence_loss(x, y, offdiag_weight=0.3)
    leaves = [t for t in (x, y) if t is not None]
    got = torch.autograd.grad(out, leaves)
    x64 = x.detach().double().requires_grad_()
    y64 = None if y is None else y.detach().double().requires_grad_()
    ref = reference.coherence_loss(x64, y64, offdiag_weight=0.3)
    exp = torch.autograd.grad(ref, [t for t in (x64, y64) if t is not None])
    tol = 1e-11 if dtype == torch.float64 else 1e-4
    assert _rel(out, ref) < tol
    for g, e in zip(got, exp):
        assert _rel(g, e) < tol * 10


# ---------------------------------------------------------------- a device that is not the current one


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (a tensor on a non-current device)")
@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_on_a_non_current_device(backend):
    torch.cuda.set_device(0)
    x = torch.randn(7, 50001, device="cuda:1")
    with eitp_kernels.use_backend(backend):
        lo, hi, h, _, grad = _minmax_entropy_and_soft_grad(x, 100)
        q = eitp_kernels.quantize_int8(x, granularity="channel")[0]
        c = eitp_kernels.coherence_loss(x[:, :300].t().contiguous())
    torch.cuda.synchronize(1)
    assert torch.cuda.current_device() == 0
    assert h.device == x.device and grad.device == x.device
    rlo, rhi = reference.finite_minmax(x, dim=1)
    assert torch.equal(lo, rlo) and torch.equal(hi, rhi)
    torch.testing.assert_close(h, reference.histogram_entropy(x, bins=100, dim=1), rtol=1e-6, atol=0)
    assert torch.equal(q, reference.quantize_int8(x, granularity="channel")[0])
    assert _rel(c, reference.coherence_loss(x[:, :300].t().double())) < 1e-4


# ---------------------------------------------------------------- torch.compile (inductor)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inductor_compiles_a_step_of_every_differentiable_op(backend):
    # inductor (not aot_eager): the Triton ops are traced into its graph, the CUDA ops stay opaque
    w = torch.randn(64, 96, device="cuda", requires_grad=True)

    def step(w):
        h = eitp_kernels.histogram_entropy(w, bins=32, dim=1, differentiable=True).sum()
        c = eitp_kernels.coherence_loss(w, offdiag_weight=0.5)
        q = eitp_kernels.fake_quant_int8(w, granularity="channel")
        return h + c + (q * w).mean()

    with eitp_kernels.use_backend(backend):
        expected = step(w)
        (expected_grad,) = torch.autograd.grad(expected, w)
        got = torch.compile(step, fullgraph=True)(w)
        (grad,) = torch.autograd.grad(got, w)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=float(expected_grad.abs().max()) * 1e-5)
