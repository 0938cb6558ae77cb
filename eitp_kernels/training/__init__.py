"""The EIT-P training layer: the paper's formulas, the regularizer built on
the fused ops, energy metering, the inertia-aware learning rate and model
compression (prune + int8 + zstd)."""
from eitp_kernels.training.compression import CompressionReport, load_compressed, load_compressed_int8, save_compressed
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
from eitp_kernels.training.regularizer import EITPRegularizer

__all__ = [
    "BOLTZMANN_J_PER_K", "CompressionReport", "EITPRegularizer", "EnergyMeter", "load_compressed", "load_compressed_int8", "save_compressed", "EnergyResult", "InertiaAwareLR", "coherence_factor",
    "emergence_probability", "iem", "landauer_energy", "largest_lyapunov_exponent", "lyapunov_exponent",
    "magnitude_prune", "path_norm", "thermodynamic_loss",
]
