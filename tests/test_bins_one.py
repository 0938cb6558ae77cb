"""bins=1 and one-element rows on every CPU backend (the Triton kernels take integer arguments
equal to 1 as constants when compiled; tests/test_triton_aot.py compiles them, this checks the values)."""
import pytest
import torch

import eitp_kernels
from eitp_kernels import reference

from conftest import FLOAT_DTYPES, cpu_backends


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(3, 50), (4, 1), (1, 1)])
def test_bins_one_and_one_element_rows(backend, dtype, shape):
    x = torch.randn(shape).to(dtype)
    xd = x.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    with eitp_kernels.use_backend(backend):
        h = eitp_kernels.histogram_entropy(x, bins=1, dim=1)
        hr = eitp_kernels.histogram_entropy(x, bins=1, range=(-1.0, 1.0), dim=1)
        hs = eitp_kernels.histogram_entropy(xd, bins=1, dim=1, differentiable=True)
        h7 = eitp_kernels.histogram_entropy(x, bins=7, dim=1)
        many = eitp_kernels.histogram_entropy_many([x, x[0]], bins=1)
        q = eitp_kernels.quantize_int8(x, granularity="channel")[0]
    assert torch.equal(h, reference.histogram_entropy(x, bins=1, dim=1))
    torch.testing.assert_close(hr, reference.histogram_entropy(x, bins=1, range=(-1.0, 1.0), dim=1), equal_nan=True)
    hsr = reference.histogram_entropy(xr, bins=1, dim=1, differentiable=True)
    torch.testing.assert_close(hs, hsr, rtol=1e-6, atol=1e-12)
    hs.sum().backward()
    hsr.sum().backward()
    torch.testing.assert_close(xd.grad, xr.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(h7, reference.histogram_entropy(x, bins=7, dim=1), rtol=1e-6, atol=0)
    assert torch.equal(many, torch.zeros_like(many))
    assert torch.equal(q, reference.quantize_int8(x, granularity="channel")[0])
