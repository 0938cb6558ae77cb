"""Modules built on the eitp_kernels ops."""
from __future__ import annotations

import torch

from eitp_kernels.ops.entropy import histogram_entropy_many


class EntropyMonitor(torch.nn.Module):
    """Histogram entropy of every parameter of a model, from one call.

    ``EntropyMonitor(model, bins=256, base=2.0)()`` returns
    ``{parameter name: 0-d entropy tensor}`` (bits per value for base 2),
    computed on the parameters' device by one ``histogram_entropy_many`` call
    (no host sync, no gradient). Each parameter gets its own automatic range
    unless ``range`` is given. The model is referenced, not registered as a
    submodule, so the monitor holds no parameters of its own.

    Parameters on several devices are grouped per device (one call each).
    """

    def __init__(self, model: torch.nn.Module, bins: int = 256, range=None, base: float | None = 2.0,
                 trainable_only: bool = False):
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"EntropyMonitor: model must be a torch.nn.Module, got {type(model).__name__}")
        self.__dict__["model"] = model  # not a submodule
        self.bins = bins
        self.range = range
        self.base = base
        self.trainable_only = trainable_only

    @torch.no_grad()
    def forward(self) -> dict[str, torch.Tensor]:
        named = [(n, p) for n, p in self.model.named_parameters()
                 if p.numel() > 0 and (p.requires_grad or not self.trainable_only)]
        by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
        for name, p in named:
            by_device.setdefault(p.device, []).append((name, p.detach()))
        out: dict[str, torch.Tensor] = {}
        for group in by_device.values():
            h = histogram_entropy_many([p for _, p in group], bins=self.bins, range=self.range, base=self.base)
            out.update(zip([n for n, _ in group], h.unbind(0)))
        return {name: out[name] for name, _ in named}

    def extra_repr(self) -> str:
        return f"bins={self.bins}, range={self.range}, base={self.base}, trainable_only={self.trainable_only}"
