"""EIT-P formulas against hand-computed values."""
import math

import pytest
import torch
from torch import nn

from eitp_kernels import training


def test_iem_is_the_plain_product():
    out = training.iem(0.5, torch.tensor([2.0, 4.0]), 300.0, torch.tensor(0.25))
    torch.testing.assert_close(out, torch.tensor([75.0, 150.0]))


def test_landauer_energy_of_one_bit_at_300_kelvin():
    # k_B * 300 K * ln 2 = 2.8710e-21 J (1.380649e-23 * 300 * 0.693147...)
    out = training.landauer_energy(torch.tensor(1.0, dtype=torch.float64), 300.0)
    assert out.item() == pytest.approx(1.380649e-23 * 300 * math.log(2), rel=1e-15)
    assert out.item() == pytest.approx(2.8710e-21, rel=1e-4)


def test_thermodynamic_loss_is_absolute_difference():
    torch.testing.assert_close(training.thermodynamic_loss(torch.tensor([1.0, 5.0]), 3.0), torch.tensor([2.0, 2.0]))


def test_emergence_probability_values_and_extremes():
    out = training.emergence_probability(torch.tensor([1.0, 2.0, 1e4, -1e4]), 1.0, 2.0)
    expected = torch.tensor([0.5, 1 / (1 + math.exp(-2.0)), 1.0, 0.0])
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(out).all()


def test_coherence_factor_real_and_complex_batched():
    psi = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    phi = torch.tensor([[0.0, 1.0], [1.0, 1.0], [4.0, 3.0]])
    # orthogonal -> 0; parallel -> 1; (3,4).(4,3) = 24, 24^2 / (25*25)
    torch.testing.assert_close(training.coherence_factor(psi, phi), torch.tensor([0.0, 1.0, 576 / 625]))
    a = torch.tensor([1 + 1j, 0j], dtype=torch.complex128)
    b = torch.tensor([1j, 1 + 0j], dtype=torch.complex128)
    # <a|b> = conj(1+i)*i = (1-i)i = 1+i, |.|^2 = 2; <a|a> = 2, <b|b> = 2 -> 0.5
    assert training.coherence_factor(a, b).item() == pytest.approx(0.5)


def test_coherence_factor_rejects_mismatched_vectors():
    with pytest.raises(ValueError, match="last dim"):
        training.coherence_factor(torch.ones(3), torch.ones(4))


def test_lyapunov_exponent_of_tanh_and_relu():
    x = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    expected = torch.log(1 - torch.tanh(x) ** 2).mean()
    torch.testing.assert_close(training.lyapunov_exponent(x, torch.tanh), expected)
    # ReLU: f' = 1 on positives (ln 1 = 0), 0 on negatives (ln eps)
    out = training.lyapunov_exponent(torch.tensor([1.0, -1.0], dtype=torch.float64), torch.relu, eps=1e-12)
    assert out.item() == pytest.approx(math.log(1e-12) / 2)
    assert training.lyapunov_exponent(torch.tensor([1.0, -1.0]), torch.relu, eps=0).item() == -math.inf


def test_largest_lyapunov_exponent_of_a_linear_map_is_log_top_singular_value():
    torch.manual_seed(0)
    w = torch.randn(6, 6, dtype=torch.float64)
    top = torch.linalg.svdvals(w)[0]
    out = training.largest_lyapunov_exponent(lambda v: w @ v, torch.randn(6, dtype=torch.float64), iterations=200)
    assert out.item() == pytest.approx(math.log(top.item()), rel=1e-6)


def test_path_norm_sums_per_tensor_norms():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))
        model.bias.fill_(-2.0)
    assert training.path_norm(model).item() == pytest.approx(7.0)


def test_magnitude_prune_reaches_target_sparsity_and_keeps_largest():
    model = nn.Linear(10, 10)
    with torch.no_grad():
        model.weight.copy_(torch.arange(1, 101, dtype=torch.float32).reshape(10, 10) * torch.tensor([1.0, -1.0]).repeat(5))
    masks = training.magnitude_prune(model, 0.3)
    w = model.weight.detach().abs().flatten()
    assert (w == 0).sum().item() == 30
    assert w[w > 0].min().item() == 31
    assert masks["weight"].sum().item() == 70 and "bias" not in masks
    with pytest.raises(ValueError, match="sparsity"):
        training.magnitude_prune(model, 1.0)
