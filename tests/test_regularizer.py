"""EITPRegularizer: loss terms and metrics from hooked activations, against
the references, and under torch.compile."""
import math

import pytest
import torch
from torch import nn

import eitp_kernels
from eitp_kernels import reference
from eitp_kernels.training import EITPRegularizer, formulas


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))


def test_loss_and_metrics_match_the_formulas():
    model = _model()
    reg = EITPRegularizer(model, ["1", "3"], lambda_coherence=0.5, lambda_thermo=2.0, bins=16,
                          temperature=300.0, critical_entropy=3.0, beta=2.0)
    x = torch.randn(32, 12)
    hidden1 = model[1](model[0](x))
    hidden2 = model[3](model[2](hidden1))
    model(x)
    loss, metrics = reg()
    h = [reference.histogram_entropy(a.detach(), bins=16, base=2, differentiable=True) for a in (hidden1, hidden2)]
    coh = [reference.coherence_loss(a.detach()) for a in (hidden1, hidden2)]
    bits = h[0] * 16 + h[1] * 8
    expected = 2.0 * bits + 0.5 * (coh[0] + coh[1]) / 2
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["entropy_bits"], (h[0] + h[1]) / 2, rtol=1e-5, atol=0)
    assert metrics["coherence_factor"].item() == 1.0  # first step: nothing to compare with
    torch.testing.assert_close(metrics["iem"], (h[0] + h[1]) / 2 * 300.0, rtol=1e-5, atol=0)
    p = 1 / (1 + math.exp(-2.0 * (metrics["entropy_bits"].item() - 3.0)))
    assert metrics["emergence_probability"].item() == pytest.approx(p, rel=1e-5)


def test_loss_is_differentiable_and_trains():
    model = _model()
    reg = EITPRegularizer(model, ["1", "3"], lambda_coherence=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 12)
    first = None
    for _ in range(20):
        model(x)
        loss, _ = reg()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model(x)
    assert reg()[0].item() < first  # the coherence term can be optimized


def test_coherence_factor_tracks_direction_between_steps():
    model = _model()
    reg = EITPRegularizer(model, ["1"])
    x = torch.randn(16, 12)
    model(x)
    reg()
    model(x)
    _, metrics = reg()
    assert metrics["coherence_factor"].item() == pytest.approx(1.0, abs=1e-6)  # same input, same direction


def test_energy_in_joules_is_landauer():
    model = _model()
    reg = EITPRegularizer(model, ["1"], energy_in_joules=True, temperature=300.0)
    model(torch.randn(8, 12))
    _, metrics = reg()
    bits = metrics["entropy_bits"] * 16
    torch.testing.assert_close(metrics["energy"], formulas.landauer_energy(bits, 300.0), rtol=1e-5, atol=0)


def test_lyapunov_metric_when_asked():
    model = _model()
    reg = EITPRegularizer(model, ["0"], lyapunov_activation=torch.tanh)
    x = torch.randn(8, 12)
    pre = model[0](x).detach()
    model(x)
    _, metrics = reg()
    torch.testing.assert_close(metrics["lyapunov"], torch.log(1 - torch.tanh(pre) ** 2).mean(), rtol=1e-5, atol=1e-6)


def test_bad_configuration_and_usage():
    model = _model()
    with pytest.raises(ValueError, match="not modules"):
        EITPRegularizer(model, ["nope"])
    with pytest.raises(ValueError, match="layers is empty"):
        EITPRegularizer(model, [])
    reg = EITPRegularizer(model, ["1"])
    with pytest.raises(RuntimeError, match="run the model's forward first"):
        reg()
    reg.remove()
    model(torch.randn(4, 12))
    assert reg.activations == {}


def test_training_step_under_torch_compile():
    model = _model()
    reg = EITPRegularizer(model, ["1", "3"], lambda_coherence=0.1)

    def step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        extra, metrics = reg()
        return loss + extra, metrics["entropy_bits"]

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    total, h = compiled(x, y)
    total.backward()
    eager_total, eager_h = step(x, y)
    torch.testing.assert_close(total.detach(), eager_total.detach(), rtol=1e-5, atol=1e-6)
    assert model[0].weight.grad is not None


def test_regularizer_runs_on_every_cpu_backend():
    model = _model()
    reg = EITPRegularizer(model, ["1"], lambda_coherence=1.0)
    x = torch.randn(16, 12)
    losses = []
    for backend in ("reference", "cpp"):
        with eitp_kernels.use_backend(backend):
            model(x)
            losses.append(reg()[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
