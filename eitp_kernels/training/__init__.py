"""The EIT-P training layer: the paper's formulas, energy metering, the
inertia-aware learning rate (and, as they land, the regularizer and model
compression built on the fused ops)."""
from eitp_kernels.training.energy import EnergyMeter, EnergyResult
from eitp_kernels.training.formulas import (
    BOLTZMANN_J_PER_K,
    coherence_factor,
    emergence_probability,
    iem,
    landauer_energy,
    largest_lyapunov_exponent,
    lyapunov_exponent,
    magnitude_prune,
    path_norm,
    thermodynamic_loss,
)
from eitp_kernels.training.inertia import InertiaAwareLR

__all__ = [
    "BOLTZMANN_J_PER_K", "EnergyMeter", "EnergyResult", "InertiaAwareLR", "coherence_factor",
    "emergence_probability", "iem", "landauer_energy", "largest_lyapunov_exponent", "lyapunov_exponent",
    "magnitude_prune", "path_norm", "thermodynamic_loss",
]
