"""coherence_loss on every backend against the reference (docs/design.md §2.2)."""
import numpy as np
import pytest
import torch

import eitp_kernels
from eitp_kernels import nn as eitp_nn
from eitp_kernels import reference
from eitp_kernels.ops import coherence as coherence_ops

from conftest import FLOAT_DTYPES, cpu_backends

CPU_BACKENDS = cpu_backends()
COMPILED = ["cpp", pytest.param("triton", marks=pytest.mark.triton_interpret)]
GRAM, BLOCKS, PRODUCT = coherence_ops.GRAM, coherence_ops.BLOCKS, coherence_ops.PRODUCT
PATHS = [GRAM, BLOCKS, PRODUCT]


def _ours(backend, *args, **kwargs):
    with eitp_kernels.use_backend(backend):
        return eitp_kernels.coherence_loss(*args, **kwargs)


def _ref64(x, y=None, **kwargs):
    return reference.coherence_loss(x.double(), None if y is None else y.double(), **kwargs)


def _rel(a, b):
    return (a.double() - b.double()).norm().item() / max(b.double().norm().item(), 1e-300)


def _close(out, x, y=None, **kwargs):
    """|out - ref64| / |ref64| within RTOL, or within 2x eager's own error
    (docs/design.md §5): fp32 cancellation in R_ii - 1 is inherent when var >> eps is
    not the case (tiny losses)."""
    ref = _ref64(x, y, **kwargs)
    err = _rel(out, ref)
    bound = RTOL[x.dtype if y is None else torch.promote_types(x.dtype, y.dtype)]
    if err < bound:
        return True
    eager = reference.coherence_loss(x, y, **kwargs)
    assert err <= 2 * _rel(eager, ref), (out.item(), ref.item(), eager.item())
    return True


# forward rtol against the fp64 reference by input dtype (fp16/bf16 inputs are
# up-cast exactly and accumulate in fp32, so they get the fp32 bound).
RTOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}


# --------------------------------------------------------------------------
# forward against the reference
# --------------------------------------------------------------------------

SHAPES = [  # (N, D, D' or None)
    (2, 1, None), (2, 3, None), (7, 3, None), (33, 40, None), (100, 7, None),
    (40, 300, None),   # N < D/2: the N x N Gram path of the compiled forward
    (9, 5, 3), (33, 40, 23), (70, 6, 90), (12, 50, 60),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, (s[0], s[1], s[2] or "self"))))
@pytest.mark.parametrize("squared", [False, True])
def test_forward_matches_reference(backend, shape, squared):
    n, d, dp = shape
    x = torch.randn(n, d) * 3 + 1
    y = None if dp is None else torch.randn(n, dp) - 2
    if y is not None:
        y[:, : min(d, dp)] += 0.7 * x[:, : min(d, dp)]  # a real diagonal
    for a, b in [(1.0, 1.0), (0.3, 2.5)]:
        out = _ours(backend, x, y, diag_weight=a, offdiag_weight=b, squared=squared)
        assert out.dtype == torch.float32 and out.shape == ()
        assert _close(out, x, y, diag_weight=a, offdiag_weight=b, squared=squared)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_every_dtype(backend, dtype):
    x = torch.randn(37, 20).to(dtype)
    y = torch.randn(37, 11).to(dtype)
    for yy in (None, y):
        out = _ours(backend, x, yy, offdiag_weight=0.5)
        assert out.dtype == reference.compute_dtype(dtype)
        assert _close(out, x, yy, offdiag_weight=0.5)


def test_large_odd_shape_native():
    # N=17 x D=1000: short and wide, self and cross
    x = torch.randn(17, 1000)
    y = torch.randn(17, 999)
    for yy in (None, y):
        for squared in (False, True):
            out = _ours("cpp", x, yy, squared=squared)
            assert _close(out, x, yy, squared=squared)


def test_many_tiles_native():
    # more than one R tile in both directions (tiles are 256 x 1024), self and cross
    x = torch.randn(1200, 1100)
    y = torch.randn(1200, 1500)
    for yy in (None, y):
        out = _ours("cpp", x, yy, diag_weight=0.5, offdiag_weight=3.0)
        assert _close(out, x, yy, diag_weight=0.5, offdiag_weight=3.0)


@pytest.mark.parametrize("shape", [(700, 1000, None), (100, 1000, None), (500, 800, 900), (60, 800, 900)],
                         ids=lambda s: "x".join(map(str, (s[0], s[1], s[2] or "self"))))
def test_forward_never_allocates_r_native(shape):
    # Largest single allocation of the compiled forward (tile and Gram paths)
    # stays below one D x D' matrix; the reference allocates several.
    from torch.profiler import ProfilerActivity, profile

    n, d, dp = shape
    x = torch.randn(n, d)
    y = None if dp is None else torch.randn(n, dp)
    r_bytes = d * (dp or d) * 4

    def biggest(f):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            f()
        return max([e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0] or [0])

    assert biggest(lambda: _ours("cpp", x, y)) < r_bytes
    assert biggest(lambda: reference.coherence_loss(x, y)) >= r_bytes


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_numpy_corrcoef(backend, rng):
    # eps = 0, a = b = 1, squared: ||corrcoef - I||_F^2 (biased variances cancel)
    xn = rng.standard_normal((50, 9))
    xn[:, 3] = 0.8 * xn[:, 1] + 0.2 * xn[:, 3]
    x = torch.from_numpy(xn)
    expected = ((np.corrcoef(xn, rowvar=False) - np.eye(9)) ** 2).sum()
    out = _ours(backend, x, eps=0.0, squared=True)
    assert out.dtype == torch.float64
    assert abs(out.item() - expected) < 1e-11 * expected
    out32 = _ours(backend, x.float(), eps=0.0)
    assert abs(out32.item() - np.sqrt(expected)) < 2e-5 * np.sqrt(expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(64, 8), (16, 40)])  # with a gradient: the PRODUCT and GRAM paths
def test_correlated_and_zero_variance_columns(backend, shape):
    x = torch.randn(*shape)
    x[:, 1] = 2 * x[:, 0] + 1e-3 * x[:, 1]  # almost perfectly correlated
    x[:, 2] = -x[:, 0]
    x[:, 5] = 4.25  # zero variance: z = 0, finite for eps > 0
    xg = x.clone().requires_grad_()
    out = _ours(backend, xg, offdiag_weight=0.7)
    assert torch.isfinite(out)
    assert _close(out, x, offdiag_weight=0.7)
    (g,) = torch.autograd.grad(out, xg)
    assert torch.isfinite(g).all()
    assert g[:, 5].abs().max().item() == 0.0 or g[:, 5].abs().max().item() < 1e-3


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_finite_input_gives_nan_like_the_reference(backend):
    for shape in [(20, 6), (8, 40)]:  # tile and Gram paths of the compiled forward
        x = torch.randn(*shape)
        x[3, 2] = float("nan")
        assert torch.isnan(_ours(backend, x)) and torch.isnan(reference.coherence_loss(x))
        x[3, 2] = float("inf")
        assert torch.isnan(_ours(backend, x, squared=True))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_trailing_dims_and_non_contiguous(backend):
    x = torch.randn(6, 4, 5)  # (N, *) -> D = 20
    out = _ours(backend, x)
    assert _close(out, x.reshape(6, 20))
    xt = torch.randn(30, 25).t()  # (25, 30) non-contiguous
    y = torch.randn(25, 40)[:, ::2]  # strided columns
    assert not xt.is_contiguous() and not y.is_contiguous()
    out = _ours(backend, xt, y, squared=True)
    assert _close(out, xt, y, squared=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mixed_dtypes_promote_like_the_reference(backend):
    x = torch.randn(20, 6)
    y = torch.randn(20, 4, dtype=torch.float64)
    out = _ours(backend, x, y)
    assert out.dtype == torch.float64
    assert _close(out, x, y)
    out = _ours(backend, x.half(), y.float())
    assert out.dtype == torch.float32
    assert _close(out, x.half(), y.float())


# --------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("with_y", [False, True])
@pytest.mark.parametrize("squared", [False, True])
def test_gradcheck_fp64(backend, with_y, squared):
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    inputs = (x, torch.randn(6, 3, dtype=torch.float64, requires_grad=True)) if with_y else (x,)

    def f(*t):
        return _ours(backend, *t, diag_weight=0.6, offdiag_weight=1.7, squared=squared, eps=1e-3)

    assert torch.autograd.gradcheck(f, inputs)


def _grads_vs_reference(backend, x, y, **kwargs):
    xs = [x.clone().requires_grad_(), None if y is None else y.clone().requires_grad_()]
    xr = [x.clone().requires_grad_(), None if y is None else y.clone().requires_grad_()]
    out = _ours(backend, xs[0], xs[1], **kwargs)
    ref = reference.coherence_loss(xr[0], xr[1], **kwargs)
    assert _rel(out, ref.detach()) < 1e-5
    wrt = [t for t in xs if t is not None]
    got = torch.autograd.grad(out * 1.5, wrt)
    exp = torch.autograd.grad(ref * 1.5, [t for t in xr if t is not None])
    for g, e in zip(got, exp):
        assert g.dtype == x.dtype
        assert _rel(g, e) < 1e-4, _rel(g, e)


LARGE = [  # both associations of the backward: N >= D (D x D product) and N < D (N x N Gram)
    (600, 300, None), (96, 700, None), (500, 200, 150), (64, 400, 350),
]


@pytest.mark.parametrize("shape", LARGE, ids=lambda s: "x".join(map(str, (s[0], s[1], s[2] or "self"))))
@pytest.mark.parametrize("squared", [False, True])
def test_fp32_gradients_match_reference_autograd_native(shape, squared):
    n, d, dp = shape
    x = torch.randn(n, d) + torch.linspace(-2, 2, d)
    y = None if dp is None else torch.randn(n, dp) + 0.5 * x[:, :dp]
    _grads_vs_reference("cpp", x, y, diag_weight=0.8, offdiag_weight=1.3, squared=squared)


@pytest.mark.triton_interpret
@pytest.mark.parametrize("shape", [(40, 24, None), (12, 40, None), (30, 20, 9)],
                         ids=lambda s: "x".join(map(str, (s[0], s[1], s[2] or "self"))))
def test_fp32_gradients_match_reference_autograd_triton(shape):
    n, d, dp = shape
    x = torch.randn(n, d)
    y = None if dp is None else torch.randn(n, dp) + 0.5 * x[:, :dp]
    _grads_vs_reference("triton", x, y, diag_weight=0.8, offdiag_weight=1.3)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradient_dtype(backend, dtype):
    x = torch.randn(16, 8).to(dtype).requires_grad_()
    out = _ours(backend, x)
    (g,) = torch.autograd.grad(out, x)
    x64 = x.detach().double().requires_grad_()
    (e,) = torch.autograd.grad(reference.coherence_loss(x64), x64)
    assert g.dtype == dtype
    assert _rel(g, e) < 1e-2  # the gradient is rounded to 16 bits


# --------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    f = eitp_kernels.coherence_loss
    with pytest.raises(ValueError, match="x must have at least 2 rows"):
        f(torch.randn(1, 5))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        f([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(TypeError, match="x must have dtype"):
        f(torch.arange(10).reshape(5, 2))
    with pytest.raises(ValueError, match="x must have at least 1 dimensions"):
        f(torch.tensor(1.0))
    with pytest.raises(ValueError, match="x is empty"):
        f(torch.randn(4, 0))
    with pytest.raises(ValueError, match="y must have the same batch size"):
        f(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(TypeError, match="y must have dtype"):
        f(torch.randn(5, 3), torch.ones(5, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="diag_weight must be >= 0"):
        f(torch.randn(5, 3), diag_weight=-1.0)
    with pytest.raises(TypeError, match="offdiag_weight must be a real number"):
        f(torch.randn(5, 3), offdiag_weight="1")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        f(torch.randn(5, 3), eps=-1e-5)
    with pytest.raises(ValueError, match="eps must be finite"):
        f(torch.randn(5, 3), eps=float("nan"))
    with pytest.raises(TypeError, match="squared must be a bool"):
        f(torch.randn(5, 3), squared=1)
    with pytest.raises(TypeError, match="process_group must be None or"):
        f(torch.randn(5, 3), process_group="world")


def test_compiled_ops_check_their_inputs():
    with pytest.raises(ValueError, match="at least 2 rows"):
        torch.ops.eitp.coherence_forward(torch.randn(1, 3), None, 1.0, 1.0, False, 1e-5, PRODUCT)
    with pytest.raises(ValueError, match="must be 2-D"):
        torch.ops.eitp.coherence_forward(torch.randn(4), None, 1.0, 1.0, False, 1e-5, PRODUCT)
    with pytest.raises(ValueError, match="as many rows as x"):
        torch.ops.eitp.coherence_forward(torch.randn(4, 2), torch.randn(3, 2), 1.0, 1.0, False, 1e-5, PRODUCT)
    with pytest.raises(TypeError, match="both be float64"):
        torch.ops.eitp.coherence_forward(torch.randn(4, 2), torch.randn(4, 2).double(), 1.0, 1.0, False, 1e-5,
                                         PRODUCT)
    with pytest.raises(ValueError, match="path must be 0"):
        torch.ops.eitp.coherence_forward(torch.randn(4, 2), None, 1.0, 1.0, False, 1e-5, 3)
    x = torch.randn(4, 2)
    out = torch.ops.eitp.coherence_forward(x, None, 1.0, 1.0, False, 1e-5, GRAM)
    with pytest.raises(ValueError, match=r"product must be \(D, D'\) = \(2, 2\)"):
        torch.ops.eitp.coherence_backward(torch.ones(()), out[0], x, None, *out[1:], 1.0, 1.0, False, PRODUCT)
    with pytest.raises(ValueError, match=r"product must be the forward's Gram matrices \(1, 4, 4\)"):
        torch.ops.eitp.coherence_backward(torch.ones(()), out[0], x, None, *out[1:5], torch.ones(2, 2), 1.0, 1.0,
                                          False, GRAM)


# --------------------------------------------------------------------------
# custom-op machinery, torch.compile, modules
# --------------------------------------------------------------------------


def _opcheck_both(ops, x, y, path):
    # The fake kernel derives the product's shape from the path: opcheck compares it with the real one's.
    torch.library.opcheck(ops.coherence_forward.default, (x, y, 0.5, 2.0, False, 1e-5, path))
    loss, mx, rx, my, ry, product = ops.coherence_forward(x.detach(), None if y is None else y.detach(), 0.5, 2.0,
                                                          False, 1e-5, path)
    n, d = x.shape
    kept = {PRODUCT: (d, d if y is None else y.shape[1]), GRAM: (1 if y is None else 2, n, n), BLOCKS: (0,)}
    assert product.shape == kept[path]
    args = (torch.ones(()), loss, x.detach(), None if y is None else y.detach(), mx, rx, my, ry, product, 0.5,
            2.0, False, path)
    torch.library.opcheck(ops.coherence_backward.default, args)


@pytest.mark.parametrize("with_y", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_opcheck_compiled_ops(with_y, transposed, path):
    x = torch.randn(5, 9).t().requires_grad_() if transposed else torch.randn(9, 5, requires_grad=True)
    y = torch.randn(9, 4, requires_grad=True) if with_y else None
    _opcheck_both(torch.ops.eitp, x, y, path)


@pytest.mark.parametrize("shape", [(300, 40, None), (300, 40, 70), (30, 50, None), (30, 50, 60), (700, 600, None)],
                         ids=lambda s: "x".join(map(str, (s[0], s[1], s[2] or "self"))))
def test_kept_product_native(shape):
    # The forward's kept P = Zx^T Zy (block path; self: mirrored; D=600:
    # several blocks and the threaded mirror) and GRAM's kept Gram matrices
    # are the exact products, and the backwards through them match the GRAM
    # backward that makes its Gram matrices itself.
    n, d, dp = shape
    x = torch.randn(n, d, dtype=torch.float64) * 2 + 1
    y = None if dp is None else torch.randn(n, dp, dtype=torch.float64) - 1
    out = torch.ops.eitp.coherence_forward(x, y, 0.5, 2.0, False, 1e-5, PRODUCT)
    gram = torch.ops.eitp.coherence_forward(x, y, 0.5, 2.0, False, 1e-5, GRAM)
    torch.testing.assert_close(out[0], gram[0], rtol=1e-11, atol=0)

    def z(v):
        return (v - v.mean(0)) / torch.sqrt(v.var(0, unbiased=False) + 1e-5)

    zy = z(x) if y is None else z(y)
    torch.testing.assert_close(out[5], z(x).t() @ zy, rtol=1e-11, atol=1e-9)
    # GRAM keeps the Gram matrices (N = 300, 700: several panels, mirrored)
    grams = [z(x) @ z(x).t()] + ([] if y is None else [zy @ zy.t()])
    torch.testing.assert_close(gram[5], torch.stack(grams), rtol=1e-11, atol=1e-9)
    without = gram[:5] + (x.new_empty((0,)),)  # the GRAM backward with no kept Gram matrices makes them
    grads = [torch.ops.eitp.coherence_backward(torch.tensor(1.5, dtype=torch.float64), loss, x, y, mx, rx, my, ry,
                                               product, 0.5, 2.0, False, path)
             for (loss, mx, rx, my, ry, product), path in ((out, PRODUCT), (gram, GRAM), (without, GRAM))]
    for kept, *others in zip(*grads):
        for other in others:
            torch.testing.assert_close(kept, other, rtol=1e-10, atol=1e-12)


def test_fwd_bwd_keeps_one_d_by_d_native():
    # With a gradient and 3D/4 <= N < D (the PRODUCT path; N x D buffers are
    # then smaller than D x D) the forward keeps one D x D product for the
    # backward, and nothing else as large is allocated; without a gradient
    # it keeps none (test_forward_never_allocates_r_native).
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(450, 500, requires_grad=True)
    r_bytes = 500 * 500 * 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        (dx,) = torch.autograd.grad(_ours("cpp", x), x)
    sizes = [e.self_cpu_memory_usage for e in prof.events()]
    assert sum(s >= r_bytes for s in sizes) == 1, sizes
    (expected,) = torch.autograd.grad(_ref64(x), x)
    assert _rel(dx, expected) < 1e-4


@pytest.mark.triton_interpret
@pytest.mark.parametrize("with_y", [False, True])
def test_opcheck_triton_ops(with_y):
    from eitp_kernels.ops import coherence  # noqa: F401  (registers the Triton ops)

    x = torch.randn(9, 5, requires_grad=True)
    y = torch.randn(9, 4, requires_grad=True) if with_y else None
    for path in PATHS:
        _opcheck_both(torch.ops.eitp_triton, x, y, path)


def _train_step_matches(backend_name, compile_backend):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    x = torch.randn(32, 12)

    def loss_fn(inp):
        h = model(inp)
        return eitp_kernels.coherence_loss(h, offdiag_weight=0.5) + eitp_kernels.coherence_loss(h[:, :4], inp)

    # The forward (model + losses) is one graph; AOTAutograd traces its
    # backward through the op's registered autograd.
    with eitp_kernels.use_backend(backend_name):
        eager = loss_fn(x)
        eager.backward()
        eager_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        compiled = torch.compile(loss_fn, fullgraph=True, backend=compile_backend)(x)
        compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def test_torch_compile_fullgraph_training_step():
    _train_step_matches("cpp", "aot_eager")


@pytest.mark.triton_interpret
def test_torch_compile_fullgraph_training_step_triton():
    _train_step_matches("triton", "aot_eager")


@pytest.mark.slow
def test_torch_compile_inductor_training_step():
    _train_step_matches("cpp", "inductor")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_modules(backend):
    z1, z2 = torch.randn(40, 16), torch.randn(40, 16)
    with eitp_kernels.use_backend(backend):
        loss = eitp_nn.CoherenceLoss(offdiag_weight=0.25, squared=True)(z1)
        bt = eitp_nn.BarlowTwinsLoss()(z1, z2)
    assert _close(loss, z1, offdiag_weight=0.25, squared=True)
    # Barlow Twins as written in its paper: batch norm without affine, c = bn(z1)^T bn(z2) / N
    bn = torch.nn.BatchNorm1d(16, affine=False).double().train()
    c = bn(z1.double()).t() @ bn(z2.double()) / 40
    on = ((torch.diagonal(c) - 1) ** 2).sum()
    off = (c ** 2).sum() - (torch.diagonal(c) ** 2).sum()
    assert _rel(bt, on + 0.0051 * off) < RTOL[torch.float32]


# --------------------------------------------------------------------------
# GPU (run where one is lent)
# --------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(2, 1, None), (17, 1000, None), (300, 70, None), (33, 40, 23), (64, 500, 700)])
def test_gpu_backends_match_reference(backend, dtype, shape):
    n, d, dp = shape
    x = torch.randn(n, d, device="cuda").to(dtype).requires_grad_()
    y = None if dp is None else torch.randn(n, dp, device="cuda").to(dtype).requires_grad_()
    out = _ours(backend, x, y, offdiag_weight=0.5)
    # forward: RTOL, or within 2x eager's own error (the CPU tests' rule: shape (2, 1) has a loss
    # near 0, all cancellation, whose relative error no fp32 computation keeps small)
    assert _close(out.detach(), x.detach(), None if y is None else y.detach(), offdiag_weight=0.5)
    got = torch.autograd.grad(out, [t for t in (x, y) if t is not None])
    x64 = x.detach().double().requires_grad_()
    y64 = None if y is None else y.detach().double().requires_grad_()
    r64 = reference.coherence_loss(x64, y64, offdiag_weight=0.5)
    exp = torch.autograd.grad(r64, [t for t in (x64, y64) if t is not None])
    xe = x.detach().clone().requires_grad_()
    ye = None if y is None else y.detach().clone().requires_grad_()
    eager = torch.autograd.grad(reference.coherence_loss(xe, ye, offdiag_weight=0.5),
                                [t for t in (xe, ye) if t is not None])
    bound = max(1e-4 if dtype in (torch.float32, torch.float64) else 1e-2, _cancellation_rtol(x64, y64))
    for g, e, ge in zip(got, exp, eager):
        assert _rel(g, e) <= max(bound, 2 * _rel(ge, e)), (_rel(g, e), _rel(ge, e), bound)


def _cancellation_rtol(x64, y64):
    """The relative error an fp32 gradient of ||R - I|| may carry from rounding R alone:
    R - I is formed from an R rounded to fp32 (unit roundoff 2^-24), so its relative error,
    and the gradient's, grows by max|R| / max|R - I| (e.g. N = 2, D = 1: R = var / (var + eps),
    R - 1 ~ 1e-5; an H200 run's CUDA and Triton gradients were 8.7e-4 and 9.1e-4 off, eager's
    1.9e-4). 8 roundings' worth of slack."""
    r = reference.correlation_matrix(x64.detach(), None if y64 is None else y64.detach())
    deviation = (r - torch.eye(*r.shape, dtype=r.dtype, device=r.device)).abs().max().item()
    return 8 * 2.0 ** -24 * r.abs().max().item() / max(deviation, 1e-300)


def test_barlow_twins_rejects_different_widths():
    from eitp_kernels import nn as eitp_nn

    loss = eitp_nn.BarlowTwinsLoss()
    with pytest.raises(ValueError, match=r"BarlowTwinsLoss: z1 and z2 must have the same feature width .* "
                                         r"z1 of shape \(16, 8\) \(8 features\) and z2 of shape \(16, 2, 3\) "
                                         r"\(6 features\)"):
        loss(torch.randn(16, 8), torch.randn(16, 2, 3))
    # same width after flattening is fine, and the general op keeps the D x D' form
    z1, z2 = torch.randn(16, 6), torch.randn(16, 2, 3)
    torch.testing.assert_close(loss(z1, z2), eitp_kernels.coherence_loss(z1, z2.reshape(16, 6), offdiag_weight=0.0051,
                                                                         squared=True))
    assert torch.isfinite(eitp_kernels.coherence_loss(torch.randn(16, 8), torch.randn(16, 6)))


# --------------------------------------------------------------------------
# the planner: one pure function of the shapes, the device and whether a
# gradient follows; every backend takes its path as an argument
# --------------------------------------------------------------------------

# (N, D, D' or None) just on each side of the Gram rule, g the Gram form's
# multiply-adds (self N^2 D, cross N^2 (D + D')) and p the product's (N D^2,
# 2 N D D'): GRAM when 4 g < 3 p (self 4N < 3D), with or without a backward.
GRAM_SIDE = [(30, 41, None), (35, 40, 60), (256, 512, None)]  # the last: the EIT-P regularizer's layers
PRODUCT_SIDE = [(30, 40, None), (36, 40, 60), (256, 256, None)]


@pytest.mark.parametrize("backward", [False, True])
def test_plan_gram_rule(backward):
    for shape in GRAM_SIDE + PRODUCT_SIDE:
        for device in ("cpu", "cuda"):
            got = coherence_ops.plan(*shape, device, backward)
            assert (got == GRAM) == (shape in GRAM_SIDE), (shape, device, backward, got)
            if shape in PRODUCT_SIDE and (backward or device == "cuda"):
                assert got == PRODUCT, (shape, device, backward, got)


def test_plan_cpu_forward_alone():
    assert coherence_ops.plan(2048, 1024, None, "cpu", False) == BLOCKS  # half the multiply-adds
    assert coherence_ops.plan(2048, 1024, 1024, "cpu", False) == PRODUCT  # P no larger than the inputs
    assert coherence_ops.plan(800, 1024, 1024, "cpu", False) == BLOCKS  # P larger than the inputs
    assert coherence_ops.plan(800, 1024, 1024, "cuda", False) == PRODUCT


def test_python_plans_product_whenever_a_gradient_is_taken():
    x = torch.randn(40, 40, dtype=torch.float64)
    y = torch.randn(40, 60, dtype=torch.float64)
    assert coherence_ops._plan_for(x, y) == BLOCKS
    x.requires_grad_()
    assert coherence_ops._plan_for(x, y) == PRODUCT
    with torch.no_grad():
        assert coherence_ops._plan_for(x, y) == BLOCKS


def _path_results(ops, x, y, path, squared):
    out = ops.coherence_forward(x, y, 0.7, 1.3, squared, 1e-5, path)
    grads = ops.coherence_backward(torch.tensor(1.5, dtype=x.dtype), out[0], x, y, *out[1:], 0.7, 1.3, squared, path)
    return out[0], grads


def _assert_paths_agree(ops, shape, offset):
    # every path on fp64 inputs: the loss and gradients of the reference's autograd
    n, d, dp = shape
    g = torch.Generator().manual_seed(n * d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + offset * torch.linspace(-1, 1, d, dtype=torch.float64)
    y = None if dp is None else torch.randn(n, dp, generator=g, dtype=torch.float64) + 0.3 * x[:, :1]
    for squared in (False, True):
        xr = x.clone().requires_grad_()
        yr = None if y is None else y.clone().requires_grad_()
        ref = reference.coherence_loss(xr, yr, diag_weight=0.7, offdiag_weight=1.3, squared=squared)
        want = torch.autograd.grad(ref * 1.5, [t for t in (xr, yr) if t is not None])
        for path in PATHS:
            loss, grads = _path_results(ops, x, y, path, squared)
            torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=0, msg=f"path {path}")
            for got, exp in zip(grads, want):
                torch.testing.assert_close(got, exp, rtol=1e-8, atol=1e-10, msg=f"path {path}")


@pytest.mark.parametrize("shape", [(20, 41, None), (24, 40, 60), (70, 33, 40), (300, 70, None)],
                         ids=lambda s: "x".join(map(str, (s[0], s[1], s[2] or "self"))))
def test_every_path_native(shape):
    _assert_paths_agree(torch.ops.eitp, shape, offset=1.0)


@pytest.mark.triton_interpret
@pytest.mark.parametrize("shape", [(20, 41, None), (24, 40, 60), (70, 33, 40)],
                         ids=lambda s: "x".join(map(str, (s[0], s[1], s[2] or "self"))))
def test_every_path_triton(shape):
    from eitp_kernels.ops import coherence  # noqa: F401  (registers the Triton ops)

    # offset 12: column means from 0 to 6 standard deviations, so some 32 x 32
    # tiles of P take the raw product and others are recomputed standardized
    _assert_paths_agree(torch.ops.eitp_triton, shape, offset=12.0)


@pytest.mark.triton_interpret
def test_triton_gram_forward_layout_keeps_a_symbolic_width():
    # torch.compile with dynamic shapes traces the launcher with symbolic sizes: GRAM's forward
    # layout (no panels of P) may guard on N's chunking but must not specialise the width D
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    from eitp_kernels.triton import coherence as triton_coherence

    env = ShapeEnv()
    n, d = (env.create_symintnode(env.create_symbol(v, ConstantSource(name), dynamic_dim=DimDynamic.DYNAMIC),
                                  hint=v) for v, name in ((300, "n"), (600, "d")))
    layout = triton_coherence._forward_layout(n, d, d, True, GRAM)
    assert not env.replacements and all("Eq" not in str(guard.expr) for guard in env.guards), env.guards
    assert layout.panels == () and isinstance(layout.finalize_grid[0], torch.SymInt)


@pytest.mark.triton_interpret
def test_triton_blocks_forward_by_two_panels():
    # D > 256: the BLOCKS forward reduces P by row panels, 256 rows and a short last one
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 260, generator=g, dtype=torch.float64)
    loss = torch.ops.eitp_triton.coherence_forward(x, None, 0.5, 2.0, False, 1e-5, BLOCKS)[0]
    torch.testing.assert_close(loss, _ref64(x, diag_weight=0.5, offdiag_weight=2.0), rtol=1e-10, atol=0)


@pytest.mark.triton_interpret
def test_triton_raw_product_tiles_fp32():
    # fp32: tiles within the mean limit from the corrected raw product, the
    # others recomputed; the loss and gradients against the fp64 reference
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 70, generator=g) + torch.linspace(-8, 8, 70)
    y = torch.randn(200, 45, generator=g) + 0.5 * x[:, :45]
    _grads_vs_reference("triton", x, y, diag_weight=1.0, offdiag_weight=0.0051, squared=True)


# --------------------------------------------------------------------------
# CPU cross-correlation backward by row blocks (kept P, N >= D: Barlow Twins)
# --------------------------------------------------------------------------

ROW_BLOCK_SHAPES = [  # (N, D, D'): N >= D, D' (the tile path, so the forward keeps P)
    (9, 5, 3), (37, 3, 11), (301, 40, 70), (700, 97, 33),
    (1100, 64, 64),  # several row blocks and a short last one
]


def _barlow_grads(x, y, **kwargs):
    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = _ours("cpp", xs, ys, **kwargs)
    return (loss, *torch.autograd.grad(loss * 1.5, (xs, ys)))


def _assert_barlow_fp64(x, y, kwargs, rtol):
    """The cpp loss and both gradients of fp64 x, y against autograd through
    the reference: the loss within rtol, the gradients within 100 rtol (and
    0.1 rtol of their largest entry). Returns the reference loss."""
    loss, dx, dy = _barlow_grads(x, y, **kwargs)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    ref = reference.coherence_loss(xr, yr, **kwargs)
    ex, ey = torch.autograd.grad(ref * 1.5, (xr, yr))
    torch.testing.assert_close(loss, ref.detach(), rtol=rtol, atol=0)
    for got, want in ((dx, ex), (dy, ey)):
        torch.testing.assert_close(got, want, rtol=100 * rtol, atol=0.1 * rtol * want.abs().max().item())
    return ref.detach()


@pytest.mark.parametrize("shape", ROW_BLOCK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("squared", [False, True])
def test_cross_row_block_backward_fp64_native(shape, squared):
    # The row-block backward (its column means of dz taken from P) against
    # plain autograd through the fp64 reference, with columns far from zero mean.
    n, d, dp = shape
    g = torch.Generator().manual_seed(n + d + dp)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + torch.linspace(-50, 50, d, dtype=torch.float64)
    y = torch.randn(n, dp, generator=g, dtype=torch.float64) + 0.3 * x[:, torch.arange(dp) % d]
    _assert_barlow_fp64(x, y, dict(diag_weight=0.7, offdiag_weight=0.0051, squared=squared), rtol=1e-11)


@pytest.mark.parametrize("shape", [(301, 40, 70), (1100, 64, 48)], ids=lambda s: "x".join(map(str, s)))
def test_cross_row_block_backward_fp32_native(shape):
    n, d, dp = shape
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g) + torch.linspace(-20, 20, d)
    y = torch.randn(n, dp, generator=g) + 0.5 * x[:, torch.arange(dp) % d]
    _grads_vs_reference("cpp", x, y, diag_weight=1.0, offdiag_weight=0.0051, squared=True)


def test_cross_row_block_backward_layouts_and_dtypes_native():
    # Non-contiguous inputs give the contiguous inputs' gradients; a float16 x
    # with a float32 y gets each gradient in its own dtype (rounded once).
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 24, generator=g)
    y = torch.randn(300, 17, generator=g) + 0.5 * x[:, :17]
    kwargs = dict(offdiag_weight=0.0051, squared=True)
    want = _barlow_grads(x, y, **kwargs)
    xt, yt = x.t().contiguous().t(), y.t().contiguous().t()
    assert not xt.is_contiguous() and not yt.is_contiguous()
    for got, exp in zip(_barlow_grads(xt, yt, **kwargs), want):
        torch.testing.assert_close(got, exp, rtol=0, atol=0)
    x16 = x.half()
    loss, dx, dy = _barlow_grads(x16, y, **kwargs)
    assert dx.dtype == torch.float16 and dy.dtype == torch.float32
    _, ex, ey = _barlow_grads(x16.float(), y, **kwargs)
    torch.testing.assert_close(dx, ex.half(), rtol=0, atol=0)
    torch.testing.assert_close(dy, ey, rtol=0, atol=0)


def test_cross_row_block_backward_thread_counts_native():
    # Block heights depend on N only: from the same forward outputs 1 and 2
    # threads give the same bits (the forward's products themselves may round
    # differently under MKL's threading: tests/test_determinism.py).
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1100, 300, generator=g)
    y = torch.randn(1100, 80, generator=g) + 0.5 * x[:, :80]
    old = torch.get_num_threads()
    try:
        fwd = torch.ops.eitp.coherence_forward(x, y, 1.0, 0.0051, False, 1e-5, PRODUCT)
        results = []
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            results.append(torch.ops.eitp.coherence_backward(torch.tensor(1.5), fwd[0], x, y, *fwd[1:6], 1.0, 0.0051,
                                                             False, PRODUCT))
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for got, exp in zip(other, results[0]):
            torch.testing.assert_close(got, exp, rtol=0, atol=0)


def test_cross_row_block_backward_matches_whole_matrix_backward_fp32_native():
    # Columns with a mean 3000x their spread: the standardized columns' means
    # (about 1e-5, not 0, in fp32) enter the gradient at the 1e-5 level; the
    # row-block backward accounts for them like the whole-matrix epilogue
    # (the GRAM path's), which sums dz itself.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(700, 40, generator=g) + 3e3
    y = torch.randn(700, 30, generator=g) + 0.5 * x[:, :30]
    out = torch.ops.eitp.coherence_forward(x, y, 1.0, 0.0051, True, 1e-5, PRODUCT)
    one = torch.tensor(1.0)
    whole = torch.ops.eitp.coherence_backward(one, out[0], x, y, *out[1:5], out[5].new_empty(0), 1.0, 0.0051, True,
                                              GRAM)
    rows = torch.ops.eitp.coherence_backward(one, out[0], x, y, *out[1:6], 1.0, 0.0051, True, PRODUCT)
    for got, exp in zip(rows, whole):
        assert _rel(got, exp) < 1e-6, _rel(got, exp)


# --------------------------------------------------------------------------
# CPU cross-correlation by products of the raw inputs (column means within two
# standard deviations of zero: csrc/kernels/coherence.h, kRawMeanLimit)
# --------------------------------------------------------------------------

RAW_SHAPES = ROW_BLOCK_SHAPES + [(2, 1, 1), (64, 64, 5), (257, 33, 64)]


def _offset_columns(n, d, ratio, generator, dtype):
    """(n, d) columns with std about 3 and means up to ``ratio`` standard deviations."""
    spread = torch.linspace(-ratio, ratio, d, dtype=torch.float64) * 3.0
    return (torch.randn(n, d, generator=generator, dtype=torch.float64) * 3.0 + spread).to(dtype)


@pytest.mark.parametrize("shape", RAW_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("ratio", [0.0, 1.5])
@pytest.mark.parametrize("squared", [False, True])
def test_cross_raw_products_fp64_native(shape, ratio, squared):
    # Loss and both gradients against autograd through the fp64 reference.
    n, d, dp = shape
    g = torch.Generator().manual_seed(7 * n + d + dp)
    x = _offset_columns(n, d, ratio, g, torch.float64)
    y = _offset_columns(n, dp, ratio, g, torch.float64) + 0.3 * x[:, torch.arange(dp) % d]
    kwargs = dict(diag_weight=0.7, offdiag_weight=0.0051, squared=squared)
    ref = _assert_barlow_fp64(x, y, kwargs, rtol=1e-10)
    # Without a gradient the forward makes the same product (no kept copy).
    with torch.no_grad():
        torch.testing.assert_close(_ours("cpp", x, y, **kwargs), ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ratio", [0.5, 1.9, 2.5])
def test_cross_raw_products_narrow_native(dtype, ratio):
    # Both sides of the limit in fp32 (and narrower inputs, up-cast first).
    g = torch.Generator().manual_seed(11)
    x = _offset_columns(600, 48, ratio, g, torch.float32)
    y = (_offset_columns(600, 40, ratio, g, torch.float32) + 0.5 * x[:, :40]).to(dtype)
    _grads_vs_reference("cpp", x.to(dtype), y, diag_weight=1.0, offdiag_weight=0.0051, squared=True)


def test_cross_raw_products_nan_native():
    # A NaN column fails the limit check: the standardized path keeps the NaN rules.
    x = torch.randn(300, 20)
    y = torch.randn(300, 30)
    x[5, 3] = float("nan")
    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = _ours("cpp", xs, ys, offdiag_weight=0.0051)
    assert torch.isnan(loss)
    loss.backward()
    assert torch.isnan(xs.grad).any() and torch.isnan(ys.grad).any()
