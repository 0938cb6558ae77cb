"""Property fuzzing (hypothesis): every CPU backend agrees with the reference.

Random shapes (rank 0-3, odd sizes, empty where the op allows), dtypes,
strides (transposed, stepped and expanded views), value ranges (tiny to near
the dtype's max, with NaN/Inf sprinkled in), granularities, axes, group sizes,
bin counts, explicit ranges, bases and weights.

Budget: ``EITP_FUZZ_EXAMPLES`` examples per property (default 30, the CI
budget; 15 under the Triton interpreter), derandomized so CI is reproducible. The long mode runs
``EITP_FUZZ_LONG_EXAMPLES`` (default 500) per property with fresh randomness:

    EITP_FUZZ_EXAMPLES=30 pytest tests/test_fuzz.py                       # CI
    pytest -m fuzz_long tests/test_fuzz.py                                 # long
    TRITON_INTERPRET=1 pytest -m triton_interpret tests/test_fuzz.py       # Triton (interpreter)

Under the interpreter the Triton column uses the same properties with smaller
shapes.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import eitp_kernels as ek
from conftest import INTERPRETER_ON, cpu_backends

# The interpreter runs each Triton program in Python: fewer, smaller examples there.
CI_EXAMPLES = int(os.environ.get("EITP_FUZZ_EXAMPLES", "15" if INTERPRETER_ON else "30"))
LONG_EXAMPLES = int(os.environ.get("EITP_FUZZ_LONG_EXAMPLES", "500"))
MAX_SIDE = 6 if INTERPRETER_ON else 13

CI = settings(max_examples=CI_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
LONG = settings(max_examples=LONG_EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
BACKENDS = [b for b in cpu_backends() if (getattr(b, "values", (b,))[0] != "reference")]
PROPERTIES: dict[str, object] = {}


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------


@st.composite
def float_tensor(draw, min_rank=0, max_rank=3, min_side=0, dtypes=FLOATS, specials=True, max_magnitude=3e38):
    """A float tensor, possibly a non-contiguous or overlapping view, with
    NaN/+-Inf sprinkled into its storage when ``specials``."""
    dtype = draw(st.sampled_from(dtypes))
    rank = draw(st.integers(min_rank, max_rank))
    shape = [draw(st.integers(min_side, MAX_SIDE)) for _ in range(rank)]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    finfo = torch.finfo(dtype)
    magnitude = min(draw(st.sampled_from([1e-30, 1e-6, 1e-2, 1.0, 1e3, 1e30, 3e38])), float(finfo.max) / 4,
                    max_magnitude)
    offset = draw(st.sampled_from([0.0, 0.0, 1.0, -3.5]))
    layout = draw(st.sampled_from(["contig", "contig", "transpose", "step", "expand"])) if rank else "contig"
    if layout == "step":
        base_shape = shape[:-1] + [2 * shape[-1]]
    elif layout == "transpose":
        base_shape = list(reversed(shape))
    elif layout == "expand":
        base_shape = [1] + shape[1:]
    else:
        base_shape = shape
    base = (torch.randn(base_shape, generator=g, dtype=torch.float64) * magnitude + offset).to(dtype)
    if specials and base.numel() > 0 and draw(st.booleans()):
        idx = torch.randint(0, base.numel(), (max(1, base.numel() // 6),), generator=g)
        vals = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=dtype)
        base.view(-1)[idx] = vals[torch.randint(0, 3, idx.shape, generator=g)]
    if layout == "step":
        return base[..., ::2]
    if layout == "transpose":
        return base.permute(*reversed(range(rank)))
    if layout == "expand":
        return base.expand(shape)
    return base


def codes_tensor(draw):
    rank = draw(st.integers(0, 3))
    shape = [draw(st.integers(0, MAX_SIDE)) for _ in range(rank)]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from([torch.int8, torch.uint8]))
    lo, hi = draw(st.sampled_from([(-128, 128), (-3, 4), (0, 1)]))
    if dtype == torch.uint8:
        lo, hi = max(lo, 0), max(hi, 1)
    x = torch.randint(lo, hi, shape, generator=g, dtype=torch.int16).to(dtype)
    if rank >= 2 and draw(st.booleans()):
        x = x.transpose(0, -1)
    return x


def _close(got, want, what, *, exact=False, rtol=2e-5, atol=1e-6):
    got = got if isinstance(got, (tuple, list)) else [got]
    want = want if isinstance(want, (tuple, list)) else [want]
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None, what
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, (what, g.dtype, w.dtype, g.shape, w.shape)
        if exact or not w.dtype.is_floating_point:
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")
        else:
            torch.testing.assert_close(g, w, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _both(backend, fn):
    with ek.use_backend("reference"):
        want = fn()
    with ek.use_backend(backend):
        got = fn()
    return got, want


# --------------------------------------------------------------------------
# properties (each takes the backend and hypothesis' data object)
# --------------------------------------------------------------------------


def prop_finite_minmax(backend, data):
    x = data.draw(float_tensor(min_side=1))
    dim = data.draw(st.one_of(st.none(), st.integers(-x.dim(), x.dim() - 1))) if x.dim() else None
    got, want = _both(backend, lambda: ek.finite_minmax(x, dim=dim))
    _close(got, want, f"finite_minmax {x.dtype} {tuple(x.shape)} {x.stride()} dim={dim}", exact=True)


def prop_entropy(backend, data):
    if data.draw(st.integers(0, 4)) == 0:
        x, bins, rng = codes_tensor(data.draw), 256, None
    else:
        x = data.draw(float_tensor())
        bins = data.draw(st.sampled_from([1, 2, 3, 7, 16, 100, 256, 257, 1000]))
        rng = data.draw(st.sampled_from([None, None, (-1.0, 1.0), (0.0, 3.0), (-1e3, 1e-3)]))
    dim = data.draw(st.one_of(st.none(), st.integers(-x.dim(), x.dim() - 1))) if x.dim() else None
    base = data.draw(st.sampled_from([None, 2.0, 10.0, 0.5]))
    diff = x.dtype.is_floating_point and data.draw(st.integers(0, 3)) == 0
    what = f"entropy {x.dtype} {tuple(x.shape)} {x.stride()} bins={bins} range={rng} dim={dim} base={base} diff={diff}"
    got, want = _both(backend, lambda: ek.histogram_entropy(x, bins=bins, range=rng, dim=dim, base=base,
                                                            differentiable=diff))
    # Counts are integers; the entropy sums at most `bins` terms p log p.
    _close(got, want, what, rtol=1e-5, atol=1e-6 if got.dtype == torch.float32 else 1e-12)


def prop_entropy_many(backend, data):
    n = data.draw(st.integers(1, 4))
    ts = [data.draw(float_tensor(max_rank=2)) if data.draw(st.integers(0, 3)) else codes_tensor(data.draw)
          for _ in range(n)]
    codes = any(not t.dtype.is_floating_point for t in ts)
    bins = 256 if codes else data.draw(st.sampled_from([1, 5, 64, 300]))
    rng = None if codes else data.draw(st.sampled_from([None, (-2.0, 2.0)]))
    got, want = _both(backend, lambda: ek.histogram_entropy_many(ts, bins=bins, range=rng))
    _close(got, want, f"entropy_many {[(t.dtype, tuple(t.shape)) for t in ts]} bins={bins} range={rng}",
           rtol=1e-5, atol=1e-6 if got.dtype == torch.float32 else 1e-12)


def prop_coherence(backend, data):
    # Magnitudes up to 1e18: squares stay finite in float32. Beyond that the
    # backends disagree (known issue, see test_bad_inputs.py::test_known_coherence_square_overflow).
    x = data.draw(float_tensor(min_rank=1, max_rank=3, min_side=1, specials=False, max_magnitude=1e18,
                               dtypes=[torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    if x.shape[0] < 2:
        x = torch.cat([x, x * 0.5 + 1.0], 0)
    y = None
    if data.draw(st.booleans()):
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
        d2 = data.draw(st.integers(1, MAX_SIDE))
        y = torch.randn(x.shape[0], 2 * d2, generator=g, dtype=torch.float64)[:, ::2]
        y = y.to(data.draw(st.sampled_from([torch.float32, torch.float64])))
    a = data.draw(st.sampled_from([0.0, 1.0, 2.5]))
    b = data.draw(st.sampled_from([0.0, 0.0051, 1.0]))
    squared = data.draw(st.booleans())
    eps = data.draw(st.sampled_from([1e-5, 0.0, 1e-2]))
    if eps == 0.0:
        # eps = 0 with a (near-)constant column is documented as NaN; whether a
        # constant column's computed variance is exactly 0 depends on how the
        # mean is rounded (the reference and the kernels may differ).
        cols = x.reshape(x.shape[0], -1).double()
        spread = (cols.max(0).values - cols.min(0).values) / cols.abs().max(0).values.clamp_min(1e-300)
        assume(bool((spread > 1e-2).all()))
    what = f"coherence x={x.dtype}{tuple(x.shape)}{x.stride()} y={None if y is None else (y.dtype, tuple(y.shape))} a={a} b={b} sq={squared} eps={eps}"
    got, want = _both(backend, lambda: ek.coherence_loss(x, y, diag_weight=a, offdiag_weight=b, squared=squared, eps=eps))
    fp64 = want.dtype == torch.float64
    # Accumulation order differs (tiles, OpenMP partial sums): fp32 rounding of
    # sums over N*D terms, amplified where eps = 0 meets a near-constant column.
    rtol = 1e-9 if fp64 else (2e-3 if eps == 0.0 else 1e-4)
    atol = 1e-9 if fp64 else 1e-4
    _close(got, want, what, rtol=rtol, atol=atol)


def _layout(data, x):
    gran = data.draw(st.sampled_from(["tensor", "channel", "group"]))
    axis, group = 0, 128
    if x.dim() == 0:
        gran = "tensor"
    if gran == "channel":
        axis = data.draw(st.integers(-x.dim(), x.dim() - 1))
    if gran == "group":
        last = x.shape[-1]
        divisors = [d for d in range(1, last + 1) if last % d == 0] or [1]
        group = data.draw(st.sampled_from(divisors))
    return gran, axis, group


def prop_quant(backend, data):
    x = data.draw(float_tensor())
    gran, axis, group = _layout(data, x)
    symmetric = data.draw(st.booleans())
    static = x.numel() > 0 and data.draw(st.integers(0, 3)) == 0
    scale = zp = None
    if static:
        with ek.use_backend("reference"):
            _, s, z = ek.quantize_int8(x, granularity=gran, axis=axis, group_size=group, symmetric=symmetric)
        factor = data.draw(st.sampled_from([0.25, 1.0, 3.0]))
        scale = s * factor
        zp = None if symmetric else z
        # factor 3 can push a saturated (largest float32) scale to Inf: not a valid static scale
        if not bool(torch.isfinite(scale).all()):
            scale = zp = None
    kw = dict(granularity=gran, axis=axis, group_size=group, symmetric=symmetric, scale=scale, zero_point=zp)
    what = f"quant {x.dtype} {tuple(x.shape)} {x.stride()} {kw}"
    got, want = _both(backend, lambda: ek.quantize_int8(x, **kw))
    _close(got, want, what, exact=True)
    q, s, z = want
    assert bool(torch.isfinite(s).all()), what + " infinite scale"
    dtype = data.draw(st.sampled_from(FLOATS))
    got, want = _both(backend, lambda: ek.dequantize_int8(q, s, z, granularity=gran, axis=axis, group_size=group,
                                                          dtype=dtype))
    _close(got, want, what + f" dequant->{dtype}", exact=True)
    got, want = _both(backend, lambda: ek.fake_quant_int8(x, **kw))
    _close(got, want, what + " fake", exact=True)


PROPS = {
    "finite_minmax": prop_finite_minmax,
    "entropy": prop_entropy,
    "entropy_many": prop_entropy_many,
    "coherence": prop_coherence,
    "quant": prop_quant,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prop", sorted(PROPS))
def test_fuzz(prop, backend):
    CI(given(data=st.data())(lambda data: PROPS[prop](backend, data)))()


@pytest.mark.fuzz_long
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prop", sorted(PROPS))
def test_fuzz_long(prop, backend, request):
    if "fuzz_long" not in (request.config.option.markexpr or "") and os.environ.get("EITP_FUZZ_LONG", "0") in ("", "0"):
        pytest.skip("long fuzz: run with -m fuzz_long (or EITP_FUZZ_LONG=1)")
    LONG(given(data=st.data())(lambda data: PROPS[prop](backend, data)))()


def test_fuzz_budget():
    n = len(PROPS)
    print(f"\nfuzz budget: {n} properties x {CI_EXAMPLES} examples = {n * CI_EXAMPLES} per backend per CI run "
          f"(long mode, -m fuzz_long: {n} x {LONG_EXAMPLES} = {n * LONG_EXAMPLES})")
