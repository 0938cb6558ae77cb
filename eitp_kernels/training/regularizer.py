"""EITPRegularizer: the EIT-P extra loss and metrics from hooked activations.

Per step, for the activations A_l (batch N x features D_l) of the layers named:

    H_l     histogram entropy of A_l in bits (``bins`` equal bins over its finite range)
    L_coh   mean_l ||corr(A_l) - I||_F            (fused coherence loss)
    C_l     coherence_factor(m_l(t), m_l(t-1)), m_l = batch mean of A_l: how
            much the layer's mean representation kept its direction since the
            previous step (1 = unchanged direction; 1 on the first step)
    E       Landauer energy of the entropy, k_B T ln2 * sum_l H_l * D_l, in
            units of k_B T ln2 (bits) unless energy_in_joules=True
    L_thermo |E~ - E_min|, E~ as E with the linear-binning (differentiable)
            entropy of docs/design.md §2.1 in place of H_l
    IEM     alpha * mean_l H_l * T * mean_l C_l
    P_emerge 1 / (1 + exp(-beta (mean_l H_l - H_c)))

    loss = lambda_thermo * L_thermo + lambda_coherence * L_coh

A term whose weight is 0 is not computed at all (no differentiable histogram
when lambda_thermo == 0, no coherence loss when lambda_coherence == 0). The
metrics' entropies are hard-binned histograms of every layer in one
``histogram_entropy_many`` call, whatever the weights.

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
    """Attach to ``model``; after each forward pass, ``loss, metrics = regularizer()``.

    Args:
        model: the network (an ``nn.Module``).
        layers: the name of one module, or a list of names (as in
            ``model.named_modules()``), whose outputs are measured.
        lambda_thermo, lambda_coherence: weights (finite, >= 0) of the two
            loss terms; a term of weight 0 costs nothing.
        temperature: T in kelvin (> 0) for the Landauer energy and IEM.
        alpha: IEM's scale. min_energy: E_min (same unit as E).
        critical_entropy, beta: H_c (bits) and beta of the emergence probability.
        bins: histogram bins for the entropy (1 to 2^24).
        energy_in_joules: E in joules instead of bits (k_B T ln2 units).
        lyapunov_activation: if given (e.g. torch.tanh), metrics include the
            paper's Lyapunov estimate mean ln|f'(A_l)| treating A_l as pre-activations.
        process_group: a ``torch.distributed`` group (e.g. ``dist.group.WORLD``
            under DDP), or None: statistics over the global batch (module
            docstring). Every rank must call the regularizer at each step.

    Bad arguments raise TypeError/ValueError here, not at the first call.

    ``__call__()`` reads the activations the hooks captured in the last
    forward pass (RuntimeError if a layer has none) and returns ``(loss,
    metrics)``: ``loss`` a 0-d tensor with a gradient, to add to the task loss
    (``lambda_thermo * L_thermo + lambda_coherence * L_coh``); ``metrics`` a
    dict of detached 0-d tensors (no host sync; call ``.item()`` to log):

    * ``entropy_bits``: mean_l H_l, bits (hard-binned histogram);
    * ``energy``: E = sum_l H_l D_l, bits (k_B T ln2 units) or joules;
    * ``coherence_factor``: mean_l C_l, in [0, 1];
    * ``iem``: alpha * entropy_bits * T * coherence_factor;
    * ``emergence_probability``: in (0, 1);
    * ``coherence_loss``: L_coh (only when lambda_coherence != 0);
    * ``thermodynamic_loss``: L_thermo (only when lambda_thermo != 0);
    * ``lyapunov``: mean_l mean ln|f'(A_l)| (only with ``lyapunov_activation``).

    A layer's batch must have at least 2 rows when ``lambda_coherence != 0``
    (a correlation needs N >= 2): a batch of 1 raises ValueError.

    Cost per step: one ``histogram_entropy_many`` over all layers (range and
    counts: two passes over the activations, no gradient); per layer with
    lambda_coherence != 0 one coherence loss forward and backward (an N x N
    or D x D product each way, ``ops.coherence.plan``: the dominant cost);
    per layer with lambda_thermo != 0 a linear-binning histogram forward and
    backward (float64 scatter-adds, about one pass of 2 atomics per element
    each way); plus a few small ops per layer for C_l.

    Measured on the CPU case (64-512-512-10 tanh MLP, batch 256, layers "1"
    and "3", default lambdas, 1 thread; ``overhead(steps=100, cpu_time=True)``
    of ``eitp_kernels.bench.suite_eitp_regularizer``, plain and regularized
    steps alternating, three fresh processes at load average about 1): +63%
    to +67% over the plain step in thread CPU time (6.4-8.1 ms plain). Where
    it goes (``python -m eitp_kernels.bench.suite_eitp_regularizer --parts``,
    idle, on the build before the epilogue's masked loads were removed, which
    read +68% to +74% then): the two coherence forward + backward 3.95-4.18
    ms, ``histogram_entropy_many`` 0.29-0.33 ms, the rest (C_l, metrics,
    autograd's sums of the two gradients reaching each hooked activation)
    0.19-0.49 ms. At N = 256, D = 512 the planner takes the Gram path with a
    gradient (4N < 3D): the forward makes one triangle of G = Z Z^T (64-row
    panels: about 21M multiply-adds) and keeps it, the backward G Z (34M):
    about 109M multiply-adds for the two layers, half the plain step's own
    ~220M (the D x D product path: about 220M), which BLAS runs at about 45
    GMAC/s here (2.4 ms). A 60% overhead is not reached: those products
    alone are about a third of the plain step, and the coherence kernels'
    passes over the activations (statistics, standardization in the forward
    and again in the backward, the backward epilogue), the histogram and the
    Python around them cost about as much again.
    """

    def __init__(self, model: nn.Module, layers: str | Iterable[str], *, lambda_thermo: float = 0.0,
                 lambda_coherence: float = 1e-3, temperature: float = 300.0, alpha: float = 1.0,
                 min_energy: float = 0.0, critical_entropy: float = 4.0, beta: float = 1.0, bins: int = 64,
                 energy_in_joules: bool = False,
                 lyapunov_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 process_group=None):
        op = "EITPRegularizer"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{op}: model must be a torch.nn.Module, got {type(model).__name__}")
        self.layers = _check_layers(op, model, layers)
        _validation.check_process_group(op, process_group)
        self.process_group = process_group
        self.lambda_thermo = _validation.check_float(op, "lambda_thermo", lambda_thermo, non_negative=True)
        self.lambda_coherence = _validation.check_float(op, "lambda_coherence", lambda_coherence, non_negative=True)
        self.temperature = _validation.check_float(op, "temperature", temperature, positive=True)
        self.alpha = _validation.check_float(op, "alpha", alpha)
        self.min_energy = _validation.check_float(op, "min_energy", min_energy)
        self.critical_entropy = _validation.check_float(op, "critical_entropy", critical_entropy)
        self.beta = _validation.check_float(op, "beta", beta)
        self.bins = _validation.check_int(op, "bins", bins, minimum=1)
        from eitp_kernels.ops.entropy import MAX_BINS

        if self.bins > MAX_BINS:
            raise ValueError(f"{op}: bins must be <= {MAX_BINS}, got {self.bins}")
        self.energy_in_joules = _validation.check_bool(op, "energy_in_joules", energy_in_joules)
        if lyapunov_activation is not None and not callable(lyapunov_activation):
            raise TypeError(f"{op}: lyapunov_activation must be None or a callable (e.g. torch.tanh), "
                            f"got {type(lyapunov_activation).__name__}")
        self.lyapunov_activation = lyapunov_activation
        self.activations: dict[str, torch.Tensor] = {}
        self.previous_means: dict[str, torch.Tensor] = {}
        self._widths_cache: dict[tuple, torch.Tensor] = {}
        modules = dict(model.named_modules())
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

    def _entropies(self, flats: list[torch.Tensor]) -> torch.Tensor:
        """H_l in bits (float32), hard-binned, no gradient: one call for every layer."""
        from eitp_kernels import histogram_entropy, histogram_entropy_many

        detached = [f.detach() for f in flats]
        if self.process_group is None:
            return histogram_entropy_many(detached, bins=self.bins, base=2).float()
        return torch.stack([histogram_entropy(f, bins=self.bins, base=2, process_group=self.process_group).float()
                            for f in detached])

    def _thermo_bits(self, flats: list[torch.Tensor]) -> torch.Tensor:
        """sum_l H~_l D_l with the differentiable (linear-binning) entropy H~_l."""
        from eitp_kernels import histogram_entropy

        return sum(histogram_entropy(f, bins=self.bins, base=2, differentiable=True,
                                     process_group=self.process_group).float() * f.shape[1] for f in flats)

    def _coherence(self, name: str, flat: torch.Tensor) -> torch.Tensor:
        from eitp_kernels import coherence_loss

        if self.process_group is None and flat.shape[0] < 2:
            raise ValueError(f"EITPRegularizer: layer {name!r} gave a batch of {flat.shape[0]} row(s); the coherence "
                             "term needs at least 2 (a correlation of one sample is undefined): drop the last "
                             "incomplete batch (DataLoader(drop_last=True)) or set lambda_coherence=0")
        return coherence_loss(flat, process_group=self.process_group).float()

    def _coherence_factor(self, name: str, flat: torch.Tensor) -> torch.Tensor:
        mean = self._global_mean(flat.detach().float().sum(dim=0), flat.shape[0])
        previous = self.previous_means.get(name)
        self.previous_means[name] = mean
        if previous is None:
            return torch.ones((), device=mean.device)
        return formulas.coherence_factor(mean, previous, eps=1e-30)

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
        """``(loss, metrics)`` of the activations of the last forward pass (class docstring)."""
        missing = [name for name in self.layers if name not in self.activations]
        if missing:
            raise RuntimeError(f"EITPRegularizer: no activations captured for {missing}; run the model's forward first")
        flats = [self.activations[name].reshape(self.activations[name].shape[0], -1) for name in self.layers]
        entropies = self._entropies(flats)
        h = entropies.mean()
        bits = (entropies * self._widths(flats, entropies.device)).sum()
        c = torch.stack([self._coherence_factor(name, f).float() for name, f in zip(self.layers, flats)]).mean()
        metrics = {
            "entropy_bits": h,
            "energy": self._energy(bits),
            "coherence_factor": c,
            "iem": formulas.iem(self.alpha, h, self.temperature, c),
            "emergence_probability": formulas.emergence_probability(h, self.critical_entropy, self.beta),
        }
        terms = []
        if self.lambda_coherence != 0:
            coherence = torch.stack([self._coherence(name, f) for name, f in zip(self.layers, flats)]).mean()
            metrics["coherence_loss"] = coherence.detach()
            terms.append(self.lambda_coherence * coherence)
        if self.lambda_thermo != 0:
            thermo = formulas.thermodynamic_loss(self._energy(self._thermo_bits(flats)), self.min_energy)
            metrics["thermodynamic_loss"] = thermo.detach()
            terms.append(self.lambda_thermo * thermo)
        loss = torch.zeros((), device=entropies.device) if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1]
        if self.lyapunov_activation is not None:
            metrics["lyapunov"] = torch.stack([self._lyapunov(name) for name in self.layers]).mean()
        self.activations = {}
        return loss, metrics

    def _widths(self, flats: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """D_l of each layer as a tensor (default dtype) on ``device``, made once per
        (device, dtype, widths) in eager mode (traced: made in the graph, no cache to guard on)."""
        key = (device, torch.get_default_dtype(), tuple(f.shape[1] for f in flats))
        if torch.compiler.is_compiling():
            return torch.tensor([float(d) for d in key[2]], device=device)
        widths = self._widths_cache.get(key)
        if widths is None:
            widths = self._widths_cache[key] = torch.tensor([float(d) for d in key[2]], device=device)
        return widths

    def _energy(self, bits: torch.Tensor) -> torch.Tensor:
        return formulas.landauer_energy(bits, self.temperature) if self.energy_in_joules else bits


def _check_layers(op: str, model: nn.Module, layers) -> list[str]:
    """``layers`` as a list of module names of ``model``: one name, or an iterable of names."""
    if isinstance(layers, str):
        layers = [layers]
    elif isinstance(layers, Iterable):
        layers = list(layers)
    else:
        raise TypeError(f"{op}: layers must be a module name or a list of module names, got {type(layers).__name__}")
    if not layers:
        raise ValueError(f"{op}: layers is empty; name at least one module")
    bad = [name for name in layers if not isinstance(name, str)]
    if bad:
        raise TypeError(f"{op}: layers must hold module names (str), got {bad!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{op}: layers names a module twice: {layers}")
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"{op}: layers {missing} are not modules of the model "
                         f"(its modules: {[n for n in modules if n][:20]})")
    return layers
