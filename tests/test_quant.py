"""int8 quantize / dequantize / fake-quant on every backend against the reference."""
import pytest
import torch

import eitp_kernels
from eitp_kernels import reference

from conftest import FLOAT_DTYPES, cpu_backends

CPU_BACKENDS = cpu_backends()
NAN, INF = float("nan"), float("inf")


def _specials(dtype):
    """7 x 1000 with NaN, +-Inf, an all-zero row and a row with one huge outlier."""
    x = torch.randn(7, 1000) * 3
    x[0, 3], x[0, 500], x[1, 7], x[1, 8] = NAN, INF, -INF, NAN
    x[2] = 0.0
    x[3, 10] = 0.25 * min(torch.finfo(dtype).max, torch.finfo(torch.float32).max)  # a single huge outlier: every other code rounds to 0
    x[4] = torch.tensor([INF, -INF, NAN] * 333 + [NAN])  # no finite value at all
    x[5] = x[5].abs() + 1.0  # all positive: the affine range is widened to include 0
    return x.to(dtype)


# name -> (tensor factory by dtype, group_size used for granularity="group")
CASES = {
    "7x13": (lambda dt: (torch.randn(7, 13) * 5).to(dt), 13),  # group == the whole row
    "one_element_groups": (lambda dt: torch.randn(5, 6).to(dt), 1),
    "specials": (_specials, 40),
    "3d": (lambda dt: torch.randn(4, 5, 24).to(dt), 8),
    "1d": (lambda dt: torch.randn(37).to(dt), 37),
    "one_long_row": (lambda dt: (torch.randn(1, 40001) * 7).to(dt), 40001),  # parallel / multi-chunk per-tensor paths
}
GRANULARITIES = [("tensor", 0), ("channel", 0), ("channel", -1), ("group", 0)]


def _kwargs(granularity, axis, group_size):
    return {"granularity": granularity, "axis": axis, "group_size": group_size}


def _scale_rows(x, granularity, axis, group_size):
    if granularity == "tensor":
        return 1
    return x.shape[axis] if granularity == "channel" else x.numel() // group_size


def _assert_same(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def _check_against_reference(backend, x, kw, symmetric):
    with eitp_kernels.use_backend(backend):
        q, s, zp = eitp_kernels.quantize_int8(x, symmetric=symmetric, **kw)
        out = eitp_kernels.fake_quant_int8(x, symmetric=symmetric, **kw)
    rq, rs, rzp = reference.quantize_int8(x, kw["granularity"], kw["axis"], kw["group_size"], symmetric)
    _assert_same(q, rq)
    _assert_same(s, rs)
    if symmetric:
        assert zp is None and rzp is None
    else:
        _assert_same(zp, rzp)
    _assert_same(out, reference.fake_quant_int8(x, kw["granularity"], kw["axis"], kw["group_size"], symmetric))
    for dtype in {x.dtype, torch.float32}:
        with eitp_kernels.use_backend(backend):
            deq = eitp_kernels.dequantize_int8(rq, rs, rzp, dtype=dtype, **kw)
        _assert_same(deq, reference.dequantize_int8(rq, rs, rzp, kw["granularity"], kw["axis"], kw["group_size"],
                                                    dtype=dtype))
    return q, s, zp


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("granularity,axis", GRANULARITIES)
def test_bit_identical_to_reference(backend, dtype, case, granularity, axis):
    make, group_size = CASES[case]
    x = make(dtype)
    if backend == "triton" and not torch.cuda.is_available():
        # The interpreter runs each program in Python (~30 ms each here): keep
        # to few rows; the GPU test runs every case.
        if _scale_rows(x, granularity, axis, group_size) > 16:
            pytest.skip("interpreter time: too many rows (every case runs in the GPU test)")
        if x.numel() > 10000 and dtype != torch.float32:
            pytest.skip("interpreter time: the long row runs in fp32 only")
    for symmetric in (True, False):
        _check_against_reference(backend, x, _kwargs(granularity, axis, group_size), symmetric)


def _edge_rows(dtype, length, subnormals=True):
    """(rows, length) of dtype whose per-row scales reach every branch of the scale computation."""
    g = torch.Generator().manual_seed(5)
    fmax = min(torch.finfo(dtype).max, torch.finfo(torch.float32).max)
    tiny = torch.finfo(dtype).tiny
    base = torch.randn(length, generator=g, dtype=torch.float64)
    rows = [base * 3, base.abs() + 1.0, -base.abs(), torch.zeros(length),
            torch.tensor([INF, -INF, NAN] * length)[:length]]
    wide = base.clone()
    wide[0], wide[-1] = fmax, -fmax  # affine max - min overflows float32: the float64 path
    near = base.clone()
    near[0], near[-1] = 0.5 * fmax, -0.5 * fmax  # just within float32
    tiny_lo = base.abs() * 100
    tiny_lo[-1] = -tiny  # min / scale below the reciprocal's range: a zero point of -128
    rows += [wide, near, tiny_lo] + ([base * tiny * 2.0**-3] if subnormals else [])  # subnormal values
    exponents = (-20, -8, 8) if dtype == torch.float16 else (-130, -64, 64, 120) if subnormals else (-64, 64, 120)
    rows += [base * 2.0**k for k in exponents]
    if length >= 255:  # ties: absmax 127 (symmetric scale 1), then k + 0.5 for k in -127..126
        ties = torch.cat([torch.tensor([127.0]), torch.arange(-127, 127, dtype=torch.float64) + 0.5])
        rows.append(torch.cat([ties, base[: length - ties.numel()]]) if length > ties.numel() else ties[:length])
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("length", [1, 300, 16384])
def test_per_channel_edge_rows(backend, dtype, length):
    """Per-channel rows reaching every branch of the scale (affine range overflowing float32,
    subnormal and tiny values, ties, no finite value): bit for bit the reference. On the triton
    backend rows up to 16384 elements are quantized from registers (_quant_row_tile_kernel: the
    scale without float64 or a division call unless affine max - min overflows float32)."""
    if backend == "triton" and not torch.cuda.is_available() and length == 16384 and dtype != torch.float32:
        pytest.skip("interpreter time: the longest rows run in fp32 only")
    # Triton's interpreter converts bfloat16 subnormals to float32 zeros (a GPU converts them exactly)
    interpreted_bf16 = backend == "triton" and not torch.cuda.is_available() and dtype == torch.bfloat16
    x = _edge_rows(dtype, length, subnormals=not interpreted_bf16)
    for symmetric in (True, False):
        _check_against_reference(backend, x, _kwargs("channel", 0, length), symmetric)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("granularity,axis", GRANULARITIES)
def test_noncontiguous_inputs(backend, granularity, axis):
    base = torch.randn(26, 15)
    views = (base.t(), base[::2, 1:14], base.t()[:, ::2])
    if backend == "triton" and not torch.cuda.is_available():
        views = views[2:]  # interpreter time
    for x in views:
        for symmetric in (True, False):
            _check_against_reference(backend, x, _kwargs(granularity, axis, x.shape[-1]), symmetric)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_documented_special_values(backend):
    x = torch.tensor([[1.0, -2.0, INF, -INF, NAN, 0.5]])
    with eitp_kernels.use_backend(backend):
        q, s, _ = eitp_kernels.quantize_int8(x, granularity="channel")
        qa, sa, zpa = eitp_kernels.quantize_int8(x, granularity="channel", symmetric=False)
        out = eitp_kernels.fake_quant_int8(x, granularity="channel")
        zeros, s0, _ = eitp_kernels.quantize_int8(torch.zeros(3, 4), granularity="channel")
    assert s.item() == (torch.tensor(2.0) / 127).item() and q[0, 2] == 127 and q[0, 3] == -127 and q[0, 4] == 0
    assert qa[0, 2] == 127 and qa[0, 3] == -128 and qa[0, 4] == zpa.item()
    assert torch.isnan(out[0, 4]) and out[0, 2] == 127 * s and out[0, 3] == -127 * s
    assert (zeros == 0).all() and (s0 == 1.0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_static_scale_rounds_half_to_even_and_clips(backend, dtype):
    x = (torch.arange(-300, 300, dtype=torch.float64) + 0.5).to(dtype).reshape(2, 300)  # exact ties, some clipped
    scale = torch.tensor([1.0, 2.0])
    zp = torch.tensor([3, -5], dtype=torch.int32)
    for symmetric in (True, False):
        kw = {"granularity": "channel", "scale": scale, "zero_point": None if symmetric else zp}
        with eitp_kernels.use_backend(backend):
            q, s, z = eitp_kernels.quantize_int8(x, symmetric=symmetric, **kw)
        rq, _, _ = reference.quantize_int8(x, "channel", 0, 128, symmetric, scale, None if symmetric else zp)
        _assert_same(q, rq)
        assert torch.equal(s, scale) and (z is None if symmetric else torch.equal(z, zp))
    # Python-number scale, per tensor
    with eitp_kernels.use_backend(backend):
        q, s, _ = eitp_kernels.quantize_int8(x, scale=0.5)
    _assert_same(q, reference.quantize_int8(x, scale=0.5)[0])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("granularity,axis", GRANULARITIES)
def test_dequantized_within_half_a_step(backend, dtype, granularity, axis):
    if backend == "triton" and not torch.cuda.is_available() and dtype != torch.float32:
        pytest.skip("interpreter time: fp32 only (bit-exactness per dtype is tested above)")
    x = (torch.randn(9, 64) * 4).to(dtype)
    kw = _kwargs(granularity, axis, 16)
    for symmetric in (True, False):
        with eitp_kernels.use_backend(backend):
            q, s, zp = eitp_kernels.quantize_int8(x, symmetric=symmetric, **kw)
            deq = eitp_kernels.dequantize_int8(q, s, zp, dtype=torch.float64, **kw)
        step = reference.dequantize_int8(torch.ones_like(q), s, None, granularity, axis, 16, dtype=torch.float64)
        err = (deq - x.double()).abs() / step
        # fp32 division rounds x / scale (relative 2^-24 of a code up to 128); an
        # affine end can round half a step outward and be clipped (< 1 step).
        assert (err <= 0.5 + 1e-5).float().mean() > 0.99 and (err <= 1.0).all(), err.max()
        if symmetric:
            assert (err <= 0.5 + 1e-5).all(), err.max()


def _grads(backend, x, **kw):
    xb = x.clone().requires_grad_(True)
    with eitp_kernels.use_backend(backend):
        out = eitp_kernels.fake_quant_int8(xb, **kw)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    return out, xb.grad, grad_out


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gradient_straight_through_and_zero_where_clipped(backend, dtype):
    x = (torch.randn(6, 50) * 3).to(dtype)
    x[0, 0], x[1, 1], x[2, 2] = INF, -INF, NAN
    # Dynamic scale: identity except at non-finite values.
    out, grad, grad_out = _grads(backend, x, granularity="channel")
    expected = torch.where(torch.isfinite(x), grad_out, 0.0)
    _assert_same(grad, expected)
    # Static scale: values beyond +-127 * scale are clipped -> zero gradient.
    scale = torch.full((6,), 0.02)
    for symmetric, zp in ((True, None), (False, torch.full((6,), 7, dtype=torch.int32))):
        out, grad, grad_out = _grads(backend, x, granularity="channel", scale=scale, symmetric=symmetric,
                                     zero_point=zp)
        xr = x.detach().requires_grad_(True)
        ref = reference.fake_quant_int8(xr, "channel", 0, 128, symmetric, scale, zp)
        ref.backward(grad_out)
        _assert_same(out, ref.detach())
        _assert_same(grad, xr.grad)
        clipped = ~torch.isfinite(x) | (x.double().abs() > 140 * 0.02)  # beyond 127 + |zero point| codes
        inside = x.double().abs() < 100 * 0.02
        assert (grad[clipped] == 0).all() and clipped.sum() > 10
        assert torch.equal(grad[inside], grad_out[inside]) and inside.sum() > 10


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_per_group_and_tensor_match_reference(backend):
    x = torch.randn(4, 3, 32) * 2
    for kw in ({"granularity": "tensor"}, {"granularity": "group", "group_size": 8, "symmetric": False},
               {"granularity": "channel", "axis": 1}):
        out, grad, grad_out = _grads(backend, x, **kw)
        xr = x.clone().requires_grad_(True)
        ref = reference.fake_quant_int8(xr, **kw)
        ref.backward(grad_out)
        _assert_same(out, ref.detach())
        _assert_same(grad, xr.grad)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_and_zero_dim(backend):
    with eitp_kernels.use_backend(backend):
        q, s, _ = eitp_kernels.quantize_int8(torch.empty(0, 5), granularity="tensor")
        q0, s0, _ = eitp_kernels.quantize_int8(torch.tensor(2.5))
    assert q.shape == (0, 5) and s.item() == 1.0
    assert q0.shape == () and q0.item() == 127 and s0.item() == (torch.tensor(2.5) / 127).item()


def test_bad_inputs_name_the_argument():
    x = torch.randn(4, 6)
    q = torch.zeros(4, 6, dtype=torch.int8)
    with pytest.raises(TypeError, match="quantize_int8: x must be a torch.Tensor"):
        eitp_kernels.quantize_int8([1.0])
    with pytest.raises(TypeError, match="quantize_int8: x must have dtype"):
        eitp_kernels.quantize_int8(torch.arange(4))
    with pytest.raises(ValueError, match="granularity must be one of"):
        eitp_kernels.quantize_int8(x, granularity="row")
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        eitp_kernels.fake_quant_int8(x, granularity="channel", axis=2)
    with pytest.raises(ValueError, match="group_size=4 does not divide"):
        eitp_kernels.quantize_int8(x, granularity="group", group_size=4)
    with pytest.raises(TypeError, match="symmetric must be a bool"):
        eitp_kernels.quantize_int8(x, symmetric=1)
    with pytest.raises(ValueError, match=r"scale must have shape \(4,\)"):
        eitp_kernels.quantize_int8(x, granularity="channel", scale=torch.ones(6))
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        eitp_kernels.fake_quant_int8(x, granularity="channel", scale=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="scale must be > 0"):
        eitp_kernels.quantize_int8(x, scale=-1.0)
    with pytest.raises(ValueError, match="needs a zero_point"):
        eitp_kernels.quantize_int8(x, scale=1.0, symmetric=False)
    with pytest.raises(ValueError, match="zero_point is only used with symmetric=False"):
        eitp_kernels.quantize_int8(x, scale=1.0, zero_point=0)
    with pytest.raises(ValueError, match="zero_point was given without a scale"):
        eitp_kernels.quantize_int8(x, zero_point=0, symmetric=False)
    with pytest.raises(TypeError, match="zero_point must have an integer dtype"):
        eitp_kernels.quantize_int8(x, scale=1.0, zero_point=torch.tensor(1.0), symmetric=False)
    with pytest.raises(TypeError, match="dequantize_int8: q must have dtype"):
        eitp_kernels.dequantize_int8(x, 1.0)
    with pytest.raises(TypeError, match="dequantize_int8: dtype must be one of"):
        eitp_kernels.dequantize_int8(q, 1.0, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"dequantize_int8: scale must have shape \(4, 2\)"):
        eitp_kernels.dequantize_int8(q, torch.ones(4), granularity="group", group_size=3)


def test_compiled_ops_check_their_inputs():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="must be 2-D"):
        torch.ops.eitp.quantize_int8_rows(torch.randn(3), None, None, True)
    with pytest.raises(ValueError, match=r"scale must have shape \(3,\)"):
        torch.ops.eitp.fake_quant_int8_rows(x, torch.ones(4), None, True)
    with pytest.raises(ValueError, match="needs a zero_point"):
        torch.ops.eitp.quantize_int8_rows(x, torch.ones(3), None, False)


def _opcheck_cases(namespace):
    ops = getattr(torch.ops, namespace)
    x = torch.randn(5, 37)
    x[0, 0] = INF
    s = torch.rand(5) + 0.01
    zp = torch.randint(-20, 20, (5,), dtype=torch.int32)
    q = torch.randint(-128, 128, (5, 37), dtype=torch.int8)
    fq = ops.fake_quant_int8_rows
    return [
        (ops.quantize_int8_rows, (x, None, None, True)),
        (ops.quantize_int8_rows, (x.double(), s, zp, False)),
        (fq, (x.clone().requires_grad_(True), None, None, False)),
        (fq, (x.clone().requires_grad_(True), s, None, True)),
        (ops.dequantize_int8_rows, (q, s, zp, torch.bfloat16)),
        (ops.fake_quant_int8_rows_backward, (torch.randn(5, 37), x, s, zp, False)),
    ]


def test_opcheck_compiled_ops():
    for op, args in _opcheck_cases("eitp"):
        torch.library.opcheck(op, args)


@pytest.mark.triton_interpret
def test_opcheck_triton_ops():
    for op, args in _opcheck_cases("eitp_triton"):
        torch.library.opcheck(op, args)


def _qat_step(backend):
    torch.manual_seed(1)
    w = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(4, 16)

    def step(w, x):  # forward + loss; the compiled backward runs from loss.backward()
        wq = eitp_kernels.fake_quant_int8(w, granularity="channel", axis=0)
        xq = eitp_kernels.fake_quant_int8(x, granularity="tensor", symmetric=False)
        return (xq @ wq.t()).square().mean()

    return w, x, step


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_qat_step(compile_backend):
    w, x, step = _qat_step("cpp")
    with eitp_kernels.use_backend("reference"):
        loss = step(w, x)
        loss.backward()
    expected_grad = w.grad.clone()
    w.grad = None
    compiled = torch.compile(step, fullgraph=True, backend=compile_backend)
    with eitp_kernels.use_backend("cpp"):
        compiled_loss = compiled(w, x)
        compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(w.grad, expected_grad, rtol=1e-6, atol=1e-9)


@pytest.mark.gpu  # AOT tracing runs the triton_op body: not possible under the interpreter
def test_torch_compile_fullgraph_qat_step_triton():
    w, x, step = _qat_step("triton")
    w, x = w.detach().cuda().requires_grad_(True), x.cuda()
    with eitp_kernels.use_backend("reference"):
        loss = step(w, x)
        loss.backward()
    expected_grad = w.grad.clone()
    w.grad = None
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with eitp_kernels.use_backend("triton"):
        compiled_loss = compiled(w, x)
        compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(w.grad, expected_grad, rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("granularity,axis", GRANULARITIES)
def test_gpu_bit_identical_to_reference(backend, dtype, granularity, axis):
    for case, (make, group_size) in CASES.items():
        x = make(dtype).cuda()
        for symmetric in (True, False):
            _check_against_reference(backend, x, _kwargs(granularity, axis, group_size), symmetric)
    big = torch.randn(3000, 4096, device="cuda", dtype=dtype)  # per tensor: many chunks
    for symmetric in (True, False):
        _check_against_reference(backend, big, _kwargs(granularity, axis, 128), symmetric)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_gradients_match_reference(backend):
    x = torch.randn(64, 300, device="cuda") * 3
    scale = torch.full((64,), 0.02, device="cuda")
    out, grad, grad_out = _grads(backend, x, granularity="channel", scale=scale)
    xr = x.clone().requires_grad_(True)
    ref = reference.fake_quant_int8(xr, "channel", 0, 128, True, scale)
    ref.backward(grad_out)
    _assert_same(out, ref.detach())
    _assert_same(grad, xr.grad)


def test_dequantize_mis_shaped_scale_names_the_granularity_it_fits():
    q = torch.zeros(32, 6, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"dequantize_int8: scale must have shape \(\) for granularity='tensor' "
                                         r"and q of shape \(32, 6\), got \(32,\) \(a scale of this shape fits "
                                         r'granularity="channel", axis=0\)'):
        eitp_kernels.dequantize_int8(q, torch.ones(32))
    with pytest.raises(ValueError, match=r'fits granularity="channel", axis=1\)'):
        eitp_kernels.dequantize_int8(q, torch.ones(6))
    with pytest.raises(ValueError, match=r'fits granularity="group", group_size=3\)'):
        eitp_kernels.dequantize_int8(q, torch.ones(32, 2), granularity="channel")
    with pytest.raises(ValueError, match=r'zero_point must have shape \(32,\).*fits granularity="tensor"\)'):
        eitp_kernels.dequantize_int8(q, torch.ones(32), torch.zeros((), dtype=torch.int32).reshape(1),
                                     granularity="channel")
    with pytest.raises(ValueError, match=r"got \(5,\)$"):  # fits nothing: no hint
        eitp_kernels.dequantize_int8(q, torch.ones(5))
    # the shapes quantize_int8 returns still work
    x = torch.randn(32, 6)
    codes, scale, _ = eitp_kernels.quantize_int8(x, granularity="channel", axis=0)
    torch.testing.assert_close(eitp_kernels.dequantize_int8(codes, scale, granularity="channel", axis=0), x,
                               rtol=0, atol=float(scale.max()))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_every_float16_value(backend, symmetric):
    """All 65536 fp16 bit patterns (NaN payloads, +-Inf, subnormals, -0), one row per high byte,
    with a static scale so that rows of ordinary values get ordinary codes: codes, fake-quant values
    (NaN inputs keep their own bits), dequantized values and gradients equal the reference's bit
    for bit (the CPU kernels convert fp16 in blocks)."""
    x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16).reshape(256, 256)
    scale = torch.logspace(-6, 2, 256)
    zero_point = None if symmetric else torch.arange(-128, 128, dtype=torch.int32)
    kw = {"granularity": "channel", "axis": 0, "symmetric": symmetric, "scale": scale, "zero_point": zero_point}
    ref_kw = ("channel", 0, 128, symmetric, scale, zero_point)
    with eitp_kernels.use_backend(backend):
        q, _, _ = eitp_kernels.quantize_int8(x, **kw)
        out, grad, grad_out = _grads(backend, x, **kw)
        deq = eitp_kernels.dequantize_int8(q, scale, zero_point, granularity="channel", axis=0, dtype=torch.float16)
    assert torch.equal(q, reference.quantize_int8(x, "channel", 0, 128, symmetric, scale, zero_point)[0])
    xr = x.clone().requires_grad_(True)
    ref = reference.fake_quant_int8(xr, *ref_kw)
    ref.backward(grad_out)
    assert torch.equal(out.detach().view(torch.int16), ref.detach().view(torch.int16))
    nan = torch.isnan(x)
    assert torch.equal(out.detach().view(torch.int16)[nan], x.view(torch.int16)[nan]) and nan.sum() == 2046
    assert torch.equal(grad.view(torch.int16), xr.grad.view(torch.int16))
    expected = reference.dequantize_int8(q, scale, zero_point, "channel", 0, 128, dtype=torch.float16)
    assert torch.equal(deq.view(torch.int16), expected.view(torch.int16))
