"""histogram_entropy / histogram_entropy_many on every backend against the reference (docs/design.md §2.1)."""
import math

import pytest
import torch

import eitp_kernels
from eitp_kernels import _registration, reference
from eitp_kernels._triton import triton
from eitp_kernels.ops import entropy as ops
from eitp_kernels.triton import entropy as triton_entropy
from eitp_kernels.triton import finite_minmax as triton_finite_minmax

from conftest import FLOAT_DTYPES, INTERPRETER_ON, cpu_backends

CPU_BACKENDS = cpu_backends()
NAN, INF = float("nan"), float("inf")


def _rtol(dtype):
    return 1e-12 if dtype == torch.float64 else 1e-6


def _cases():
    """(x, bins, range, dim) cases; every one compared exactly on counts."""
    normal = torch.randn(7, 1001)
    normal[0, 3], normal[2, 5], normal[2, 6] = NAN, INF, -INF
    normal[4, :] = NAN  # nothing counted: NaN entropy
    edges = torch.arange(0, 257, dtype=torch.float64).repeat(3, 1)  # lo=0, hi=256, w=1: every value on an edge
    heavy = torch.distributions.StudentT(1.5).sample((5, 777))
    # hi - lo overflows float32 (w = inf: the CPU kernel's guarded path); after .to(fp16/bf16) it is inf
    huge = torch.tensor([[-3e38, 3e38, 0.0, 1.0, -1.0, 2e38] * 20])
    # just outside / on the explicit range, signed zeros and non-finite values, in a row long
    # enough for the vectorized blocks (and their scalar tail: 70 = 64 + 6)
    lo, hi = torch.tensor(-1.0), torch.tensor(1.5)
    around = torch.stack([torch.nextafter(lo, -lo.abs() - 1), lo, torch.nextafter(lo, hi), torch.tensor(-0.0),
                          torch.tensor(0.0), torch.nextafter(hi, lo), hi, torch.nextafter(hi, hi + 1),
                          torch.tensor(INF), torch.tensor(-INF), torch.tensor(NAN), torch.tensor(0.3)])
    around = torch.cat([around.repeat(5), torch.linspace(-1.2, 1.7, 10)]).unsqueeze(0)
    return {
        "normal_rows": (normal, 256, None, 1),
        "uniform_whole": (torch.rand(3, 1234) * 5 - 2, 100, None, None),
        "heavy_tailed": (heavy, 64, None, 1),
        "constant": (torch.full((3, 11), 1.25), 16, None, 1),
        "bin_edges_and_hi": (edges, 256, None, 1),
        "edges_coarse": (edges, 7, None, 1),
        "one_element": (torch.tensor([2.5]), 256, None, None),
        "seven": (torch.randn(7), 5, None, None),
        "explicit_range_drops_outside": (torch.randn(4, 999) * 2, 33, (-1.0, 1.5), 1),
        "explicit_range_on_hi": (torch.tensor([[-1.0, 1.5, 1.5, 0.0, 2.0, -3.0]]), 10, (-1.0, 1.5), 1),
        "dim0_3d": (torch.randn(13, 4, 3), 9, None, 0),
        "many_bins": (torch.randn(2, 20011), 5000, None, 1),
        "width_overflows_float32": (huge, 16, None, 1),
        "explicit_range_boundaries": (around, 10, (-1.0, 1.5), 1),
        "auto_range_boundaries": (around, 10, None, 1),
    }


CASES = list(_cases())


def _counts(backend, x, bins, rng, dim):
    rows, _ = reference.slices_as_rows(x, dim)
    rows = rows.contiguous()
    with eitp_kernels.use_backend(backend):
        lo, hi = (None, None) if x.dtype in (torch.int8, torch.uint8) else ops._range_rows(backend, rows, rng, None)
        return ops._counts_rows(backend, rows, lo, hi, bins, rng is not None)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_counts_and_entropy_match_reference(backend, dtype, case):
    x, bins, rng, dim = _cases()[case]
    x = x.to(dtype)
    ref_counts = reference.histogram_counts(x, bins=bins, range=rng, dim=dim)
    counts = _counts(backend, x, bins, rng, dim)
    assert counts.dtype == torch.int64
    torch.testing.assert_close(counts.reshape(ref_counts.shape).to(ref_counts.dtype), ref_counts, rtol=0, atol=0)
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(x, bins=bins, range=rng, dim=dim)
    ref = reference.histogram_entropy(x, bins=bins, range=rng, dim=dim)
    assert h.dtype == reference.compute_dtype(dtype) and h.shape == ref.shape
    torch.testing.assert_close(h, ref, rtol=_rtol(dtype), atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_large_odd_tensor_base2(backend):
    n = 1000003 if not INTERPRETER_ON else 200003
    x = torch.randn(n) * 3 + 1
    x[::9973] = NAN
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(x, base=2)
    ref = reference.histogram_entropy(x, base=2)
    torch.testing.assert_close(h, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(_counts(backend, x, 256, None, None).to(torch.float32),
                               reference.histogram_counts(x).unsqueeze(0), rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batched_odd_rows_noncontiguous(backend):
    n = 1001 if not INTERPRETER_ON else 201  # the interpreter runs one program per dim-0 slice
    x = torch.randn(n, 37).t()  # (37, n) non-contiguous, entropy per row along dim 1
    x[5, :10] = INF
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(x, bins=100, dim=1)
        h0 = eitp_kernels.histogram_entropy(x, bins=100, dim=0)
        hm = eitp_kernels.histogram_entropy(x[:, ::3], bins=100, dim=-1)  # strided last dim
    torch.testing.assert_close(h, reference.histogram_entropy(x, bins=100, dim=1), rtol=1e-6, atol=0)
    torch.testing.assert_close(h0, reference.histogram_entropy(x, bins=100, dim=0), rtol=1e-6, atol=0)
    torch.testing.assert_close(hm, reference.histogram_entropy(x[:, ::3], bins=100, dim=-1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8])
def test_int8_codes_exact(backend, dtype):
    lo, hi = (-128, 128) if dtype == torch.int8 else (0, 256)
    x = torch.randint(lo, hi, (5, 3001), dtype=dtype)
    x[1] = x[1].clamp(lo + 10, lo + 25)  # 16 codes
    x[2] = lo  # constant: 0 bits
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(x, dim=1, base=2)
        hw = eitp_kernels.histogram_entropy(x, base=2)
    torch.testing.assert_close(h, reference.histogram_entropy(x, dim=1, base=2), rtol=1e-6, atol=0)
    torch.testing.assert_close(hw, reference.histogram_entropy(x, base=2), rtol=1e-6, atol=0)
    assert h[2].item() == 0.0
    assert _counts(backend, x, 256, None, 1).sum().item() == x.numel()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_inf_behaviour(backend):
    x = torch.tensor([[NAN, INF, -INF], [1.0, 1.0, 1.0], [NAN, 2.0, 4.0]])
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(x, bins=4, dim=1)
        outside = eitp_kernels.histogram_entropy(torch.tensor([5.0, 6.0]), bins=4, range=(0.0, 1.0))
        empty = eitp_kernels.histogram_entropy(torch.empty(0, 3), bins=4, dim=0)
    assert math.isnan(h[0].item()) and h[1].item() == 0.0 and abs(h[2].item() - math.log(2)) < 1e-6
    assert math.isnan(outside.item())
    assert empty.shape == (3,) and torch.isnan(empty).all()


def test_huge_bins_cpu_single_copy_path():
    x = torch.randn(300001)
    with eitp_kernels.use_backend("cpp"):
        h = eitp_kernels.histogram_entropy(x, bins=70000)
    torch.testing.assert_close(h, reference.histogram_entropy(x, bins=70000), rtol=1e-6, atol=0)


# ---------------------------------------------------------------- differentiable


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rng,dim", [(None, None), (None, 1), ((-1.0, 1.5), 1)])
def test_differentiable_matches_reference_forward_and_gradient(backend, dtype, rng, dim):
    base = torch.randn(6, 2001)
    base[1, 4] = NAN
    base[3] = 0.5  # constant row (auto range): zero gradient
    x = base.to(dtype).requires_grad_()
    xr = base.to(dtype).requires_grad_()
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(x, bins=37, range=rng, dim=dim, differentiable=True, base=2)
    hr = reference.histogram_entropy(xr, bins=37, range=rng, dim=dim, differentiable=True, base=2)
    torch.testing.assert_close(h, hr, rtol=_rtol(dtype), atol=0)
    weights = torch.rand(h.shape, dtype=h.dtype)
    (h * weights).sum().backward()
    (hr * weights).sum().backward()
    assert x.grad.dtype == dtype
    scale = xr.grad.abs().max()
    torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=float(scale) * (1e-12 if dtype == torch.float64 else 1e-5))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_differentiable_gradcheck_fp64(backend):
    x = (torch.rand(3, 40, dtype=torch.float64) * 2.8 - 1.4).requires_grad_()
    with eitp_kernels.use_backend(backend):
        fn = lambda t: eitp_kernels.histogram_entropy(t, bins=6, range=(-1.5, 1.5), dim=1, differentiable=True)
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_differentiable_gradient_is_finite_difference_of_reference():
    x = torch.rand(500, dtype=torch.float64) * 3 - 1
    xg = x.clone().requires_grad_()
    with eitp_kernels.use_backend("cpp"):
        eitp_kernels.histogram_entropy(xg, bins=12, range=(-1.0, 2.0), differentiable=True).backward()
    eps = 1e-7
    for i in (0, 17, 123, 499):
        plus, minus = x.clone(), x.clone()
        plus[i] += eps
        minus[i] -= eps
        fd = (reference.histogram_entropy(plus, 12, (-1.0, 2.0), differentiable=True)
              - reference.histogram_entropy(minus, 12, (-1.0, 2.0), differentiable=True)) / (2 * eps)
        assert abs(fd.item() - xg.grad[i].item()) <= 1e-5 * max(1.0, abs(fd.item())), i


# ---------------------------------------------------------------- many tensors


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_many_matches_single_calls(backend):
    tensors = [torch.randn(300, 301), torch.randn(7).half(), torch.randn(1), torch.full((5,), 2.0),
               torch.randn(70001).bfloat16(), torch.randn(33, 3).t()]
    tensors[0][0, 0] = NAN
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy_many(tensors, bins=128, base=2)
        hr = eitp_kernels.histogram_entropy_many(tensors, bins=64, range=(-1.0, 1.0))
    assert h.shape == (len(tensors),) and h.dtype == torch.float32
    torch.testing.assert_close(h, torch.stack([reference.histogram_entropy(t, 128, base=2) for t in tensors]),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(hr, torch.stack([reference.histogram_entropy(t, 64, (-1.0, 1.0)) for t in tensors]),
                               rtol=1e-6, atol=0, equal_nan=True)  # the constant 2.0 is outside: NaN


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_many_codes_fp64_and_empty(backend):
    tensors = [torch.randint(-128, 128, (999,), dtype=torch.int8), torch.randn(77, dtype=torch.float64),
               torch.empty(0), torch.randint(0, 256, (5, 5), dtype=torch.uint8)]
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy_many(tensors)
    assert h.dtype == torch.float64
    ref = torch.stack([reference.histogram_entropy(t).double() for t in tensors])
    torch.testing.assert_close(h, ref, rtol=1e-6, atol=0, equal_nan=True)
    assert math.isnan(h[2].item())


def _many_list(big):
    """Mixed dtypes, odd sizes, empty tensors, views and non-finite values; `big`
    elements in the largest tensors (several work items on every backend)."""
    ts = [torch.randn(3), torch.empty(0), torch.randn(big) * 4, torch.randn(17).half(), torch.empty(0, 5),
          torch.randn(big // 3 + 1).bfloat16(), torch.randn(41, 9, dtype=torch.float64).t(), torch.randn(1),
          torch.randn(2 * big + 7)[::2], torch.full((13,), -0.5), torch.randn(big // 2, dtype=torch.float64)]
    ts[2][5], ts[2][6], ts[3][0] = NAN, INF, -INF
    ts[8][::100] = NAN  # a strided view: the NaN are in it
    return ts


def _many_counts(backend, tensors, bins, rng):
    with eitp_kernels.use_backend(backend):
        return ops._counts_many(backend, list(tensors), bins, rng)


def _assert_many_matches_reference(backend, tensors, bins, rng, base=None):
    """Exact counts of every tensor, and the entropies, against the reference."""
    counts = _many_counts(backend, tensors, bins, rng)
    ref_counts = torch.stack([reference.histogram_counts(t, bins=bins, range=rng).double() for t in tensors])
    assert counts.dtype == torch.int64 and counts.shape == (len(tensors), bins)
    torch.testing.assert_close(counts.double(), ref_counts, rtol=0, atol=0)
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy_many(tensors, bins=bins, range=rng, base=base)
    out_dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    # the entropy of the exact counts in float64, then rounded once to the result dtype
    ref = reference.entropy_from_counts(ref_counts, None if base is None else math.log(base)).to(out_dtype)
    assert h.dtype == out_dtype
    torch.testing.assert_close(h, ref, rtol=_rtol(out_dtype), atol=0, equal_nan=True)


MANY_BACKENDS = [b for b in CPU_BACKENDS if b != "reference"]


@pytest.mark.parametrize("backend", MANY_BACKENDS)
@pytest.mark.parametrize("bins,rng", [(256, None), (7, None), (1, None), (33, (-1.0, 1.5)), (5000, None),
                                      (5000, (-0.25, 3.0))])
def test_many_mixed_dtypes_exact_counts(backend, bins, rng):
    _assert_many_matches_reference(backend, _many_list(40001 if not INTERPRETER_ON else 20001), bins, rng, base=2)


@pytest.mark.parametrize("backend", MANY_BACKENDS)
def test_many_ranges_found_anywhere_in_long_tensors(backend):
    """Enough elements for several threads; the cpp backend finds a tensor's
    range a slice at a time while it counts the previous tensor, so put each
    extreme (and the non-finite values) late in its tensor, in a later slice."""
    n = 70001 if not INTERPRETER_ON else 9001
    gen = torch.Generator().manual_seed(11)
    ts = []
    for i, dtype in enumerate([torch.float32, torch.float16, torch.int8, torch.float64, torch.bfloat16,
                               torch.float32, torch.float32]):
        if dtype == torch.int8:
            ts.append(torch.randint(-128, 128, (n,), generator=gen, dtype=torch.int8))
            continue
        t = torch.randn(n, generator=gen, dtype=torch.float64)
        t[n - 1 - i] = -9.0 - i      # the minimum in the last slice
        t[n - 700 - 3 * i] = 8.5 + i  # the maximum a little earlier
        t[n - 2] = (NAN, INF, -INF)[i % 3]
        ts.append(t.to(dtype))
    ts.append(torch.randn(5))  # a short last tensor: its range is folded after the long one
    _assert_many_matches_reference(backend, ts, 256, None)
    _assert_many_matches_reference(backend, ts[::-1], 256, None)


@pytest.mark.parametrize("backend", MANY_BACKENDS)
def test_many_codes_with_floats_exact_counts(backend):
    ts = _many_list(9001) + [torch.randint(-128, 128, (5001,), dtype=torch.int8), torch.empty(0, dtype=torch.uint8),
                             torch.randint(0, 256, (37, 3), dtype=torch.uint8).t(), torch.full((4,), 7, dtype=torch.int8)]
    _assert_many_matches_reference(backend, ts, 256, None)


@pytest.mark.parametrize("backend", MANY_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.int8])
def test_many_one_tensor(backend, dtype):
    x = torch.randn(20011) * 3 if dtype != torch.int8 else torch.randint(-128, 128, (20011,))
    x = x.to(dtype)
    # alone in its dtype group: contiguous, strided 1-D, expanded (stride 0), transposed
    for t in (x, x[::3], x[5:6].expand(40), x[:20000].view(100, 200).t()):
        _assert_many_matches_reference(backend, [t], 256, None)
        if dtype != torch.int8:
            _assert_many_matches_reference(backend, [t], 100, (-2.0, 2.0))


@pytest.mark.parametrize("backend", MANY_BACKENDS)
def test_many_tiny_tensors(backend):
    gen = torch.Generator().manual_seed(3)
    dtypes = [torch.float32, torch.float16, torch.float64, torch.bfloat16]
    ts = [(torch.randn(int(n), generator=gen) * 2).to(dtypes[i % 4])
          for i, n in enumerate(torch.randint(0, 9, (150,), generator=gen))]
    _assert_many_matches_reference(backend, ts, 16, None)
    _assert_many_matches_reference(backend, ts, 16, (-1.0, 1.0))


@pytest.mark.parametrize("backend", MANY_BACKENDS)
def test_many_all_empty_or_not_finite(backend):
    ts = [torch.empty(0), torch.full((3,), NAN), torch.tensor([INF, -INF]), torch.empty(2, 0, dtype=torch.float64)]
    _assert_many_matches_reference(backend, ts, 8, None)
    _assert_many_matches_reference(backend, ts[:1], 8, (0.0, 1.0))


@pytest.mark.triton_interpret
def test_many_triton_plan_is_reused_only_for_its_signature():
    """The Triton launcher keeps the segment table per list signature: a list of the same count
    with other lengths, dtypes or range mode gets its own plan and exact counts; the same
    signature in another layout (or other values) reuses the plan, also exact."""
    gen = torch.Generator().manual_seed(5)
    first = [torch.randn(300, generator=gen), torch.randn(7, 9, generator=gen)]
    relayout = [torch.randn(30, 10, generator=gen).t(),
                torch.cat([torch.randn(62, generator=gen), torch.tensor([NAN])])]  # first's numels
    other_lengths = [torch.randn(9, generator=gen), torch.randn(5000, generator=gen) * 3]
    other_dtypes = [first[0].half(), first[1].double()]
    plans = triton_entropy._cached_many_plan
    plans.cache_clear()
    for tensors, rng in ((first, None), (other_lengths, None), (other_dtypes, None), (first, (-1.0, 1.0)),
                         (relayout, None), (other_lengths, None)):
        _assert_many_matches_reference("triton", tensors, 64, rng)
    info = plans.cache_info()
    # four signatures (first and relayout share one), each looked up twice a check (counts, entropy)
    assert info.currsize == 4 and info.misses == 4 and info.hits == 2 * 6 - 4, info


class _CountingKernel:
    """Stands in for a Triton kernel: records each launch, then launches it."""

    def __init__(self, kernel, name, launches):
        self.kernel, self.name, self.launches = kernel, name, launches

    def __getitem__(self, grid):
        self.launches.append(self.name)
        return self.kernel[grid]


@pytest.mark.triton_interpret
def test_many_triton_launches_do_not_grow_with_the_list(monkeypatch):
    launches = []
    for name in ("_segments_range_partials_kernel", "_segments_range_reduce_kernel", "_histogram_counts_kernel"):
        monkeypatch.setattr(triton_entropy, name, _CountingKernel(getattr(triton_entropy, name), name, launches))
    monkeypatch.setattr(triton_finite_minmax, "_finite_minmax_partials_kernel",
                        _CountingKernel(triton_finite_minmax._finite_minmax_partials_kernel, "minmax", launches))

    def launched(n, rng):
        launches.clear()
        ts = [torch.randn(5 + 3 * i) for i in range(n)] + [torch.randn(2 + i).half() for i in range(n)]
        with eitp_kernels.use_backend("triton"):
            eitp_kernels.histogram_entropy_many(ts, bins=32, range=rng)
        return sorted(launches)

    two_groups_auto = sorted(["_segments_range_partials_kernel", "_segments_range_reduce_kernel",
                              "_histogram_counts_kernel"] * 2)
    assert launched(2, None) == launched(40, None) == two_groups_auto
    assert launched(2, (-1.0, 1.0)) == launched(40, (-1.0, 1.0)) == ["_histogram_counts_kernel"] * 2


def _three_ops_entropy(rows, bins, lo, hi, explicit, log_base):
    """The Triton path of histogram_entropy as three ops: range (or the given one), counts, entropy, .to()."""
    o = torch.ops.eitp_triton
    if rows.dtype not in (torch.int8, torch.uint8) and lo is None:
        lo, hi = o.finite_minmax(rows)
    counts = o.histogram_counts(rows, lo, hi, bins, explicit)
    return counts, o.entropy_from_counts(counts, log_base).to(reference.compute_dtype(rows.dtype))


@pytest.mark.triton_interpret
@pytest.mark.parametrize("case", ["parts", "bf16_rows", "fp64", "codes", "bins_zeroed_by_parts", "explicit",
                                  "bounds", "bounds_bf16", "bounds_fp64", "empty_rows"])
def test_triton_one_call_op_equals_its_three_steps(case, monkeypatch):
    """histogram_entropy_rows (three launches: the range pass zeroes the counts, the counting
    programs fold the range partials, the entropy kernel writes the result's dtype) is bit for bit
    the three ops it replaces, and its counts are the reference's. Fresh buffers hold garbage, as
    on a GPU, so counts the range pass did not zero would show."""
    empty, new_empty = torch.empty, torch.Tensor.new_empty
    handed_out = []

    def garbage(t):
        handed_out.append(t.shape)
        return t.fill_(7 if not t.is_floating_point() else NAN)

    # the launchers allocate by x.new_empty (and torch.empty elsewhere): both hand out garbage
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: garbage(empty(*args, **kwargs)))
    monkeypatch.setattr(torch.Tensor, "new_empty",
                        lambda self, *args, **kwargs: garbage(new_empty(self, *args, **kwargs)))
    g = torch.Generator().manual_seed(3)
    lo = hi = bounds = None
    explicit, bins, log_base = False, 256, None
    if case == "parts":  # 2 rows of 3 range parts each, NaN and inf inside
        rows = torch.randn(2, 40000, generator=g) * 3
        rows[0, 5], rows[1, 39999], rows[1, 20000] = NAN, INF, -7e3
        log_base = math.log(2.0)
    elif case == "bf16_rows":
        rows = torch.randn(37, 101, generator=g).bfloat16()
        bins = 7
    elif case == "fp64":
        rows = torch.randn(3, 17000, generator=g, dtype=torch.float64)
        bins = 100
    elif case == "codes":
        rows = torch.randint(-128, 128, (4, 3001), generator=g, dtype=torch.int8)
    elif case == "bins_zeroed_by_parts":  # 70000 bins over 2 parts of the range pass, one element each
        rows = torch.randn(2, 300, generator=g)
        bins = 70000
    elif case == "explicit":
        rows = torch.randn(5, 999, generator=g) * 2
        lo, hi = torch.full((5,), -1.0), torch.full((5,), 1.5)
        explicit, bins = True, 33
    elif case.startswith("bounds"):  # a range of numbers: kernel arguments (float32), or fills (float64)
        dtype = {"bounds": torch.float32, "bounds_bf16": torch.bfloat16, "bounds_fp64": torch.float64}[case]
        around = _cases()["explicit_range_boundaries"][0]
        rows = torch.cat([around, torch.randn(2, around.shape[1], generator=g)]).to(dtype)
        bounds, explicit, bins = [-1.0, 1.5], True, 10
    else:
        rows = torch.empty(3, 0)
    handed_out.clear()
    with eitp_kernels.use_backend("triton"):
        h = torch.ops.eitp_triton.histogram_entropy_rows(rows, lo, hi, bins, explicit, log_base, bounds)
        assert handed_out  # the one-call op's fresh buffers held garbage
        if bounds is not None:
            acc = reference.compute_dtype(rows.dtype)
            lo, hi = (torch.full((rows.shape[0],), b, dtype=acc) for b in bounds)
        counts, want = _three_ops_entropy(rows, bins, lo, hi, explicit, log_base)
    if rows.dtype not in (torch.int8, torch.uint8):
        rng = (-1.0, 1.5) if explicit else None  # both explicit cases' range
        assert torch.equal(counts, reference.histogram_counts(rows, bins=bins, range=rng, dim=1).to(torch.int64))
    assert h.dtype == want.dtype and torch.equal(h.isnan(), want.isnan())
    assert torch.equal(h.nan_to_num(), want.nan_to_num()), (h, want)


def test_entropy_monitor_returns_every_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    monitor = eitp_kernels.nn.EntropyMonitor(model, bins=64)
    out = monitor()
    assert list(out) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        torch.testing.assert_close(out[name], reference.histogram_entropy(p.detach(), 64, base=2), rtol=1e-6, atol=0)
    assert list(monitor.parameters()) == []


# ---------------------------------------------------------------- bad input


def test_bad_inputs_name_the_argument():
    f = eitp_kernels.histogram_entropy
    with pytest.raises(TypeError, match="histogram_entropy: x must be a torch.Tensor"):
        f([1.0])
    with pytest.raises(TypeError, match="x must have dtype"):
        f(torch.arange(4))
    with pytest.raises(ValueError, match="bins must be >= 1"):
        f(torch.randn(4), bins=0)
    with pytest.raises(TypeError, match="bins must be an int"):
        f(torch.randn(4), bins=2.5)
    with pytest.raises(ValueError, match="range must have lo < hi"):
        f(torch.randn(4), range=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"range\[1\] must be finite"):
        f(torch.randn(4), range=(0.0, INF))
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        f(torch.randn(3, 4), dim=2)
    with pytest.raises(ValueError, match="base must not be 1"):
        f(torch.randn(4), base=1)
    with pytest.raises(ValueError, match="base must be > 0"):
        f(torch.randn(4), base=-2)
    with pytest.raises(ValueError, match="bins must be 256"):
        f(torch.zeros(4, dtype=torch.int8), bins=16)
    with pytest.raises(ValueError, match="codes take no range"):
        f(torch.zeros(4, dtype=torch.uint8), range=(0.0, 1.0))
    with pytest.raises(TypeError, match="differentiable=True needs a floating-point x"):
        f(torch.zeros(4, dtype=torch.int8), differentiable=True)
    with pytest.raises(TypeError, match="differentiable must be a bool"):
        f(torch.randn(4), differentiable=1)
    with pytest.raises(TypeError, match="process_group must be None"):
        f(torch.randn(4), process_group="world")
    g = eitp_kernels.histogram_entropy_many
    with pytest.raises(TypeError, match="tensors must be a list"):
        g(torch.randn(4))
    with pytest.raises(ValueError, match="tensors is empty"):
        g([])
    with pytest.raises(TypeError, match=r"tensors\[1\] must have dtype"):
        g([torch.randn(3), torch.arange(3)])
    with pytest.raises(ValueError, match="bins must be 256"):
        g([torch.randn(3), torch.zeros(3, dtype=torch.int8)], bins=10)


def test_compiled_ops_check_their_inputs():
    with pytest.raises(ValueError, match="must be 2-D"):
        torch.ops.eitp.histogram_counts(torch.randn(3), None, None, 4, False)
    with pytest.raises(ValueError, match="needs lo and hi"):
        torch.ops.eitp.histogram_counts(torch.randn(2, 3), None, None, 4, False)
    with pytest.raises(ValueError, match="lo must have shape"):
        torch.ops.eitp.histogram_counts(torch.randn(2, 3), torch.zeros(3), torch.ones(2), 4, False)
    with pytest.raises(TypeError, match="hi must have dtype"):
        torch.ops.eitp.soft_histogram(torch.randn(2, 3), torch.zeros(2), torch.ones(2, dtype=torch.float64), 4, False)
    with pytest.raises(ValueError, match="bins must be in"):
        torch.ops.eitp.histogram_counts_many([torch.randn(3)], 0, None)


# ---------------------------------------------------------------- entropy_from_counts (C++ CPU kernel)
# The kernel takes q ln q from its own vectorized log (csrc/kernels/vector_log.h) and falls back to
# std::log for rows outside that log's domain; these tests hold both paths to math.log.


def _entropy_formula(row, log_base=None):
    """H = -sum_{c>0} q ln q, q = c / total, in float64 with math.log; NaN without a positive total."""
    total = float(sum(row)) if all(isinstance(c, int) for c in row) else math.fsum(row)
    if not total > 0:
        return NAN
    h = -math.fsum(q * math.log(q) for q in (c / total for c in row if c > 0)) + 0.0
    return h / log_base if log_base is not None else h


def _entropy_op(rows, dtype, log_base=None):
    """entropy_from_counts of equal-length rows as one (rows, bins) tensor, as Python floats."""
    return torch.ops.eitp.entropy_from_counts(torch.tensor(rows, dtype=dtype), log_base).tolist()


def _assert_close_to_formula(rows, dtype, rtol, log_base=None):
    got = _entropy_op(rows, dtype, log_base)
    want = [_entropy_formula(row, log_base) for row in rows]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                               rtol=rtol, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
@pytest.mark.parametrize("bins", [1, 3, 8, 257, 4099])
def test_entropy_from_counts_odd_lengths_match_formula(dtype, bins):
    # lengths around the kernel's 8 lanes; 70 rows of 4099 bins take the multithreaded path
    rows = 70 if bins == 4099 else 5
    counts = torch.randint(0, 1000, (rows, bins)) * (torch.rand(rows, bins) < 0.8)  # a fifth of the bins empty
    if dtype == torch.float64:
        counts = counts * torch.rand(rows, bins, dtype=torch.float64)  # soft counts: no two alike
    counts[0] = 0  # an empty row: NaN
    _assert_close_to_formula(counts.tolist(), dtype, rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_entropy_from_counts_single_bin_is_positive_zero(dtype):
    for bins, at, count in [(1, 0, 1), (4, 2, 5), (9, 8, 3), (300, 17, 2**40), (4099, 4098, 7)]:
        row = [0] * bins
        row[at] = count
        (h,) = _entropy_op([row], dtype)
        assert h == 0.0 and math.copysign(1.0, h) == 1.0, (bins, at, h)


def test_entropy_from_counts_counts_up_to_2_62():
    rows = [[2**k for k in range(63)],  # a count >= 2^52: the std::log path
            [2**k for k in range(52)] + [2**52 - 1] + [0] * 10,  # every count below 2^52: the vectorized path
            [1, 0, 2**62] + [0] * 60,  # q = 1 for the big bin after rounding: H ~ 1e-17
            [3, 2**51] + [0] * 61,  # q = 1 - 2^-51 + ...: ln q near 0 through the vectorized path
            [2**56 + 997 * k for k in range(63)]]  # total just under 2^62
    _assert_close_to_formula(rows, torch.int64, rtol=1e-13)


def test_entropy_from_counts_tiny_soft_counts():
    tiny = [5e-324, 2.0**-1070, 2.0**-1023, 2.0**-1022, 2.0**-1000, 1e-300, 1e-200]
    rows = [[1.0, t, 0.0, 0.0, 0.0] for t in tiny]  # q = t, subnormal for the first three; H = -t ln t
    rows += [[1.0, t, 0.0, 0.5, 0.25] for t in tiny]  # q = t / 1.75: subnormal for the first four
    rows += [[t, t, 0.0, 0.0, 0.0] for t in tiny]  # all-tiny rows: q = 1/2 after the division
    rows += [[3.0, -1.0, 0.0, 0.0, 0.0],  # a negative soft count: total 2, q = 1.5 (ln q > 0)
             [0.0, 0.0, 0.0, 0.0, 0.0], [-1.0, 0.5, 0.25, 0.0, 0.0]]  # no positive total: NaN
    _assert_close_to_formula(rows, torch.float64, rtol=1e-13)


def test_entropy_from_counts_non_finite_soft_counts_are_nan():
    rows = [[INF, 1.0, 2.0], [NAN, 1.0, 2.0], [1e308, 1e308, 1.0], [1.0, 2.0, 3.0]]
    h = _entropy_op(rows, torch.float64)
    assert all(math.isnan(v) for v in h[:3]), h
    assert math.isclose(h[3], _entropy_formula(rows[3]), rel_tol=1e-13)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_entropy_from_counts_log_base(dtype):
    counts = torch.randint(0, 50, (6, 37))
    counts[2] = 0
    for base in (2.0, 10.0, 256.0):
        _assert_close_to_formula(counts.tolist(), dtype, rtol=1e-13, log_base=math.log(base))


def test_entropy_from_counts_log_accuracy_over_the_range():
    # Rows of two counts: H = -(q1 ln q1 + q2 ln q2) with the same q as the formula's (one rounded
    # division), so only the logs differ: math.log is within 0.52 ulp, the kernel's within 1.3 ulp,
    # and each H within 4 ulp of the formula's. A log off by 1e-15 (or worse) somewhere fails.
    total = 2**51 + 12345
    mantissas = torch.rand(20, dtype=torch.float64) + 1.0
    ints = [[c, total - c] for c in {max(1, int(m * 2.0**e)) for e in range(52) for m in mantissas}
            if c < total]
    _assert_close_to_formula(ints, torch.int64, rtol=4 * 2**-52)
    # float64 rows [x, 1]: q1 = x / (1 + x) down to the smallest normal, q2 rounds to 1 (ln = 0) for
    # tiny x, so H = -q1 ln q1 checks the log on its own there
    soft = [[float(m) * 2.0**e, 1.0] for e in range(-1020, 60, 7) for m in mantissas[:4]]
    _assert_close_to_formula(soft, torch.float64, rtol=4 * 2**-52)


def test_entropy_from_counts_independent_of_thread_count():
    counts = torch.randint(0, 1000, (300, 1001))  # 300K elements: several threads when allowed
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.eitp.entropy_from_counts(counts, None)
        torch.set_num_threads(max(2, threads))
        many = torch.ops.eitp.entropy_from_counts(counts, None)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


# ---------------------------------------------------------------- the fused steps of a histogram_entropy call


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", [c for c in CASES if _cases()[c][2] is None])
def test_counts_over_the_automatic_range_equal_counts_over_finite_minmax(dtype, case):
    x, bins, _, dim = _cases()[case]
    rows = reference.slices_as_rows(x.to(dtype), dim)[0].contiguous()
    lo, hi = torch.ops.eitp.finite_minmax(rows)
    want = torch.ops.eitp.histogram_counts(rows, lo, hi, bins, False)
    assert torch.equal(torch.ops.eitp.histogram_counts_with_range(rows, bins), want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", [c for c in CASES if _cases()[c][2] is not None])
def test_counts_over_a_given_range_equal_counts_over_filled_bounds(dtype, case):
    x, bins, (lo, hi), dim = _cases()[case]
    rows = reference.slices_as_rows(x.to(dtype), dim)[0].contiguous()
    acc = reference.compute_dtype(dtype)
    lo_t, hi_t = (torch.full((rows.shape[0],), v, dtype=acc) for v in (lo, hi))
    want = torch.ops.eitp.histogram_counts(rows, lo_t, hi_t, bins, True)
    assert torch.equal(torch.ops.eitp.histogram_counts_with_range(rows, bins, [lo, hi]), want)
    # bounds that float32 rounds: the op rounds them as the filled tensors do
    lo, hi = lo + 1e-9, hi - 1e-9
    lo_t, hi_t = (torch.full((rows.shape[0],), v, dtype=acc) for v in (lo, hi))
    want = torch.ops.eitp.histogram_counts(rows, lo_t, hi_t, bins, True)
    assert torch.equal(torch.ops.eitp.histogram_counts_with_range(rows, bins, [lo, hi]), want)


def test_counts_over_the_automatic_range_of_empty_rows_and_bad_input():
    assert torch.equal(torch.ops.eitp.histogram_counts_with_range(torch.empty(3, 0), 4),
                       torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="must be 2-D"):
        torch.ops.eitp.histogram_counts_with_range(torch.randn(3), 4)
    with pytest.raises(TypeError, match="must be a float tensor"):
        torch.ops.eitp.histogram_counts_with_range(torch.zeros(2, 3, dtype=torch.int8), 256)
    with pytest.raises(ValueError, match="bins must be in"):
        torch.ops.eitp.histogram_counts_with_range(torch.randn(2, 3), 0)
    with pytest.raises(ValueError, match=r"range must be \[lo, hi\]"):
        torch.ops.eitp.histogram_counts_with_range(torch.randn(2, 3), 4, [0.0])
    assert torch.equal(torch.ops.eitp.histogram_counts_with_range(torch.empty(2, 0), 4, [0.0, 1.0]),
                       torch.zeros(2, 4, dtype=torch.int64))


@pytest.mark.parametrize("counts", [torch.randint(0, 1000, (9, 300)), torch.rand(9, 300, dtype=torch.float64)])
@pytest.mark.parametrize("log_base", [None, math.log(2.0)])
def test_entropy_from_counts_writes_float32_as_a_conversion_of_float64(counts, log_base):
    counts[2] = 0  # NaN
    wide = torch.ops.eitp.entropy_from_counts(counts, log_base)
    narrow = torch.ops.eitp.entropy_from_counts(counts, log_base, torch.float32)
    assert narrow.dtype == torch.float32
    torch.testing.assert_close(narrow, wide.to(torch.float32), rtol=0, atol=0, equal_nan=True)
    assert torch.ops.eitp.entropy_from_counts(counts, log_base, torch.float64).dtype == torch.float64
    with pytest.raises(TypeError, match="dtype must be float64 or float32"):
        torch.ops.eitp.entropy_from_counts(counts, log_base, torch.float16)


# ---------------------------------------------------------------- registration, compile


def _opcheck_cases(namespace):
    """(op, args) for every op of ``namespace`` that the Triton backend twins: tiny sizes."""
    o = getattr(torch.ops, namespace)
    x = torch.randn(3, 41)
    lo, hi = x.amin(1), x.amax(1)
    return [
        (o.histogram_counts.default, (x, lo, hi, 16, False)),
        (o.histogram_counts.default, (torch.randint(0, 256, (2, 9), dtype=torch.uint8), None, None, 256, False)),
        (o.histogram_counts_many.default, ([x, x[0].double(), torch.empty(0)], 16, [-1.0, 1.0])),
        (o.histogram_counts_many.default, ([x.half(), torch.randint(0, 256, (7,), dtype=torch.uint8)], 256, None)),
        (o.soft_histogram.default, (x.clone().requires_grad_(), lo, hi, 16, False)),
        (o.soft_histogram_backward.default, (torch.randn(3, 16, dtype=torch.float64), x, lo, hi, 16, True)),
    ]


def _opcheck_triton_only_cases():
    o = torch.ops.eitp_triton
    x = torch.randn(3, 41)
    return [(o.histogram_entropy_rows.default, (x, None, None, 16, False, None)),
            (o.histogram_entropy_rows.default, (x.double(), x.double().amin(1), x.double().amax(1), 16, True, 2.0)),
            (o.histogram_entropy_rows.default, (torch.randint(0, 256, (2, 9), dtype=torch.uint8), None, None, 256,
                                                False, None)),
            (o.histogram_entropy_rows.default, (x.half(), None, None, 16, True, None, [-1.0, 1.0])),
            (o.entropy_from_counts.default, (torch.randint(0, 5, (4, 8)), 2.0, torch.float32)),
            (o.entropy_from_counts.default, (torch.rand(4, 8, dtype=torch.float64), None))]


def test_opcheck_every_compiled_op():
    for op, args in _opcheck_cases("eitp"):
        torch.library.opcheck(op, args)
    torch.library.opcheck(torch.ops.eitp.entropy_from_counts.default, (torch.randint(0, 5, (4, 8)), 2.0))
    torch.library.opcheck(torch.ops.eitp.entropy_from_counts.default, (torch.rand(4, 8, dtype=torch.float64), None))
    torch.library.opcheck(torch.ops.eitp.entropy_from_counts.default,
                          (torch.randint(0, 5, (4, 8)), None, torch.float32))
    torch.library.opcheck(torch.ops.eitp.histogram_counts_with_range.default, (torch.randn(3, 41), 16))
    torch.library.opcheck(torch.ops.eitp.histogram_counts_with_range.default, (torch.randn(3, 41), 16, [-1.0, 1.0]))


@pytest.mark.triton_interpret
def test_opcheck_every_triton_op():
    for op, args in _opcheck_cases("eitp_triton") + _opcheck_triton_only_cases():
        torch.library.opcheck(op, args)


def test_many_ops_are_cudagraph_unsafe():
    # both copy a host-built table of data addresses per call: CUDA graphs must leave them out
    assert torch.Tag.cudagraph_unsafe in torch.ops.eitp.histogram_counts_many.default.tags
    if triton is not None:
        assert _registration.define_triton_ops()  # the eitp_triton:: ops are defined on first need
        assert torch.Tag.cudagraph_unsafe in torch.ops.eitp_triton.histogram_counts_many.default.tags


def test_torch_compile_fullgraph_training_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 16), torch.randn(32, 4)

    def forward(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss = loss + 0.01 * eitp_kernels.histogram_entropy(model.weight, bins=16, differentiable=True)
        monitor = eitp_kernels.histogram_entropy(model.weight.detach(), bins=16, dim=1, base=2)
        return loss, monitor

    with eitp_kernels.use_backend("cpp"):
        compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
        loss, monitor = compiled(x, y)
        loss.backward()  # the compiled graph's backward: eitp::soft_histogram_backward
    grad_compiled = model.weight.grad.clone()
    model.zero_grad()
    with eitp_kernels.use_backend("reference"):
        loss_ref, monitor_ref = forward(x, y)
        loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(monitor, monitor_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_compiled, model.weight.grad, rtol=1e-5, atol=1e-7)
    opt.step()


def test_torch_compile_inductor_hard_entropy():
    fn = torch.compile(lambda t: eitp_kernels.histogram_entropy(t * 2, bins=32, dim=0), fullgraph=True)
    x = torch.randn(100, 3)
    torch.testing.assert_close(fn(x), reference.histogram_entropy(x * 2, bins=32, dim=0), rtol=1e-6, atol=0)


# ---------------------------------------------------------------- GPU (run where a GPU is lent)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bins", [256, 4096, 20000])
def test_gpu_counts_and_entropy_match_reference(backend, dtype, bins):
    x = (torch.randn(9, 100003, device="cuda") * 3).to(dtype)
    x[1, 7], x[2, 8] = NAN, INF
    ref_counts = reference.histogram_counts(x, bins=bins, dim=1)
    counts = _counts(backend, x, bins, None, 1)
    torch.testing.assert_close(counts.to(ref_counts.dtype), ref_counts, rtol=0, atol=0)
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(x, bins=bins, dim=1)
        hr = eitp_kernels.histogram_entropy(x, bins=bins, range=(-2.0, 2.5))
        hc = eitp_kernels.histogram_entropy(torch.randint(-128, 128, (1000,), dtype=torch.int8, device="cuda"))
    torch.testing.assert_close(h, reference.histogram_entropy(x, bins=bins, dim=1), rtol=_rtol(dtype), atol=0)
    torch.testing.assert_close(hr, reference.histogram_entropy(x, bins=bins, range=(-2.0, 2.5)), rtol=_rtol(dtype),
                               atol=0)
    assert torch.isfinite(hc)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gpu_differentiable_and_many(dtype):
    x = torch.randn(4, 50001, device="cuda").to(dtype).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    with eitp_kernels.use_backend("cuda"):
        h = eitp_kernels.histogram_entropy(x, bins=300, dim=1, differentiable=True)
        many = eitp_kernels.histogram_entropy_many([x.detach(), x.detach()[0], x.detach().double()])
    hr = reference.histogram_entropy(xr, bins=300, dim=1, differentiable=True)
    torch.testing.assert_close(h, hr, rtol=_rtol(dtype), atol=0)
    h.sum().backward()
    hr.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=float(xr.grad.abs().max()) * 1e-5)
    torch.testing.assert_close(many[0], reference.histogram_entropy(x.detach()).double(), rtol=1e-6, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("bins,rng", [(256, None), (4096, None), (12224, None), (12225, None), (20000, None),
                                      (300, (-1.0, 2.5)), (20000, (-1.0, 2.5))])
def test_gpu_many_exact_counts(backend, bins, rng):
    ts = [t.cuda() for t in _many_list(300007)]
    ts.append(torch.randn(5, 200003, device="cuda")[:, ::2])  # non-contiguous, 5 x 100002
    _assert_many_matches_reference(backend, ts, bins, rng)
    if rng is None and bins == 256:
        codes = [torch.randint(-128, 128, (100001,), dtype=torch.int8, device="cuda"),
                 torch.randint(0, 256, (77,), dtype=torch.uint8, device="cuda"), torch.empty(0, device="cuda")]
        _assert_many_matches_reference(backend, ts + codes, 256, None)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_many_tiny_and_huge_lists(backend):
    gen = torch.Generator().manual_seed(5)
    dtypes = [torch.float32, torch.float16, torch.float64, torch.bfloat16]
    sizes = torch.randint(0, 50, (3000,), generator=gen).tolist()
    ts = [(torch.randn(n, generator=gen) * 2).to(dtypes[i % 4]).cuda() for i, n in enumerate(sizes)]
    ts[17] = torch.randn(3_000_001, device="cuda")  # many work items between tiny segments
    _assert_many_matches_reference(backend, ts, 64, None)
    _assert_many_matches_reference(backend, ts, 64, (-0.5, 0.5))
    big = torch.randn(1_000_003, device="cuda")
    for view in (big[::3], big[7:8].expand(5000), big[:1_000_000].view(1000, 1000).t()):  # alone in its group
        _assert_many_matches_reference(backend, [view], 100, None)


@pytest.mark.gpu
def test_gpu_many_cuda_kernel_launches_do_not_grow_with_the_list():
    from torch.profiler import ProfilerActivity, profile

    def kernels(n):
        ts = [torch.randn(1000 + 37 * i, device="cuda").to(torch.float16 if i % 2 else torch.float32)
              for i in range(n)]
        ts.append(torch.randint(-128, 128, (999,), dtype=torch.int8, device="cuda"))
        torch.cuda.synchronize()
        with eitp_kernels.use_backend("cuda"), profile(activities=[ProfilerActivity.CUDA]) as prof:
            eitp_kernels.histogram_entropy_many(ts, bins=256)  # int8 codes take exactly 256
            torch.cuda.synchronize()
        return sorted(e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                      and "Memcpy" not in e.name)

    few, many = kernels(2), kernels(200)
    assert few == many, (few, many)
    assert sum("segments_" in name for name in few) == 2  # range and counts


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_torch_compile_fullgraph(backend):
    w = torch.randn(64, 300, device="cuda", requires_grad=True)

    def loss_fn(w):
        return eitp_kernels.histogram_entropy(w, bins=64, dim=1, differentiable=True).sum()

    with eitp_kernels.use_backend(backend):
        loss = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(w)
        loss.backward()
    wr = w.detach().clone().requires_grad_()
    ref = reference.histogram_entropy(wr, bins=64, dim=1, differentiable=True).sum()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(w.grad, wr.grad, rtol=0, atol=float(wr.grad.abs().max()) * 1e-5)


def test_differentiable_long_row_parallel_chunks():
    # > 2 chunks of 2^17 elements: the chunked soft-count merge and the parallel backward
    base = torch.randn(300001) * 2
    x, xr = base.clone().requires_grad_(), base.clone().requires_grad_()
    with eitp_kernels.use_backend("cpp"):
        h = eitp_kernels.histogram_entropy(x, bins=300, differentiable=True)
    hr = reference.histogram_entropy(xr, bins=300, differentiable=True)
    torch.testing.assert_close(h, hr, rtol=1e-6, atol=0)
    h.backward()
    hr.backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=float(xr.grad.abs().max()) * 1e-5)


# --------------------------------------------------------------------------
# range given as 0-d tensors (as torch.histc takes x.min(), x.max())
# --------------------------------------------------------------------------


class _NoHostReads:
    """Fails the test if a tensor's value is read on the host (item, float, bool, tolist, numpy)."""

    NAMES = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        for name in self.NAMES:
            def refuse(*args, _name=name, **kwargs):
                raise AssertionError(f"Tensor.{_name} called: a host read of a tensor value")
            self.monkeypatch.setattr(torch.Tensor, name, refuse)
        return self

    def __exit__(self, *exc):
        self.monkeypatch.undo()
        return False


def _tensor_range_cases():
    x = torch.randn(6, 301)
    x[1, 4], x[2, 7] = NAN, INF
    return x


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bound_dtype", [torch.float32, torch.float64, torch.int64])
def test_tensor_range_equals_the_same_numbers(backend, dtype, bound_dtype, monkeypatch):
    x = _tensor_range_cases().to(dtype)
    lo, hi = torch.tensor(-1.25).to(bound_dtype), torch.tensor(2.5).to(bound_dtype)
    expected = reference.histogram_entropy(x, bins=37, range=(float(lo), float(hi)), dim=1, base=2)
    expected_many = torch.stack([reference.histogram_entropy(t, bins=37, range=(float(lo), float(hi)), base=2)
                                 for t in (x, x[:2])]).to(expected.dtype)
    hi_number = float(hi)
    with eitp_kernels.use_backend(backend), _NoHostReads(monkeypatch):
        got = eitp_kernels.histogram_entropy(x, bins=37, range=(lo, hi), dim=1, base=2)
        got_mixed = eitp_kernels.histogram_entropy(x, bins=37, range=(lo, hi_number), dim=1, base=2)
        got_many = eitp_kernels.histogram_entropy_many([x, x[:2]], bins=37, range=(lo, hi), base=2)
    torch.testing.assert_close(got, expected, rtol=_rtol(dtype), atol=0)
    torch.testing.assert_close(got_mixed, got, rtol=0, atol=0)
    torch.testing.assert_close(got_many, expected_many, rtol=_rtol(dtype), atol=0)


def test_tensor_range_bounds_round_once_to_the_compute_dtype():
    # a Python bound beside a tensor one is rounded straight to the compute dtype, as the reference does
    lo, hi = ops._tensor_range((torch.tensor(-1.0), 0.1), 2, torch.float64, torch.device("cpu"))
    assert hi.tolist() == [0.1, 0.1] and lo.tolist() == [-1.0, -1.0]
    lo, hi = ops._tensor_range((torch.tensor(0.1, dtype=torch.float64), 0.3), 1, torch.float32, torch.device("cpu"))
    assert lo.item() == torch.tensor(0.1, dtype=torch.float32).item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tensor_range_of_min_max_differentiable(backend, monkeypatch):
    base = torch.randn(5, 200, dtype=torch.float64)
    x, xr = base.clone().requires_grad_(), base.clone().requires_grad_()
    with eitp_kernels.use_backend(backend), _NoHostReads(monkeypatch):
        # the bounds carry x's graph: the range is held constant (no gradient through it)
        h = eitp_kernels.histogram_entropy(x, bins=20, range=(x.min(), x.max()), dim=1, differentiable=True)
    hr = reference.histogram_entropy(xr, bins=20, range=(base.min().item(), base.max().item()), dim=1,
                                     differentiable=True)
    torch.testing.assert_close(h, hr, rtol=1e-12, atol=0)
    h.sum().backward()
    hr.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("lo,hi", [(1.0, 0.5), (1.0, 1.0), (NAN, 1.0), (-INF, 1.0), (0.0, INF)])
def test_tensor_range_invalid_on_the_device_gives_nan(backend, lo, hi):
    # lo < hi cannot be checked on the host without a sync: a bad tensor range counts nothing
    x = torch.randn(4, 50)
    with eitp_kernels.use_backend(backend):
        assert torch.isnan(eitp_kernels.histogram_entropy(x, range=(torch.tensor(lo), torch.tensor(hi)), dim=1)).all()
        assert torch.isnan(eitp_kernels.histogram_entropy_many([x], range=(torch.tensor(lo), torch.tensor(hi)))).all()
        h = eitp_kernels.histogram_entropy(x.requires_grad_(), range=(torch.tensor(lo), torch.tensor(hi)), differentiable=True)
    assert torch.isnan(h)


def test_tensor_range_bad_bounds_are_named():
    x = torch.randn(10)
    with pytest.raises(ValueError, match=r"range\[0\] must be a number or a 0-d tensor, got a tensor of shape \(2,\)"):
        eitp_kernels.histogram_entropy(x, range=(torch.zeros(2), 1.0))
    with pytest.raises(TypeError, match=r"range\[1\] must be a real tensor, got dtype bool"):
        eitp_kernels.histogram_entropy(x, range=(0.0, torch.tensor(True)))
    with pytest.raises(TypeError, match=r"range\[1\] must be a real tensor, got dtype complex64"):
        eitp_kernels.histogram_entropy_many([x], range=(0.0, torch.tensor(1j)))
    with pytest.raises(ValueError, match=r"range\[0\] is on the meta device"):
        eitp_kernels.histogram_entropy(x, range=(torch.tensor(0.0, device="meta"), 1.0))
    with pytest.raises(TypeError, match=r"range\[0\] must be a real number or a 0-d tensor, got str"):
        eitp_kernels.histogram_entropy(x, range=("0", 1.0))
    with pytest.raises(ValueError, match="codes take no range"):
        eitp_kernels.histogram_entropy(torch.zeros(5, dtype=torch.int8), range=(torch.tensor(0.0), 1.0))
    with pytest.raises(ValueError, match=r"lo < hi"):  # numbers are still checked on the host
        eitp_kernels.histogram_entropy(x, range=(1.0, 0.0))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_gpu_tensor_range_without_host_sync(backend):
    x = torch.randn(6, 4001, device="cuda")
    expected = reference.histogram_entropy(x, bins=64, range=(x.min().item(), x.max().item()), dim=1)
    cpu_lo = x.min().cpu()
    with eitp_kernels.use_backend(backend):
        eitp_kernels.histogram_entropy(x, bins=64, range=(x.min(), x.max()), dim=1)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = eitp_kernels.histogram_entropy(x, bins=64, range=(x.min(), x.max()), dim=1)
            got_cpu_bound = eitp_kernels.histogram_entropy(x, bins=64, range=(cpu_lo, x.max()), dim=1)
            got_diff = eitp_kernels.histogram_entropy(x.requires_grad_(), bins=64, range=(x.min(), x.max()), dim=1,
                                                      differentiable=True)
            got_many = eitp_kernels.histogram_entropy_many([x, x[0]], bins=64, range=(x.min(), x.max()))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(got_cpu_bound, expected, rtol=1e-6, atol=0)
    assert torch.isfinite(got_diff).all() and torch.isfinite(got_many).all()


def test_many_triton_plan_asks_the_tensors_device_whether_it_is_capturing(monkeypatch):
    """A capture on cuda:1 while cuda:0 is current keeps the plan out of the cache."""
    import contextlib

    current, capturing_devices = [0], {1}

    @contextlib.contextmanager
    def device_guard(device):
        saved, current[0] = current[0], torch.device(device).index
        try:
            yield
        finally:
            current[0] = saved

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device_guard)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: current[0] in capturing_devices)
    assert triton_entropy._capturing(torch.device("cuda", 1))
    assert not triton_entropy._capturing(torch.device("cuda", 0))
    assert current[0] == 0
