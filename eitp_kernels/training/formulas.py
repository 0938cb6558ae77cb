"""The EIT-P paper's formulas, implemented as written.

These are formulas, not evidence: computing IEM or a Landauer bound for a
network says nothing by itself about how well it learns. Every function takes
and returns tensors (Python numbers are accepted and turned into tensors) and
never syncs with the host, so they can run every training step and under
torch.compile.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from eitp_kernels import _dtensor

# CODATA 2018 Boltzmann constant, exact by the 2019 SI definition (J/K).
BOLTZMANN_J_PER_K = 1.380649e-23


def _tensor(value, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if like is not None:
        return torch.as_tensor(value, dtype=like.dtype if like.is_floating_point() else torch.float32, device=like.device)
    return torch.as_tensor(value, dtype=torch.float32)


def _first_tensor(*values) -> torch.Tensor | None:
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def iem(alpha, entropy, temperature, coherence) -> torch.Tensor:
    """Intelligence emergence metric, IEM = alpha * H * T * C (dimensionless
    alpha, entropy H, temperature T, coherence C; broadcasting)."""
    like = _first_tensor(alpha, entropy, temperature, coherence)
    return _tensor(alpha, like) * _tensor(entropy, like) * _tensor(temperature, like) * _tensor(coherence, like)


def landauer_energy(entropy_bits, temperature_kelvin) -> torch.Tensor:
    """Landauer bound E = k_B * T * ln 2 * H in joules, for H bits erased at T kelvin.

    In float32, values around 1e-21 J keep ~7 significant digits (float32's
    smallest normal is 1.2e-38, so no underflow for realistic H and T).
    """
    like = _first_tensor(entropy_bits, temperature_kelvin)
    h = _tensor(entropy_bits, like)
    t = _tensor(temperature_kelvin, like)
    return (BOLTZMANN_J_PER_K * math.log(2.0)) * t * h


def thermodynamic_loss(energy, min_energy) -> torch.Tensor:
    """L_thermo = |E - E_min| (same units as the energies)."""
    like = _first_tensor(energy, min_energy)
    return (_tensor(energy, like) - _tensor(min_energy, like)).abs()


def emergence_probability(entropy, critical_entropy, beta) -> torch.Tensor:
    """P_emergence = 1 / (1 + exp(-beta * (H - H_c))), computed as a sigmoid (no overflow)."""
    like = _first_tensor(entropy, critical_entropy, beta)
    return torch.sigmoid(_tensor(beta, like) * (_tensor(entropy, like) - _tensor(critical_entropy, like)))


def coherence_factor(psi: torch.Tensor, phi: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """C = |<psi|phi>|^2 / (<psi|psi> <phi|phi>) over the last dim, batched over the rest.

    Real or complex vectors (complex: <a|b> = sum conj(a) b). C is in [0, 1]
    (Cauchy-Schwarz); a zero vector gives 0/0 = NaN unless ``eps`` > 0 is
    added to the denominator.
    """
    if psi.shape[-1] != phi.shape[-1]:
        raise ValueError(f"coherence_factor: psi and phi must share the last dim, got {tuple(psi.shape)} and {tuple(phi.shape)}")
    inner = (psi.conj() * phi).sum(dim=-1)
    norm_psi = (psi.conj() * psi).real.sum(dim=-1)
    norm_phi = (phi.conj() * phi).real.sum(dim=-1)
    return (inner.abs() ** 2) / (norm_psi * norm_phi + eps)


def lyapunov_exponent(pre_activations: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor],
                      eps: float = 1e-12) -> torch.Tensor:
    """The paper's estimate lambda = (1/n) sum_i ln |f'(x_i)| over pre-activations x_i.

    f' is taken by autograd (``activation`` must be elementwise). ln |f'| is
    taken of max(|f'|, eps), so a ReLU's flat half contributes ln(eps) =
    -27.6 (eps = 1e-12) instead of -inf: pass eps=0 for the literal formula.
    Units: nats per layer application.
    """
    x = pre_activations.detach().requires_grad_(True)
    with torch.enable_grad():
        (derivative,) = torch.autograd.grad(activation(x).sum(), x)
    magnitude = derivative.abs()
    if eps > 0:
        magnitude = magnitude.clamp_min(eps)
    return magnitude.log().mean()


def largest_lyapunov_exponent(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iterations: int = 20,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """ln sigma_max(J), J = d fn / d x at x: the largest one-step Lyapunov exponent of the map.

    Power iteration on J^T J with ``torch.func.jvp`` and ``torch.func.vjp``
    (no Jacobian is formed): v <- J^T J v / ||J^T J v||, then
    sigma_max = ||J v||. A fixed iteration count, so no host sync; accuracy
    depends on the gap between the two largest singular values.
    """
    if iterations < 1:
        raise ValueError(f"largest_lyapunov_exponent: iterations must be >= 1, got {iterations}")
    x = x.detach()
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    v = v / v.norm()
    _, vjp_fn = torch.func.vjp(fn, x)
    for _ in range(iterations):
        _, jv = torch.func.jvp(fn, (x,), (v,))
        (jtjv,) = vjp_fn(jv)
        v = jtjv / jtjv.norm().clamp_min(torch.finfo(x.dtype).tiny)
    _, jv = torch.func.jvp(fn, (x,), (v,))
    return jv.norm().log()


def path_norm(model: nn.Module) -> torch.Tensor:
    """Sum over parameter tensors of their L2 norms, sum_l ||theta_l||_2 (the EIT-P 'path norm')."""
    norms = [p.norm() for p in model.parameters()]
    if not norms:
        raise ValueError("path_norm: model has no parameters")
    return torch.stack([n.to(norms[0].dtype) for n in norms]).sum()


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float, *, min_dim: int = 2) -> dict[str, torch.Tensor]:
    """Zero the smallest-magnitude fraction ``sparsity`` of each weight tensor, in place.

    Applies to parameters with at least ``min_dim`` dims (weights, not
    biases). Per tensor, the k = floor(sparsity * numel) smallest |w| are
    zeroed (ties at the threshold may zero a few more). Returns the boolean
    keep-masks by parameter name, so training can re-apply them.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"magnitude_prune: sparsity must be in [0, 1), got {sparsity}")
    masks = {}
    for name, param in model.named_parameters():
        if param.dim() < min_dim:
            continue
        k = int(sparsity * param.numel())
        if k == 0:
            masks[name] = torch.ones_like(param, dtype=torch.bool)
            continue
        # a DTensor (FSDP2) weight is gathered to find its k-th magnitude (docs/design.md §3.3)
        threshold = _dtensor.full(param.detach()).abs().flatten().kthvalue(k).values
        mask = param.abs() > _dtensor.replicate_like(threshold, param)
        param.mul_(mask)
        masks[name] = mask
    return masks
