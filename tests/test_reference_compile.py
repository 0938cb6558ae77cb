"""The reference backend traced by torch.compile(fullgraph=True), every op: no graph
break (a value read on the host would be one), and the compiled result equal to eager."""
import pytest
import torch

import eitp_kernels as ek


def _inputs():
    torch.manual_seed(0)
    x, y = torch.randn(48, 12), torch.randn(48, 6)
    huge = x.clone()
    huge[:, 3] *= 1e20  # float32 column sums overflow: the float64 sums take over
    codes = torch.randint(-127, 128, (16, 12), dtype=torch.int8)
    return x, y, huge, codes


X, Y, HUGE, CODES = _inputs()

CASES = {
    "histogram_entropy": lambda: ek.histogram_entropy(X),
    "histogram_entropy_dim_range": lambda: ek.histogram_entropy(X, dim=1, range=(-2.0, 2.0), base=2.0),
    "histogram_entropy_codes": lambda: ek.histogram_entropy(CODES),
    "histogram_entropy_differentiable": lambda: ek.histogram_entropy(X, differentiable=True),
    "histogram_entropy_many": lambda: ek.histogram_entropy_many([X, Y]),
    "coherence_loss": lambda: ek.coherence_loss(X),
    "coherence_loss_cross_squared": lambda: ek.coherence_loss(X, Y, offdiag_weight=0.5, squared=True),
    "coherence_loss_float32_overflow": lambda: ek.coherence_loss(HUGE),
    "quantize_int8": lambda: ek.quantize_int8(X, granularity="channel"),
    "quantize_int8_affine_group": lambda: ek.quantize_int8(X, granularity="group", group_size=4, symmetric=False),
    "dequantize_int8": lambda: ek.dequantize_int8(CODES, torch.full((16,), 0.1), granularity="channel"),
    "fake_quant_int8": lambda: ek.fake_quant_int8(X),
    "finite_minmax": lambda: ek.finite_minmax(X, dim=1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_traces_with_fullgraph_and_matches_eager(name):
    fn = CASES[name]
    torch._dynamo.reset()
    with ek.use_backend("reference"):
        eager = fn()
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0, equal_nan=True)


def test_reference_gradients_trace_with_fullgraph():
    def step(x, y):
        return (ek.coherence_loss(x, y) + ek.histogram_entropy(x, differentiable=True)
                + ek.fake_quant_int8(x).square().sum())

    torch._dynamo.reset()
    x, y = X.clone().requires_grad_(), Y.clone().requires_grad_()
    with ek.use_backend("reference"):
        step(x, y).backward()
        eager = (x.grad.clone(), y.grad.clone())
        x.grad = y.grad = None
        torch.compile(step, fullgraph=True, backend="aot_eager")(x, y).backward()
    torch.testing.assert_close((x.grad, y.grad), eager, rtol=1e-5, atol=1e-6)
