"""QAT modules: FakeQuantLinear, prepare_qat, export_int8 / load_int8."""
import pytest
import torch
from torch import nn

import eitp_kernels
from eitp_kernels import nn as enn
from eitp_kernels import reference


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16))
        self.head = nn.Linear(16, 3, bias=False)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_prepare_qat_swaps_linears_and_matches_reference_maths(backend):
    model = _Net()
    qat = enn.prepare_qat(model, quantize_activations=True)
    assert isinstance(model.head, nn.Linear) and not isinstance(model.head, enn.FakeQuantLinear)  # a copy
    swapped = [m for m in qat.modules() if isinstance(m, enn.FakeQuantLinear)]
    assert len(swapped) == 3 and not any(type(m) is nn.Linear for m in qat.modules())
    x = torch.randn(5, 12)
    with eitp_kernels.use_backend(backend):
        out = qat.body[0](x)
    layer = model.body[0]
    xq = reference.fake_quant_int8(x, "tensor", 0, 128, False)
    wq = reference.fake_quant_int8(layer.weight, "channel", 0, 128, True)
    torch.testing.assert_close(out, torch.nn.functional.linear(xq, wq, layer.bias), rtol=0, atol=0)


def test_fake_quant_linear_gradients_are_straight_through():
    layer = enn.FakeQuantLinear(8, 4)
    x = torch.randn(6, 8)
    layer(x).sum().backward()
    # d/dW of sum(x @ fq(W)^T) with the STE is sum over the batch of x, for every output row.
    torch.testing.assert_close(layer.weight.grad, x.sum(0).expand(4, 8), rtol=1e-6, atol=1e-6)
    assert layer.bias.grad is not None


@pytest.mark.parametrize("activations", [None, True, False])
def test_export_load_round_trip_matches_fake_quant_outputs(activations):
    torch.manual_seed(3)
    qat = enn.prepare_qat(_Net(), quantize_activations=activations is not None,
                          activation_symmetric=bool(activations))
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    for _ in range(3):  # a few QAT steps so the weights are not at init
        x = torch.randn(16, 12)
        loss = qat(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = enn.export_int8(qat)
    assert state["body.0.weight_int8"].dtype == torch.int8 and state["body.0.weight_int8"].shape == (20, 12)
    assert state["body.0.weight_scale"].dtype == torch.float32 and state["body.0.weight_scale"].shape == (20,)
    assert "body.0.weight" not in state and "norm.weight" in state and "body.0.bias" in state
    loaded = enn.load_int8(state, _Net)
    assert isinstance(loaded.head, enn.Int8Linear)
    x = torch.randn(7, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), qat(x), rtol=0, atol=0)
    # The int8 state of the loaded model is the exported one (second round trip).
    again = loaded.state_dict()
    assert torch.equal(again["body.2.weight_int8"], state["body.2.weight_int8"])


def test_load_int8_rejects_a_non_linear_target():
    state = enn.export_int8(enn.prepare_qat(nn.Sequential(nn.Linear(3, 3))))
    with pytest.raises(ValueError, match="expected an nn.Linear"):
        enn.load_int8(state, nn.Sequential(nn.Conv1d(3, 3, 1)))
    with pytest.raises(TypeError, match="prepare_qat: model must be an nn.Module"):
        enn.prepare_qat("not a model")


def test_torch_compile_fullgraph_qat_model_step():
    torch.manual_seed(4)
    qat = enn.prepare_qat(_Net(), quantize_activations=True)
    x = torch.randn(8, 12)

    def loss_fn(model, x):
        return model(x).square().mean()

    eager = loss_fn(qat, x)
    eager.backward()
    grads = [p.grad.clone() for p in qat.parameters()]
    qat.zero_grad()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss = compiled(qat, x)
    loss.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-6, atol=0)
    for p, g in zip(qat.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
