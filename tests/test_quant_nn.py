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


# --------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------
CONVS = {
    "conv1d-odd": lambda: nn.Conv1d(5, 7, 3, stride=2, padding=1),
    "conv1d-groups-circular": lambda: nn.Conv1d(6, 9, 4, groups=3, padding=2, padding_mode="circular", dilation=2),
    "conv1d-same-nobias": lambda: nn.Conv1d(3, 5, 5, padding="same", bias=False),
    "conv2d-odd": lambda: nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0)),
    "conv2d-depthwise-reflect": lambda: nn.Conv2d(4, 8, 3, groups=4, padding=1, padding_mode="reflect"),
    "conv2d-replicate-dilated": lambda: nn.Conv2d(2, 3, 3, padding=2, dilation=2, padding_mode="replicate"),
}


def _conv_input(conv):
    torch.manual_seed(1)
    return torch.randn((2, conv.in_channels) + (11,) * (conv.weight.dim() - 2))


@pytest.mark.parametrize("name", sorted(CONVS))
@pytest.mark.parametrize("activations", [None, True, False])
def test_fake_quant_conv_matches_reference_maths_and_exports(name, activations):
    torch.manual_seed(2)
    conv = CONVS[name]()
    qat = enn.prepare_qat(nn.Sequential(conv), quantize_activations=activations is not None,
                          activation_symmetric=bool(activations))[0]
    fake_type = enn.FakeQuantConv1d if isinstance(conv, nn.Conv1d) else enn.FakeQuantConv2d
    assert type(qat) is fake_type
    x = _conv_input(conv)
    xq = x if activations is None else reference.fake_quant_int8(x, "tensor", 0, 128, bool(activations))
    wq = reference.fake_quant_int8(conv.weight, "channel", 0, 128, True)
    with torch.no_grad():
        torch.testing.assert_close(qat(x), conv._conv_forward(xq, wq, conv.bias), rtol=0, atol=0)
    state = enn.export_int8(nn.Sequential(qat))
    assert state["0.weight_int8"].shape == conv.weight.shape and state["0.weight_scale"].shape == (conv.out_channels,)
    loaded = enn.load_int8(state, lambda: nn.Sequential(CONVS[name]()))
    int8_type = enn.Int8Conv1d if isinstance(conv, nn.Conv1d) else enn.Int8Conv2d
    assert type(loaded[0]) is int8_type
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), qat(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["conv1d-groups-circular", "conv2d-odd"])
def test_fake_quant_conv_gradients_are_straight_through(name):
    torch.manual_seed(3)
    conv = CONVS[name]()
    qat = enn.prepare_qat(nn.Sequential(conv))[0]
    x = _conv_input(conv).requires_grad_()
    qat(x).square().sum().backward()
    # The STE gradient is the float conv's gradient taken at the fake-quantized weight.
    wq = reference.fake_quant_int8(conv.weight.detach(), "channel", 0, 128, True).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    conv._conv_forward(x2, wq, conv.bias).square().sum().backward()
    torch.testing.assert_close(qat.weight.grad, wq.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv1d(4, 4, 3)
        self.up = nn.ConvTranspose2d(4, 2, 2)
        self.emb = nn.Embedding(5, 4)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.norm(self.c1(x)).mean((2, 3)))


def test_prepare_qat_converts_convs_and_warns_once_about_the_rest():
    with pytest.warns(UserWarning) as record:
        qat = enn.prepare_qat(_CNN())
    messages = [str(w.message) for w in record if "prepare_qat" in str(w.message)]
    assert len(messages) == 1
    assert "up (ConvTranspose2d)" in messages[0] and "emb (Embedding)" in messages[0]
    assert "norm" not in messages[0] and "c1" not in messages[0] and "fc" not in messages[0]
    assert isinstance(qat.c1, enn.FakeQuantConv2d) and isinstance(qat.c2, enn.FakeQuantConv1d)
    assert isinstance(qat.fc, enn.FakeQuantLinear) and type(qat.up) is nn.ConvTranspose2d
    state = enn.export_int8(qat)
    assert {"c1.weight_int8", "c2.weight_int8", "fc.weight_int8", "up.weight", "emb.weight"} <= set(state)
    loaded = enn.load_int8(state, _CNN)
    x = torch.randn(2, 1, 6, 6)
    qat.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), qat(x), rtol=0, atol=0)


def test_an_optimizer_built_before_prepare_qat_trains_the_prepared_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    qat = enn.prepare_qat(model)
    assert isinstance(qat[0], enn.FakeQuantLinear) and type(model[0]) is nn.Linear  # model's tree unchanged
    assert all(a is b for a, b in zip(qat.parameters(), model.parameters()))
    assert qat[1].running_mean is model[1].running_mean
    before = qat[0].weight.detach().clone()
    qat(torch.randn(16, 8)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(qat[0].weight.detach(), before)


def test_prepare_qat_on_a_fully_convertible_model_does_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enn.prepare_qat(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3), nn.LayerNorm(3)))


def test_prepare_qat_leaves_multihead_attention_whole():
    with pytest.warns(UserWarning, match="MultiheadAttention"):
        qat = enn.prepare_qat(nn.Sequential(nn.MultiheadAttention(8, 2)))
    assert type(qat[0].out_proj) is not enn.FakeQuantLinear
    x = torch.randn(3, 1, 8)
    qat[0](x, x, x)  # still runs: MHA reads out_proj.weight directly


@pytest.mark.parametrize("model", [_Net(), nn.Sequential(nn.Conv2d(1, 2, 3)), nn.ReLU()])
def test_export_int8_of_an_unprepared_model_raises(model):
    with pytest.raises(ValueError, match="prepare_qat"):
        enn.export_int8(model)
    with pytest.raises(TypeError, match="export_int8: model"):
        enn.export_int8({"weight": torch.zeros(2, 2)})


def test_load_int8_names_the_expected_layer_type_for_conv_codes():
    state = enn.export_int8(enn.prepare_qat(nn.Sequential(nn.Conv2d(3, 4, 3))))
    with pytest.raises(ValueError, match="expected an nn.Conv2d"):
        enn.load_int8(state, nn.Sequential(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match=r"needs \(4, 3, 5, 5\)"):
        enn.load_int8(state, nn.Sequential(nn.Conv2d(3, 4, 5)))
