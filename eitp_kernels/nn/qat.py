"""Quantization-aware training (docs/design.md §2.3).

    FakeQuantLinear / FakeQuantConv1d / FakeQuantConv2d
                      nn.Linear / nn.Conv1d / nn.Conv2d whose weight is
                      fake-quantized per output channel (symmetric int8, dim 0)
                      in every forward; optionally the input activations per
                      tensor. Straight-through gradients.
    prepare_qat(model, quantize_activations=False, activation_symmetric=False, inplace=False)
                      swaps every nn.Linear, nn.Conv1d and nn.Conv2d for its
                      fake-quant version (sharing the model's parameter
                      objects: an optimizer built first still trains it) and
                      warns once, naming them, about other layers with >= 2-D
                      weights it left in float.

The int8 export of a model trained this way is ``eitp_kernels.nn.int8``.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from eitp_kernels.ops.quant import fake_quant_int8


_ACTIVATION_MODES = {None: 0, True: 1, False: 2}  # activation_symmetric -> stored code (None: not quantized)
_ACTIVATION_NAMES = {None: "none", True: "symmetric", False: "affine"}


def _fake_quant_activation(x: torch.Tensor, symmetric: bool | None) -> torch.Tensor:
    if symmetric is None:
        return x
    return fake_quant_int8(x, granularity="tensor", symmetric=symmetric)


def _fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    return fake_quant_int8(weight, granularity="channel", axis=0, symmetric=True)


class _FakeQuantMixin:
    """Activation options shared by the fake-quant layers."""

    def _init_activation(self, quantize_activations: bool, activation_symmetric: bool) -> None:
        self.quantize_activations = bool(quantize_activations)
        self.activation_symmetric = bool(activation_symmetric)

    @property
    def _activation(self) -> bool | None:
        return self.activation_symmetric if self.quantize_activations else None

    def quantized_weight(self) -> torch.Tensor:
        """The weight fake-quantized per output channel (symmetric int8, dim 0)."""
        return _fake_quant_weight(self.weight)

    @classmethod
    def _sharing_parameters(cls, source: nn.Module, constructor_args: dict, **kwargs):
        """A module built (on the meta device, nothing allocated) from
        ``constructor_args`` that shares ``source``'s weight and bias parameters."""
        module = cls(**constructor_args, device="meta", **kwargs)
        module.weight = source.weight
        module.bias = source.bias
        return module

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight=int8 per channel, activations={_ACTIVATION_NAMES[self._activation]}"


class FakeQuantLinear(_FakeQuantMixin, nn.Linear):
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
        """As ``nn.Linear(in_features, out_features, bias, device, dtype)``, plus
        ``quantize_activations`` (fake-quantize the inputs per tensor) and
        ``activation_symmetric`` (their scheme: symmetric, else affine)."""
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_activation(quantize_activations, activation_symmetric)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "FakeQuantLinear":
        """A FakeQuantLinear sharing ``linear``'s weight and bias parameters."""
        return cls._sharing_parameters(linear, {"in_features": linear.in_features,
                                                "out_features": linear.out_features,
                                                "bias": linear.bias is not None}, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in_features) -> (..., out_features) through the fake-quantized weight."""
        return F.linear(_fake_quant_activation(x, self._activation), self.quantized_weight(), self.bias)


def _conv_arguments(conv: nn.Module) -> dict:
    """The constructor arguments of an nn.Conv1d / nn.Conv2d (or a module copying them)."""
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": conv.kernel_size,
            "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups,
            "bias": conv.bias is not None, "padding_mode": conv.padding_mode}


class _FakeQuantConvMixin(_FakeQuantMixin):
    """Forward of the fake-quant convolutions: nn.ConvNd's own ``_conv_forward``
    (padding modes, stride, dilation, groups) on the fake-quantized weight."""

    @classmethod
    def from_conv(cls, conv, **kwargs):
        """A fake-quant convolution sharing ``conv``'s weight and bias parameters."""
        return cls._sharing_parameters(conv, _conv_arguments(conv), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x`` (as nn.ConvNd's forward) with the fake-quantized weight."""
        return self._conv_forward(_fake_quant_activation(x, self._activation), self.quantized_weight(), self.bias)


class FakeQuantConv1d(_FakeQuantConvMixin, nn.Conv1d):
    """``nn.Conv1d`` trained through int8 fake quantization: the weight
    (out, in / groups, k) fake-quantized per output channel (dim 0, symmetric),
    input activations per tensor when ``quantize_activations``; straight-through
    gradients; bias, padding mode, stride, dilation and groups as nn.Conv1d."""

    def __init__(self, *args, quantize_activations: bool = False, activation_symmetric: bool = False,
                 **kwargs) -> None:
        """``nn.ConvNd``'s arguments, plus ``quantize_activations`` and ``activation_symmetric``
        as FakeQuantLinear's."""
        super().__init__(*args, **kwargs)
        self._init_activation(quantize_activations, activation_symmetric)


class FakeQuantConv2d(_FakeQuantConvMixin, nn.Conv2d):
    """``nn.Conv2d`` trained through int8 fake quantization (as FakeQuantConv1d,
    weight (out, in / groups, kh, kw))."""

    def __init__(self, *args, quantize_activations: bool = False, activation_symmetric: bool = False,
                 **kwargs) -> None:
        """``nn.ConvNd``'s arguments, plus ``quantize_activations`` and ``activation_symmetric``
        as FakeQuantLinear's."""
        super().__init__(*args, **kwargs)
        self._init_activation(quantize_activations, activation_symmetric)


_FAKE_QUANT_TYPES = ((nn.Linear, FakeQuantLinear, "from_linear"), (nn.Conv1d, FakeQuantConv1d, "from_conv"),
                     (nn.Conv2d, FakeQuantConv2d, "from_conv"))
_FAKE_QUANT_LAYERS = (FakeQuantLinear, FakeQuantConv1d, FakeQuantConv2d)


def _unconverted_weight_layers(model: nn.Module) -> list[str]:
    """'name (Type)' of every module holding a >= 2-D parameter of its own that is not
    a fake-quant or int8 layer (Conv3d, ConvTranspose, Embedding, MultiheadAttention, ...)."""
    from eitp_kernels.nn.int8 import _Int8Weight  # int8 imports this module

    found = []
    for name, module in model.named_modules():
        if isinstance(module, _FAKE_QUANT_LAYERS + (_Int8Weight,)):
            continue
        if any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            found.append(f"{name or '(root)'} ({type(module).__name__})")
    return found


def prepare_qat(model: nn.Module, *, quantize_activations: bool = False, activation_symmetric: bool = False,
                inplace: bool = False) -> nn.Module:
    """Swap every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` in ``model``
    (itself included) for its fake-quant version sharing its parameters.

    Returns the prepared model: unless ``inplace``, a copy of the module tree
    (``model`` itself keeps its float layers) that holds **the same parameter
    and buffer objects** as ``model``. So an optimizer built on
    ``model.parameters()`` before or after this call trains the prepared
    model, and training it changes ``model``'s weights too; for an
    independent float copy, ``copy.deepcopy(model)`` first.
    ``quantize_activations`` / ``activation_symmetric``: as the fake-quant
    layers' (per-tensor input fake-quant, symmetric or affine).

    Layers with >= 2-D weights of other types (Conv3d, ConvTranspose*,
    Embedding, MultiheadAttention, whose projections it calls without their
    forward, ...) stay in floating point: one UserWarning names them all.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_qat: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        # A new module tree around the same Parameter and buffer objects.
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        model = copy.deepcopy(model, memo=shared)
    kwargs = {"quantize_activations": quantize_activations, "activation_symmetric": activation_symmetric}

    def swap(module: nn.Module) -> nn.Module:
        if isinstance(module, _FAKE_QUANT_LAYERS) or isinstance(module, nn.MultiheadAttention):
            return module
        for float_type, fake_type, build in _FAKE_QUANT_TYPES:
            if isinstance(module, float_type):
                return getattr(fake_type, build)(module, **kwargs)
        for name, child in module.named_children():
            setattr(module, name, swap(child))
        return module

    model = swap(model)
    left = _unconverted_weight_layers(model)
    if left:
        warnings.warn(f"prepare_qat: {len(left)} layer(s) with weights stay in floating point (no fake-quant "
                      f"version; only nn.Linear, nn.Conv1d and nn.Conv2d are converted): {', '.join(left)}",
                      UserWarning, stacklevel=2)
    return model
