"""EITPRegularizer: loss terms and metrics from hooked activations, against
the references, and under torch.compile."""
import importlib.util
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
    soft = [reference.histogram_entropy(a.detach(), bins=16, base=2, differentiable=True) for a in (hidden1, hidden2)]
    h = [reference.histogram_entropy(a.detach(), bins=16, base=2) for a in (hidden1, hidden2)]
    coh = [reference.coherence_loss(a.detach()) for a in (hidden1, hidden2)]
    soft_bits = soft[0] * 16 + soft[1] * 8
    expected = 2.0 * soft_bits + 0.5 * (coh[0] + coh[1]) / 2
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["thermodynamic_loss"], soft_bits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["coherence_loss"], (coh[0] + coh[1]) / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["entropy_bits"], (h[0] + h[1]) / 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(metrics["energy"], h[0] * 16 + h[1] * 8, rtol=1e-5, atol=0)
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


# ---------------------------------------------------------------- constructor checks, traps, cost


def test_a_string_names_one_layer():
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(fc=nn.Linear(12, 16), act=nn.Tanh(), out=nn.Linear(16, 3)))
    reg = EITPRegularizer(model, "act")
    assert reg.layers == ["act"]
    model(torch.randn(8, 12))
    loss, metrics = reg()
    assert torch.isfinite(loss) and torch.isfinite(metrics["entropy_bits"])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(bins=0), ValueError, "bins must be >= 1"),
    (dict(bins=2.5), TypeError, "bins must be an int"),
    (dict(bins=1 << 25), ValueError, "bins must be <="),
    (dict(lambda_thermo=-1.0), ValueError, "lambda_thermo must be >= 0"),
    (dict(lambda_coherence=float("nan")), ValueError, "lambda_coherence must be finite"),
    (dict(temperature=0.0), ValueError, "temperature must be > 0"),
    (dict(beta="1"), TypeError, "beta must be a real number"),
    (dict(energy_in_joules=1), TypeError, "energy_in_joules must be a bool"),
    (dict(lyapunov_activation="tanh"), TypeError, "lyapunov_activation must be None or a callable"),
    (dict(layers=["1", "1"]), ValueError, "names a module twice"),
    (dict(layers=[1]), TypeError, "module names"),
    (dict(layers=3), TypeError, "layers must be a module name or a list"),
])
def test_bad_constructor_arguments_raise_in_the_constructor(kwargs, error, match):
    kwargs = {"layers": ["1"], **kwargs}
    layers = kwargs.pop("layers")
    with pytest.raises(error, match=match):
        EITPRegularizer(_model(), layers, **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        EITPRegularizer([nn.Linear(2, 2)], "0")


def test_a_batch_of_one_raises_for_the_coherence_term_and_names_the_fix():
    model = _model()
    reg = EITPRegularizer(model, ["1"], lambda_coherence=1.0)
    model(torch.randn(1, 12))
    with pytest.raises(ValueError, match=r"layer '1' gave a batch of 1 .*drop_last=True.*lambda_coherence=0"):
        reg()
    quiet = EITPRegularizer(model, ["1"], lambda_coherence=0.0)
    model(torch.randn(1, 12))
    loss, metrics = quiet()  # no coherence term: a batch of 1 is fine
    assert loss.item() == 0.0 and "coherence_loss" not in metrics


def _eitp_ops_called(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("eitp::")]


@pytest.mark.skipif(not eitp_kernels._backends._extension.load()[0], reason="extension not built")
def test_a_term_of_weight_zero_costs_nothing_and_layers_share_one_entropy_call():
    model = _model()
    x = torch.randn(32, 12)

    def step(**lambdas):
        reg = EITPRegularizer(model, ["1", "3"], **lambdas)
        model(x)

        def run():
            with eitp_kernels.use_backend("cpp"):
                loss, _ = reg()
                if loss.requires_grad:
                    loss.backward()
        return _eitp_ops_called(run)

    default = step()  # lambda_thermo=0: no differentiable histogram
    assert "eitp::soft_histogram" not in default and "eitp::soft_histogram_backward" not in default
    assert default.count("eitp::histogram_counts_many") == 1  # both layers' entropies in one call
    assert default.count("eitp::coherence_forward") == 2
    no_coherence = step(lambda_coherence=0.0)
    assert not any(name.startswith("eitp::coherence") for name in no_coherence)
    thermo = step(lambda_thermo=1.0, lambda_coherence=0.0)
    assert thermo.count("eitp::soft_histogram") == 2 and thermo.count("eitp::soft_histogram_backward") == 2


@pytest.mark.parametrize("lambdas,extra", [
    (dict(), {"coherence_loss"}),
    (dict(lambda_thermo=0.5), {"coherence_loss", "thermodynamic_loss"}),
    (dict(lambda_coherence=0.0), set()),
    (dict(lyapunov_activation=torch.tanh), {"coherence_loss", "lyapunov"}),
])
def test_metric_keys_are_the_documented_ones(lambdas, extra):
    model = _model()
    reg = EITPRegularizer(model, ["1"], **lambdas)
    model(torch.randn(8, 12))
    _, metrics = reg()
    always = {"entropy_bits", "energy", "coherence_factor", "iem", "emergence_probability"}
    assert set(metrics) == always | extra
    for key in metrics:
        assert f"``{key}``" in EITPRegularizer.__doc__
        assert not metrics[key].requires_grad


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_the_regularizer_never_waits_for_the_device():
    from eitp_kernels.bench.launches import count_launches

    model = _model()
    reg = EITPRegularizer(model, ["1", "3"], lambda_thermo=1.0)

    def call():
        model(torch.randn(16, 12))
        reg()

    assert count_launches(call, "triton").syncs == ()
