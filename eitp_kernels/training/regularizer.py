"""EITPRegularizer: the EIT-P extra loss and metrics from hooked activations.

Per step, for the activations A_l (batch N x features D_l) of the layers named:

    H_l     histogram entropy of A_l in bits (differentiable, fused op)
    L_coh   mean_l ||corr(A_l) - I||_F            (fused coherence loss)
    C_l     coherence_factor(m_l(t), m_l(t-1)), m_l = batch mean of A_l: how
            much the layer's mean representation kept its direction since the
            previous step (1 = unchanged direction; 1 on the first step)
    E       Landauer energy of the entropy, k_B T ln2 * sum_l H_l * D_l, in
            units of k_B T ln2 (bits) unless energy_in_joules=True
    L_thermo |E - E_min|
    IEM     alpha * mean_l H_l * T * mean_l C_l
    P_emerge 1 / (1 + exp(-beta (mean_l H_l - H_c)))

    loss = lambda_thermo * L_thermo + lambda_coherence * L_coh

C and IEM are the paper's formulas applied to quantities we chose (documented
above); they are measurements, not evidence of anything. Nothing here syncs
with the host: metrics are tensors.

Distributed (``process_group``): every statistic is taken over the global
batch (the concatenation of the ranks' batches): the entropy's range and
counts, the coherence loss's column statistics and correlations, the batch
means m_l and the Lyapunov mean are all-reduced, so every rank gets the same
loss and metrics as one process on the global batch. The loss's gradient
follows the ops' convention (``world_size * dL/dA_rank`` per rank), so DDP's
gradient averaging yields the single-process parameter gradients.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from eitp_kernels import _validation
from eitp_kernels.training import formulas


class EITPRegularizer:
    """Attach to ``model``; call ``regularizer()`` after each forward pass.

    Args:
        model: the network.
        layers: names (as in ``model.named_modules()``) whose outputs are measured.
        lambda_thermo, lambda_coherence: weights of the two loss terms.
        temperature: T in kelvin for the Landauer energy and IEM.
        alpha: IEM's scale. min_energy: E_min (same unit as E).
        critical_entropy, beta: H_c (bits) and beta of the emergence probability.
        bins: histogram bins for the entropy.
        energy_in_joules: E in joules instead of bits (k_B T ln2 units).
        lyapunov_activation: if given (e.g. torch.tanh), metrics include the
            paper's Lyapunov estimate mean ln|f'(A_l)| treating A_l as pre-activations.
        process_group: a ``torch.distributed`` group (e.g. ``dist.group.WORLD``
            under DDP), or None: statistics over the global batch (module
            docstring). Every rank must call the regularizer at each step.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], *, lambda_thermo: float = 0.0,
                 lambda_coherence: float = 1e-3, temperature: float = 300.0, alpha: float = 1.0,
                 min_energy: float = 0.0, critical_entropy: float = 4.0, beta: float = 1.0, bins: int = 64,
                 energy_in_joules: bool = False,
                 lyapunov_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 process_group=None):
        _validation.check_process_group("EITPRegularizer", process_group)
        self.process_group = process_group
        modules = dict(model.named_modules())
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("EITPRegularizer: layers is empty; name at least one module")
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise ValueError(f"EITPRegularizer: layers {missing} are not modules of the model")
        self.lambda_thermo, self.lambda_coherence = float(lambda_thermo), float(lambda_coherence)
        self.temperature, self.alpha, self.min_energy = float(temperature), float(alpha), float(min_energy)
        self.critical_entropy, self.beta, self.bins = float(critical_entropy), float(beta), int(bins)
        self.energy_in_joules = energy_in_joules
        self.lyapunov_activation = lyapunov_activation
        self.activations: dict[str, torch.Tensor] = {}
        self.previous_means: dict[str, torch.Tensor] = {}
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.activations[name] = output
        return hook

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _layer_terms(self, name: str):
        from eitp_kernels import coherence_loss, histogram_entropy

        act = self.activations[name]
        flat = act.reshape(act.shape[0], -1)
        group = self.process_group
        entropy_bits = histogram_entropy(flat, bins=self.bins, base=2, differentiable=True, process_group=group)
        if group is not None:
            coherence = coherence_loss(flat, process_group=group)
        else:
            coherence = coherence_loss(flat) if flat.shape[0] >= 2 else flat.new_zeros(())
        mean = self._global_mean(flat.detach().float().sum(dim=0), flat.shape[0])
        previous = self.previous_means.get(name)
        c = torch.ones((), device=mean.device) if previous is None else formulas.coherence_factor(mean, previous, eps=1e-30)
        self.previous_means[name] = mean
        return entropy_bits, coherence, c, flat.shape[1]

    def _global_mean(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """total / count, where under a process group both are summed over the ranks first."""
        if self.process_group is None:
            return total / count
        import torch.distributed as dist

        packed = torch.cat([total.reshape(-1), total.new_full((1,), float(count))])
        dist.all_reduce(packed, group=self.process_group)  # one collective: the sums and the count
        return (packed[:-1] / packed[-1]).reshape(total.shape)

    def _lyapunov(self, name: str) -> torch.Tensor:
        act = self.activations[name].detach()
        local_mean = formulas.lyapunov_exponent(act, self.lyapunov_activation)
        if self.process_group is None:
            return local_mean
        return self._global_mean(local_mean.double() * act.numel(), act.numel()).to(local_mean.dtype)

    def __call__(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        missing = [name for name in self.layers if name not in self.activations]
        if missing:
            raise RuntimeError(f"EITPRegularizer: no activations captured for {missing}; run the model's forward first")
        terms = [self._layer_terms(name) for name in self.layers]
        entropies = torch.stack([t[0].float() for t in terms])
        coherence = torch.stack([t[1].float() for t in terms]).mean()
        c = torch.stack([t[2].float() for t in terms]).mean()
        bits = sum(t[0].float() * t[3] for t in terms)
        energy = formulas.landauer_energy(bits, self.temperature) if self.energy_in_joules else bits
        thermo = formulas.thermodynamic_loss(energy, self.min_energy)
        h = entropies.mean()
        metrics = {
            "entropy_bits": h.detach(),
            "coherence_loss": coherence.detach(),
            "coherence_factor": c,
            "energy": energy.detach(),
            "iem": formulas.iem(self.alpha, h.detach(), self.temperature, c),
            "emergence_probability": formulas.emergence_probability(h.detach(), self.critical_entropy, self.beta),
        }
        if self.lyapunov_activation is not None:
            metrics["lyapunov"] = torch.stack([self._lyapunov(name) for name in self.layers]).mean()
        loss = self.lambda_thermo * thermo + self.lambda_coherence * coherence
        self.activations = {}
        return loss, metrics
