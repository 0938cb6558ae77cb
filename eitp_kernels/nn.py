"""Modules (losses, QAT layers, monitors) built on the fused ops."""
from __future__ import annotations

import copy
import fnmatch
import math
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from eitp_kernels.ops.coherence import coherence_loss
from eitp_kernels.ops.entropy import histogram_entropy_many
from eitp_kernels.ops.quant import dequantize_int8, fake_quant_int8, quantize_int8


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


class EntropyMonitor(torch.nn.Module):
    """Histogram entropy of the parameters of a model, from one call; logs itself.

    ``EntropyMonitor(model, bins=256, base=2.0)()`` returns
    ``{parameter name: 0-d entropy tensor}`` computed on the parameters'
    device by one ``histogram_entropy_many`` call per device (no host sync,
    no gradient). Units: **bits by default** (``base=2``), while
    ``histogram_entropy`` itself defaults to nats (``base=None``); ``unit``
    names the monitor's (``entropy_unit``) and it is part of every logged tag.
    Each parameter gets its own automatic range unless ``range`` is given.
    The model is referenced, not registered as a submodule, so the monitor
    holds no parameters of its own.

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
        not match ``exclude``;
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
            h = histogram_entropy_many([named[i][1].detach() for i in indices], bins=self.bins, range=self.range,
                                       base=self.base)
            parts.append(h.to(device))
            order += indices
        values = torch.cat(parts)
        if len(by_device) > 1:  # back to named_parameters order, on the device
            values = values[torch.tensor(order, device=device).argsort()]
        return [n for n, _ in named], values

    def forward(self) -> dict[str, torch.Tensor]:
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


# --------------------------------------------------------------------------
# Quantization-aware training (int8, DESIGN.md section 2.3):
#
#     FakeQuantLinear   nn.Linear whose weight is fake-quantized per output
#                       channel (symmetric int8) in every forward; optionally the
#                       input activations per tensor. Straight-through gradients.
#     prepare_qat(model, quantize_activations=False, activation_symmetric=False, inplace=False)
#                       swaps every nn.Linear for a FakeQuantLinear.
#     export_int8(model) -> state dict: for each FakeQuantLinear ``name``,
#                       ``name.weight_int8`` (int8 codes, (out, in)),
#                       ``name.weight_scale`` (float32, (out,)) and
#                       ``name.activation_mode`` (int8 0-d: 0 none, 1 symmetric,
#                       2 affine) replace ``name.weight``; everything else as in
#                       model.state_dict().
#     load_int8(state, model_or_factory) -> the model with those layers replaced
#                       by Int8Linear, whose outputs equal the fake-quantized
#                       model's (the dequantized weight is the same bits).
#     Int8Linear        int8 codes + scales; dequantizes in forward.
# --------------------------------------------------------------------------
_ACTIVATION_MODES = {None: 0, True: 1, False: 2}  # activation_symmetric -> stored code (None: not quantized)


def _fake_quant_activation(x: torch.Tensor, symmetric: bool | None) -> torch.Tensor:
    if symmetric is None:
        return x
    return fake_quant_int8(x, granularity="tensor", symmetric=symmetric)


class FakeQuantLinear(nn.Linear):
    """``nn.Linear`` trained through int8 fake quantization.

    Forward: ``linear(a(x), fake_quant_int8(weight, granularity="channel",
    axis=0), bias)`` where ``a`` is the identity, or a per-tensor fake-quant
    of the input activations when ``quantize_activations`` (symmetric or
    affine by ``activation_symmetric``). Gradients: straight-through.
    The bias stays in floating point.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 quantize_activations: bool = False, activation_symmetric: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.quantize_activations = bool(quantize_activations)
        self.activation_symmetric = bool(activation_symmetric)

    @property
    def _activation(self) -> bool | None:
        return self.activation_symmetric if self.quantize_activations else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "FakeQuantLinear":
        """A FakeQuantLinear sharing ``linear``'s weight and bias parameters."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     device="meta", **kwargs)
        module.weight = linear.weight
        module.bias = linear.bias
        return module

    def quantized_weight(self) -> torch.Tensor:
        return fake_quant_int8(self.weight, granularity="channel", axis=0, symmetric=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_fake_quant_activation(x, self._activation), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        act = "none" if self._activation is None else ("symmetric" if self._activation else "affine")
        return super().extra_repr() + f", weight=int8 per channel, activations={act}"


class Int8Linear(nn.Module):
    """A linear layer stored as int8 codes plus per-output-channel float32 scales.

    Forward: ``linear(a(x), dequantize_int8(weight_int8, weight_scale,
    granularity="channel", axis=0, dtype=dtype), bias)`` with the same
    activation fake-quant as the FakeQuantLinear it was exported from.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 activation_symmetric: bool | None = None, device=None, dtype=torch.float32) -> None:
        super().__init__()
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        self.activation_symmetric = activation_symmetric
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("activation_mode",
                             torch.tensor(_ACTIVATION_MODES[activation_symmetric], dtype=torch.int8, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    def weight(self) -> torch.Tensor:
        return dequantize_int8(self.weight_int8, self.weight_scale, granularity="channel", axis=0, dtype=self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_fake_quant_activation(x, self.activation_symmetric), self.weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def prepare_qat(model: nn.Module, *, quantize_activations: bool = False, activation_symmetric: bool = False,
                inplace: bool = False) -> nn.Module:
    """Swap every ``nn.Linear`` in ``model`` (itself included) for a FakeQuantLinear
    sharing its parameters. Returns the prepared model (a deep copy unless
    ``inplace``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_qat: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    kwargs = {"quantize_activations": quantize_activations, "activation_symmetric": activation_symmetric}

    def swap(module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Linear) and not isinstance(module, FakeQuantLinear):
            return FakeQuantLinear.from_linear(module, **kwargs)
        for name, child in module.named_children():
            setattr(module, name, swap(child))
        return module

    return swap(model)


def export_int8(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each FakeQuantLinear's weight replaced by int8 codes and scales
    (see the module docstring for the keys)."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if not isinstance(module, FakeQuantLinear):
            continue
        prefix = f"{name}." if name else ""
        with torch.no_grad():
            q, scale, _ = quantize_int8(module.weight, granularity="channel", axis=0, symmetric=True)
        del state[prefix + "weight"]
        state[prefix + "weight_int8"] = q.contiguous()
        state[prefix + "weight_scale"] = scale
        state[prefix + "activation_mode"] = torch.tensor(_ACTIVATION_MODES[module._activation], dtype=torch.int8)
    return state


def _check_int8_entry(state, prefix: str, linear: nn.Linear) -> bool | None:
    """Validate one exported layer's entries (dtypes, shapes, devices, scale and
    mode values) before anything is built or copied; return its activation mode.
    Only shapes and dtypes are read before the small scale/mode tensors' values,
    so a tensor claiming a huge shape is rejected without being materialized."""
    def get(key, what):
        if prefix + key not in state:
            raise ValueError(f"load_int8: state has {prefix}weight_int8 but no {prefix}{key} ({what})")
        value = state[prefix + key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"load_int8: {prefix}{key} must be a tensor, got {type(value).__name__}")
        if value.device.type == "meta":
            raise ValueError(f"load_int8: {prefix}{key} is on the meta device (it holds no data)")
        return value

    codes = get("weight_int8", "int8 codes")
    scale = get("weight_scale", "per-output-channel float scales")
    mode = get("activation_mode", "0-d int8 activation mode")
    out_f, in_f = linear.out_features, linear.in_features
    if codes.dtype != torch.int8:
        raise TypeError(f"load_int8: {prefix}weight_int8 must have dtype int8, got {codes.dtype}")
    if tuple(codes.shape) != (out_f, in_f):
        raise ValueError(f"load_int8: {prefix}weight_int8 has shape {tuple(codes.shape)}, but the model's layer "
                         f"{prefix.rstrip('.') or '(root)'} needs ({out_f}, {in_f})")
    if not scale.dtype.is_floating_point:
        raise TypeError(f"load_int8: {prefix}weight_scale must have a float dtype, got {scale.dtype}")
    if tuple(scale.shape) != (out_f,):
        raise ValueError(f"load_int8: {prefix}weight_scale has shape {tuple(scale.shape)}, expected ({out_f},)")
    if mode.dtype.is_floating_point or mode.dtype.is_complex or mode.dtype == torch.bool:
        raise TypeError(f"load_int8: {prefix}activation_mode must have an integer dtype, got {mode.dtype}")
    if mode.dim() != 0:
        raise ValueError(f"load_int8: {prefix}activation_mode must be 0-d, got shape {tuple(mode.shape)}")
    modes = {v: k for k, v in _ACTIVATION_MODES.items()}
    m = int(mode)
    if m not in modes:
        raise ValueError(f"load_int8: {prefix}activation_mode must be one of {sorted(modes)}, got {m}")
    if scale.numel() and not bool(((scale > 0) & torch.isfinite(scale)).all()):
        raise ValueError(f"load_int8: {prefix}weight_scale must be finite and > 0 everywhere")
    return modes[m]


def load_int8(state: dict[str, torch.Tensor], model_or_factory: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """A model from ``export_int8`` output: ``model_or_factory`` (a module with
    the original architecture, or a callable building one) gets every layer
    named in ``state`` by ``*.weight_int8`` replaced by an Int8Linear; then the
    state is loaded strictly.

    Each exported layer's entries are checked first (``weight_int8`` int8 of the
    layer's (out, in) shape, ``weight_scale`` float (out,) finite and > 0,
    ``activation_mode`` 0-d integer in {0, 1, 2}): a hostile or damaged state
    raises TypeError/ValueError naming the key. Shapes come from the model,
    never from the state, so nothing the state claims is allocated."""
    if not isinstance(state, Mapping):
        raise TypeError(f"load_int8: state must be a dict of tensors (export_int8 output), got {type(state).__name__}")
    for key in state:
        if not isinstance(key, str):
            raise TypeError(f"load_int8: state keys must be strings, got {key!r}")
    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_int8: model_or_factory must be an nn.Module or build one, got {type(model).__name__}")
    suffix = "weight_int8"
    for key in sorted(k for k in state if k.endswith(suffix)):
        name = key[: -len(suffix)].rstrip(".")
        if key != (f"{name}.{suffix}" if name else suffix):
            raise ValueError(f"load_int8: unexpected key {key!r} (expected '<layer>.weight_int8')")
        try:
            old = model.get_submodule(name) if name else model
        except AttributeError:
            raise ValueError(f"load_int8: state has {key!r}, but the model has no submodule {name!r}") from None
        if not isinstance(old, nn.Linear):
            raise ValueError(f"load_int8: {name or 'the model'} is {type(old).__name__}, expected an nn.Linear")
        prefix = f"{name}." if name else ""
        activation_symmetric = _check_int8_entry(state, prefix, old)
        new = Int8Linear(old.in_features, old.out_features, bias=old.bias is not None,
                         activation_symmetric=activation_symmetric, device=old.weight.device, dtype=old.weight.dtype)
        if not name:
            model = new
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    model.load_state_dict(state, strict=True)
    return model


class CoherenceLoss(nn.Module):
    """``coherence_loss`` as a module: ``forward(x, y=None)``; options as the function.

    ``L2 = diag_weight * sum_i (R_ii - 1)^2 + offdiag_weight * sum_{i!=j} R_ij^2``
    with R the column correlations (biased variance, ``eps``) of x (and y);
    returns ``sqrt(L2)`` unless ``squared``. Defaults give the EIT-P coherence
    term ``||R - I||_F``.

    ``process_group`` (e.g. ``torch.distributed.group.WORLD`` under DDP):
    statistics over the concatenation of the ranks' batches, the same loss on
    every rank; each rank's input receives ``world_size * dL/dx_rank``, so
    DDP's averaging of parameter gradients gives exactly single-process
    training on the global batch (see ``coherence_loss``).
    """

    def __init__(self, *, diag_weight: float = 1.0, offdiag_weight: float = 1.0, squared: bool = False,
                 eps: float = 1e-5, process_group=None):
        super().__init__()
        self.diag_weight, self.offdiag_weight = diag_weight, offdiag_weight
        self.squared, self.eps, self.process_group = squared, eps, process_group

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return coherence_loss(x, y, diag_weight=self.diag_weight, offdiag_weight=self.offdiag_weight,
                              squared=self.squared, eps=self.eps, process_group=self.process_group)

    def extra_repr(self) -> str:
        return (f"diag_weight={self.diag_weight}, offdiag_weight={self.offdiag_weight}, "
                f"squared={self.squared}, eps={self.eps}")


class BarlowTwinsLoss(CoherenceLoss):
    """Barlow Twins redundancy reduction: ``forward(z1, z2)``.

    ``sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i!=j} C_ij^2`` with ``C`` the
    cross-correlation of the two embeddings batch-normalized without affine
    (biased variance, eps 1e-5), as in Zbontar et al. 2021 (lambda = 0.0051).
    ``z1`` and ``z2`` are (N, D) (or (N, *), flattened) with the same N and the
    same width D: C is square, its diagonal pairs feature i of one view with
    feature i of the other. Different widths raise ValueError (the general
    ``coherence_loss`` keeps its D x D' form for that). Dimensionless, float32
    (float64 for float64 input). ``process_group``: as ``CoherenceLoss``.
    """

    def __init__(self, lambda_offdiag: float = 0.0051, *, eps: float = 1e-5, process_group=None):
        super().__init__(diag_weight=1.0, offdiag_weight=lambda_offdiag, squared=True, eps=eps,
                         process_group=process_group)
        self.lambda_offdiag = lambda_offdiag

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if isinstance(z1, torch.Tensor) and isinstance(z2, torch.Tensor) and z1.dim() >= 1 and z2.dim() >= 1:
            width1, width2 = math.prod(z1.shape[1:]), math.prod(z2.shape[1:])
            if width1 != width2:
                raise ValueError(
                    f"BarlowTwinsLoss: z1 and z2 must have the same feature width (the two views' embeddings), "
                    f"got z1 of shape {tuple(z1.shape)} ({width1} features) and z2 of shape {tuple(z2.shape)} "
                    f"({width2} features); coherence_loss(x, y) takes different widths")
        return super().forward(z1, z2)
