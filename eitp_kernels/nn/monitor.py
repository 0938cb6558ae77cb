"""EntropyMonitor: the histogram entropy of a model's parameters, logged in one call."""
from __future__ import annotations

import fnmatch
import warnings
from typing import Callable

import torch

from eitp_kernels import _dtensor
from eitp_kernels.ops.entropy import histogram_entropy_many


_UNIT_NAMES = {None: "nats", 2.0: "bits", 10.0: "hartleys"}


def entropy_unit(base: float | None) -> str:
    """The unit of an entropy in log ``base``: "nats" (None: natural log), "bits" (2),
    "hartleys" (10), else "base<b>" (e.g. "base3")."""
    if base is not None and float(base) not in _UNIT_NAMES:
        return f"base{float(base):g}"
    return _UNIT_NAMES[None if base is None else float(base)]


def _name_filter(op: str, arg: str, value) -> Callable[[str, torch.Tensor], bool] | None:
    """None, a predicate ``(name, parameter) -> bool``, or fnmatch pattern(s) on the name."""
    if value is None or callable(value):
        return value
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{op}: {arg} must be None, a callable (name, parameter) -> bool, a pattern string or a "
                        f"list of them, got {value!r}")
    return lambda name, _param: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _nan_where_not_finite(entropies: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    """``entropies`` with NaN for each tensor holding a NaN or Inf (on the device, no sync):
    a tensor's largest |value| is finite exactly when all its values are (one extra read of
    the floating-point tensors, one fused reduction per dtype where torch has it)."""
    floating = [i for i, t in enumerate(tensors) if t.is_floating_point()]
    if not floating:
        return entropies
    peaks = [_dtensor.full(p) for p in torch._foreach_norm([tensors[i] for i in floating], float("inf"))]
    finite = torch.ones(len(tensors), dtype=torch.bool, device=entropies.device)
    finite[floating] = torch.stack([p.to(entropies.device, torch.float32) for p in peaks]).isfinite()
    return torch.where(finite, entropies, torch.full_like(entropies, float("nan")))


def _warn_unmatched(op: str, model: torch.nn.Module, include, exclude, raw_include, raw_exclude) -> None:
    """One UserWarning per filter that matches none of ``model``'s parameters (a typo in a pattern
    would otherwise log nothing, or everything, without a word)."""
    named = list(model.named_parameters())
    examples = ", ".join(repr(n) for n, _ in named[:3]) or "none"
    for arg, keep, raw in (("include", include, raw_include), ("exclude", exclude, raw_exclude)):
        if keep is None or any(keep(name, p) for name, p in named):
            continue
        warnings.warn(f"{op}: {arg}={raw!r} matches none of the model's {len(named)} parameters (names such as "
                      f"{examples}); patterns are fnmatch patterns on the full parameter name, e.g. "
                      f"'encoder.*' or '*.weight'", UserWarning, stacklevel=3)


class EntropyMonitor(torch.nn.Module):
    """Histogram entropy of the parameters of a model, from one call; logs itself.

    ``EntropyMonitor(model, bins=256, base=2.0)()`` returns
    ``{parameter name: 0-d entropy tensor}`` computed on the parameters'
    device by one ``histogram_entropy_many`` call per device (no host sync,
    no gradient). Units: **bits by default** (``base=2``), while
    ``histogram_entropy`` itself defaults to nats (``base=None``); ``unit``
    names the monitor's (``entropy_unit``) and it is part of every logged tag.
    Each parameter gets its own automatic range unless ``range`` is given.
    A parameter holding any NaN or Inf reports a NaN entropy (the histogram
    itself counts only finite values): a model whose weights diverged shows
    as NaN, never as a plausible number. This costs one more read of the
    parameters (their largest absolute value, on the device).
    The model is referenced, not registered as a submodule, so the monitor
    holds no parameters of its own.

    FSDP2 (``fully_shard``) and other DTensor parameters: the entropies of the
    full parameters, from their shards (ranges and counts all-reduced over the
    mesh, docs/design.md §3.3); every rank must call the monitor.

    ``monitor.log(writer, step)`` logs every value with one device-to-host
    transfer (the entropies are stacked on the device, then one
    ``.tolist()``), to either
      * a writer with ``add_scalar(tag, value, step)`` (TensorBoard's
        ``SummaryWriter``), one call per parameter, or
      * a callable taking a dict ``{tag: value}`` (``wandb.log``-style),
        called once as ``writer(values)``, or ``writer(values, step=step)``
        when a step is given.
    Tags are ``f"{prefix}_{unit}/{parameter name}"``, e.g.
    ``entropy_bits/encoder.0.weight``. It returns that dict of floats.

    Which parameters (all conditions apply):
      * ``trainable_only``: only those with ``requires_grad``;
      * ``include`` / ``exclude``: None, a predicate ``(name, parameter) ->
        bool``, or fnmatch patterns on the name (``"encoder.*"`` or a list);
        a parameter is kept if it matches ``include`` (when given) and does
        not match ``exclude``; a filter that matches none of the model's
        parameters at construction warns once (UserWarning);
      * ``skip_biases``: drop parameters whose name ends in ``bias``;
      * ``min_numel``: drop tensors with fewer elements (default 1: only
        empty ones; their entropy would be NaN).
    """

    def __init__(self, model: torch.nn.Module, bins: int = 256, range=None, base: float | None = 2.0,
                 trainable_only: bool = False, *, include=None, exclude=None, skip_biases: bool = False,
                 min_numel: int = 1, prefix: str = "entropy"):
        super().__init__()
        op = "EntropyMonitor"
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{op}: model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 1:
            raise ValueError(f"{op}: min_numel must be an int >= 1, got {min_numel!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"{op}: prefix must be a non-empty string, got {prefix!r}")
        self.__dict__["model"] = model  # not a submodule
        self.bins = bins
        self.range = range
        self.base = base
        self.trainable_only = trainable_only
        self.include = _name_filter(op, "include", include)
        self.exclude = _name_filter(op, "exclude", exclude)
        _warn_unmatched(op, model, self.include, self.exclude, include, exclude)
        self.skip_biases = bool(skip_biases)
        self.min_numel = min_numel
        self.prefix = prefix

    @property
    def unit(self) -> str:
        """"bits", "nats", ... (the unit of every value; part of the logged tags)."""
        return entropy_unit(self.base)

    def selected(self) -> list[tuple[str, torch.Tensor]]:
        """The (name, parameter) pairs the monitor measures, in ``named_parameters`` order."""
        out = []
        for name, p in self.model.named_parameters():
            if p.numel() < self.min_numel or (self.trainable_only and not p.requires_grad):
                continue
            if self.skip_biases and name.rsplit(".", 1)[-1] == "bias":
                continue
            if self.include is not None and not self.include(name, p):
                continue
            if self.exclude is not None and self.exclude(name, p):
                continue
            out.append((name, p))
        return out

    @torch.no_grad()
    def entropies(self) -> tuple[list[str], torch.Tensor]:
        """(names, 1-D tensor of their entropies), on the first parameter's device."""
        named = self.selected()
        if not named:
            return [], torch.empty(0)
        by_device: dict[torch.device, list[int]] = {}
        for i, (_, p) in enumerate(named):
            by_device.setdefault(p.device, []).append(i)
        device = named[0][1].device
        parts, order = [], []
        for indices in by_device.values():
            tensors = [named[i][1].detach() for i in indices]
            h = histogram_entropy_many(tensors, bins=self.bins, range=self.range, base=self.base)
            # DTensor parameters: a replicated result
            parts.append(_nan_where_not_finite(_dtensor.full(h), tensors).to(device))
            order += indices
        values = torch.cat(parts)
        if len(by_device) > 1:  # back to named_parameters order, on the device
            values = values[torch.tensor(order, device=device).argsort()]
        return [n for n, _ in named], values

    def forward(self) -> dict[str, torch.Tensor]:
        """``{parameter name: 0-d entropy tensor}`` in the monitor's unit (``unit``; bits by
        default), on the first parameter's device, no gradient, no host sync; NaN for a
        parameter holding NaN or Inf."""
        names, values = self.entropies()
        return dict(zip(names, values.unbind(0)))

    def tags(self, names: list[str] | None = None) -> list[str]:
        """The logged tag of each parameter name: ``f"{prefix}_{unit}/{name}"``."""
        names = [n for n, _ in self.selected()] if names is None else names
        return [f"{self.prefix}_{self.unit}/{n}" for n in names]

    def log(self, writer, step: int | None = None) -> dict[str, float]:
        """Log every entropy to ``writer`` (see the class docstring) with one host transfer;
        returns ``{tag: value}``."""
        if not (hasattr(writer, "add_scalar") or callable(writer)):
            raise TypeError("EntropyMonitor.log: writer must have add_scalar(tag, value, step) (e.g. a TensorBoard "
                            f"SummaryWriter) or be a callable taking a dict, got {type(writer).__name__}")
        names, values = self.entropies()
        logged = dict(zip(self.tags(names), values.tolist()))  # the one device-to-host transfer
        if hasattr(writer, "add_scalar"):
            for tag, value in logged.items():
                writer.add_scalar(tag, value, step)
        elif step is None:
            writer(logged)
        else:
            writer(logged, step=step)
        return logged

    def extra_repr(self) -> str:
        return (f"bins={self.bins}, range={self.range}, base={self.base} ({self.unit}), "
                f"trainable_only={self.trainable_only}, skip_biases={self.skip_biases}, min_numel={self.min_numel}")
