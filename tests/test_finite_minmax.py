"""finite_minmax on every backend against the reference."""
import pytest
import torch

import eitp_kernels
from eitp_kernels import reference
from eitp_kernels.ops import finite_minmax

from conftest import FLOAT_DTYPES, cpu_backends

CPU_BACKENDS = cpu_backends()


def _cases():
    x = torch.randn(7, 1001)
    x[0, 3], x[2, 5], x[2, 6], x[4, :] = float("nan"), float("inf"), float("-inf"), float("nan")
    return {
        "odd_rows": x,
        "one_element": torch.tensor([[2.5]]),
        "one_row_long": torch.randn(1, 70001) * 3,  # several chunks of the parallel/Triton paths
        "constant": torch.full((3, 5), 1.25),
    }


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", list(_cases()))
def test_rows_match_reference_exactly(backend, dtype, case):
    x = _cases()[case].to(dtype)
    with eitp_kernels.use_backend(backend):
        lo, hi = eitp_kernels.finite_minmax(x, dim=1)
    ref_lo, ref_hi = reference.finite_minmax(x, dim=1)
    assert lo.dtype == reference.compute_dtype(dtype)
    torch.testing.assert_close(lo, ref_lo, rtol=0, atol=0)
    torch.testing.assert_close(hi, ref_hi, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_all_nonfinite_row_gives_inverted_infinities(backend):
    x = torch.tensor([[float("nan"), float("inf"), float("-inf")]])
    with eitp_kernels.use_backend(backend):
        lo, hi = eitp_kernels.finite_minmax(x, dim=1)
    assert lo.item() == float("inf") and hi.item() == float("-inf")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_whole_tensor_and_noncontiguous_dim(backend):
    x = torch.randn(64, 33).t()  # non-contiguous
    with eitp_kernels.use_backend(backend):
        lo, hi = eitp_kernels.finite_minmax(x)
        lo0, hi0 = eitp_kernels.finite_minmax(x, dim=0)
    assert lo.shape == () and lo.item() == x.min().item() and hi.item() == x.max().item()
    torch.testing.assert_close(lo0, x.amin(dim=0), rtol=0, atol=0)
    torch.testing.assert_close(hi0, x.amax(dim=0), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "cpp"])  # the C++ conversion (Triton converts on its own)
def test_every_fp16_bit_pattern_converts_like_torch(backend):
    """All 65536 fp16 bit patterns (subnormals, +-0, +-inf, NaNs included), each
    repeated along a row of 37, so both the 8-wide F16C / 16-lane loops and
    their scalar tails convert it: a finite value gives lo == hi == its
    ``.float()``, a non-finite one the empty range (+inf, -inf)."""
    patterns = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    x = patterns.unsqueeze(1).expand(-1, 37).contiguous()
    with eitp_kernels.use_backend(backend):
        lo, hi = eitp_kernels.finite_minmax(x, dim=1)
    as_float = patterns.float()
    finite = torch.isfinite(as_float)
    assert int(finite.sum()) == 65536 - 2 * 1024  # 2 x 1023 NaNs and +-inf
    assert torch.equal(lo[finite].view(torch.int32), as_float[finite].view(torch.int32))  # bits: -0.0 stays -0.0
    assert torch.equal(hi[finite].view(torch.int32), as_float[finite].view(torch.int32))
    assert bool((lo[~finite] == float("inf")).all()) and bool((hi[~finite] == float("-inf")).all())


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        eitp_kernels.finite_minmax([1.0, 2.0])
    with pytest.raises(TypeError, match="x must have dtype"):
        eitp_kernels.finite_minmax(torch.arange(4))
    with pytest.raises(ValueError, match="x is empty"):
        eitp_kernels.finite_minmax(torch.empty(0))
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        eitp_kernels.finite_minmax(torch.randn(3, 4), dim=2)


def test_opcheck_compiled_op():
    x = torch.randn(5, 37)
    torch.library.opcheck(torch.ops.eitp.finite_minmax.default, (x,))


@pytest.mark.triton_interpret
def test_opcheck_triton_op():
    for x in (torch.randn(5, 37), torch.randn(2, 9, dtype=torch.float64), torch.randn(1, 3).half()):
        torch.library.opcheck(torch.ops.eitp_triton.finite_minmax.default, (x,))


def test_compiled_op_checks_rank_itself():
    with pytest.raises(ValueError, match="must be 2-D"):
        torch.ops.eitp.finite_minmax(torch.randn(3))


def test_torch_compile_fullgraph_traces_the_op():
    compiled = torch.compile(lambda t: eitp_kernels.finite_minmax(t, dim=1), fullgraph=True, backend="eager")
    x = torch.randn(4, 9)
    lo, hi = compiled(x)
    torch.testing.assert_close(lo, x.amin(dim=1))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gpu_backends_match_reference(backend, dtype):
    x = torch.randn(9, 100003, device="cuda").to(dtype)
    x[1, 7] = float("nan")
    with eitp_kernels.use_backend(backend):
        lo, hi = eitp_kernels.finite_minmax(x, dim=1)
    ref_lo, ref_hi = reference.finite_minmax(x, dim=1)
    torch.testing.assert_close(lo, ref_lo, rtol=0, atol=0)
    torch.testing.assert_close(hi, ref_hi, rtol=0, atol=0)
