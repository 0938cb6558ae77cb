"""int8 export and inference (docs/design.md §2.3).

    export_int8(model) -> state dict: for each fake-quant layer ``name``,
                      ``name.weight_int8`` (int8 codes, the weight's shape),
                      ``name.weight_scale`` (float32, (out,)) and
                      ``name.activation_mode`` (int8 0-d: 0 none, 1 symmetric,
                      2 affine) replace ``name.weight``; everything else as in
                      model.state_dict(). A model without fake-quant layers
                      is an error. This state is the in-memory form of the
                      int8 entries of a ``.eitpz`` file
                      (training.compression.save_compressed accepts it,
                      load_compressed_int8 reads it back).
    load_int8(state, model_or_factory) -> the model with those layers replaced
                      by Int8Linear / Int8Conv1d / Int8Conv2d.
    Int8Linear        int8 codes + scales; dynamic int8 activations, int8 x
                      int8 -> int32 matmul (CPU: oneDNN, _onednn_int8; else
                      torch._int_mm) and a rescale where the shapes qualify,
                      else the dequantized fp32 weight.
    Int8Conv1d/2d     int8 codes + scales; dequantize the weight in forward
                      (outputs bit-identical to the fake-quant convolution).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from eitp_kernels import _dtensor, _onednn_int8
from eitp_kernels.nn.qat import (_ACTIVATION_MODES, _ACTIVATION_NAMES, _FAKE_QUANT_LAYERS, _conv_arguments,
                                 _fake_quant_activation)
from eitp_kernels.ops.quant import dequantize_int8, quantize_int8


# int8 x int8 products accumulate in int32: k * 128 * 127 must stay below 2^31.
_INT_MM_MAX_K = (2**31 - 1) // (128 * 127)
# Smallest weight (k * n elements) for which the CPU int8 path beat the dequantized one.
_CPU_MIN_INT8_WEIGHT = 256 * 256


def _onednn_enabled() -> bool:
    """torch.backends.mkldnn available and enabled (a constant to torch.compile: the
    flag is read when a graph is traced)."""
    return torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)


# What torch.compiler.assume_constant_result(_onednn_enabled) does, without the
# import of torch._dynamo it makes (seconds; import eitp_kernels must not pay it).
# tests/test_import.py checks the marking is the decorator's.
_onednn_enabled._dynamo_marked_constant = True


def int8_matmul_supported(m: int, k: int, n: int, device: torch.device | str) -> bool:
    """Whether ``Int8Linear`` multiplies an (m, k) activation by its (n, k)
    weight with ``torch._int_mm`` (else: the dequantized fp32 weight).

    Both devices: k and n multiples of 8 (torch's CUDA kernel requires it; the
    CPU, where any shape runs, keeps the same alignment) and k <= 132104 (the
    int32 accumulator cannot overflow). CUDA also needs m > 16 (torch._int_mm's
    cuBLAS path). The CPU needs oneDNN enabled (``torch.backends.mkldnn``;
    without it torch._int_mm runs a scalar loop, far slower than the fp32
    path) and a weight of at least 256 x 256 elements (k * n >= 65536): below
    that, quantizing the activations and calling oneDNN cost more than the
    int8 product saves, and the dequantized path was faster on the
    development CPU (hidden 128, batch 449), while at 256 x 256 the int8 path
    was already the faster one. Other devices always fall back.
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda") or m < 1 or k % 8 or n % 8 or not 0 < k <= _INT_MM_MAX_K:
        return False
    if device.type == "cpu":
        return k * n >= _CPU_MIN_INT8_WEIGHT and _onednn_enabled()
    return m > 16


class _Int8Weight(nn.Module):
    """Buffers shared by the int8 layers: ``weight_int8`` (int8 codes, the float
    weight's shape), ``weight_scale`` (float32 per output channel, (out,)) and
    ``activation_mode`` (0-d int8: 0 none, 1 symmetric, 2 affine per tensor);
    ``bias`` stays a float parameter."""

    def _init_int8(self, weight_shape: tuple[int, ...], bias: bool, activation_symmetric: bool | None,
                   device, dtype) -> None:
        self.dtype = dtype
        self.activation_symmetric = activation_symmetric
        self.register_buffer("weight_int8", torch.zeros(weight_shape, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(weight_shape[0], dtype=torch.float32, device=device))
        self.register_buffer("activation_mode",
                             torch.tensor(_ACTIVATION_MODES[activation_symmetric], dtype=torch.int8, device=device))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0], device=device, dtype=dtype)) if bias else None

    def weight(self) -> torch.Tensor:
        """The dequantized weight, ``weight_int8 * weight_scale`` per output channel, in ``dtype``."""
        return dequantize_int8(self.weight_int8, self.weight_scale, granularity="channel", axis=0, dtype=self.dtype)


def _refresh_after_load(module: "Int8Linear", incompatible_keys) -> None:
    module._refresh_code_sums()


class Int8Linear(_Int8Weight):
    """A linear layer stored as int8 codes plus per-output-channel float32 scales.

    int8 path (``matmul="auto"`` when :func:`int8_matmul_supported` holds for
    the (m, k) view of the input, or ``matmul="int8"``): the activations are
    quantized dynamically to int8 codes ``qx`` with scale ``sx``, then

        y[i, j] = sx[i] * weight_scale[j] * (qx @ weight_int8^T)[i, j] + bias[j]

    with ``qx @ weight_int8^T`` an exact int32 product (CPU, two rows or more:
    oneDNN's u8 x s8 kernel where its probe passes, ``eitp_kernels._onednn_int8``,
    which keeps a packed copy of the int8 weight from the first call on, one
    more byte per weight; else ``torch._int_mm``: the same value either way) and
    the rescale done in place on its fp32 conversion (computed in float32,
    returned in the layer's dtype). ``sx`` is per row (per token: quantize_int8
    granularity="channel", axis=0 on the 2-D view, symmetric) for layers
    trained without activation quantization, or per tensor with the trained
    mode (symmetric, or affine with ``- zero_point * sum_k weight_int8[j, k]``)
    otherwise, so those codes are exactly the fake-quant model's. The output
    differs from the fp32 path by the activation rounding only (per-row
    symmetric: at most sx[i] / 2 per input element).

    fp32 path (``matmul="dequantize"``, shapes that do not qualify, inputs
    that require grad, or an input dtype other than the layer's): ``linear(
    a(x), dequantize_int8(weight_int8, weight_scale, ...), bias)`` with the
    same activation fake-quant as the FakeQuantLinear it was exported from: the
    outputs are bit-identical to the fake-quant model's. It dequantizes the
    weight on every call (no fp32 copy is kept).
    """

    MATMULS = ("auto", "int8", "dequantize")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 activation_symmetric: bool | None = None, matmul: str = "auto", device=None,
                 dtype=torch.float32) -> None:
        super().__init__()
        if matmul not in self.MATMULS:
            raise ValueError(f"Int8Linear: matmul must be one of {self.MATMULS}, got {matmul!r}")
        self.in_features, self.out_features, self.matmul = in_features, out_features, matmul
        self._init_int8((out_features, in_features), bias, activation_symmetric, device, dtype)
        # sum_k weight_int8[j, k], for the affine zero-point correction; rebuilt after loading.
        self.register_buffer("_weight_code_sums", None, persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self._onednn_weight: _onednn_int8.PackedWeight | None = None  # the CPU int8 path's packed weight

    def _refresh_code_sums(self) -> None:
        affine = self.activation_symmetric is False
        self._weight_code_sums = self.weight_int8.sum(dim=1, dtype=torch.int32) if affine else None

    def uses_int8_matmul(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` takes the int8 path (see the class docstring)."""
        if self.matmul == "dequantize" or x.dtype != self.dtype or x.shape[-1] != self.in_features:
            return False
        if torch.is_grad_enabled() and x.requires_grad:
            return False
        if self.matmul == "int8":
            return True
        m = x.numel() // self.in_features if self.in_features else 0
        return int8_matmul_supported(m, self.in_features, self.out_features, x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_int8_matmul(x) and x.numel():
            return self._int8_forward(x)
        return F.linear(_fake_quant_activation(x, self.activation_symmetric), self.weight(), self.bias)

    def _int8_forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.activation_symmetric is None:
            qx, sx, _ = quantize_int8(rows, granularity="channel", axis=0, symmetric=True)
            sx = sx.unsqueeze(1)
        else:
            qx, sx, zero_point = quantize_int8(rows, granularity="tensor", symmetric=self.activation_symmetric)
        # Rescale in place on the fp32 product: one (m, n) allocation, three in-place
        # passes (an addcmul of the int32 product by an (m, n) scale was much slower at m=512).
        y = self._int8_product(qx, zero_point if self.activation_symmetric is False else 0)
        y.mul_(sx).mul_(self.weight_scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y.to(self.dtype).reshape(*x.shape[:-1], self.out_features)

    def _int8_product(self, qx: torch.Tensor, zero_point) -> torch.Tensor:
        """float32 (m, n): the exact int32 sum_k (qx - zero_point) weight_int8^T,
        converted once: oneDNN on CPUs where it applies (_onednn_int8), else torch._int_mm."""
        m, k = qx.shape
        if qx.device.type == "cpu" and not torch.compiler.is_compiling() and _onednn_int8.applies(m, k):
            if getattr(self, "_onednn_weight", None) is None:  # None too in a layer pickled by an older release
                self._onednn_weight = _onednn_int8.PackedWeight()
            return _onednn_int8.product(qx, zero_point, self._onednn_weight.of(self.weight_int8))
        acc = torch._int_mm(qx, self.weight_int8.t())
        if self.activation_symmetric is False:
            if self._weight_code_sums is None or self._weight_code_sums.device != acc.device:
                self._refresh_code_sums()
            acc = acc - zero_point * self._weight_code_sums
        return acc.to(torch.float32)

    def __getstate__(self):
        # The packed oneDNN weight is an opaque tensor (neither copied nor pickled): rebuilt on use.
        state = self.__dict__.copy()
        state["_onednn_weight"] = None
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"activations={_ACTIVATION_NAMES[self.activation_symmetric]}, matmul={self.matmul}")


class _Int8ConvNd(_Int8Weight):
    """An int8 convolution: the weight stored as int8 codes (out, in / groups,
    *kernel) with per-output-channel float32 scales, dequantized in every
    forward and applied with the geometry (stride, padding and padding mode,
    dilation, groups) of the nn.ConvNd it replaces, after the same activation
    fake-quant: outputs are bit-identical to the fake-quant convolution's.
    The int8 storage saves memory and file size; the arithmetic is float."""

    _float_type: type = nn.Conv2d
    _conv = staticmethod(F.conv2d)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 activation_symmetric: bool | None = None, device=None, dtype=torch.float32) -> None:
        super().__init__()
        # nn.ConvNd normalizes and checks the geometry; only its attributes are kept.
        geometry = self._float_type(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                    bias, padding_mode, device="meta")
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(self, name, getattr(geometry, name))
        self._init_int8(tuple(geometry.weight.shape), bias, activation_symmetric, device, dtype)

    @classmethod
    def from_conv(cls, conv: nn.Module, activation_symmetric: bool | None = None) -> "_Int8ConvNd":
        """An int8 convolution with ``conv``'s geometry (codes and scales still to be loaded)."""
        return cls(**_conv_arguments(conv), activation_symmetric=activation_symmetric, device=conv.weight.device,
                   dtype=conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _fake_quant_activation(x, self.activation_symmetric)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        return self._conv(x, self.weight(), self.bias, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, padding_mode={self.padding_mode}, "
                f"activations={_ACTIVATION_NAMES[self.activation_symmetric]}")


class Int8Conv1d(_Int8ConvNd):
    """An int8 ``nn.Conv1d`` (see _Int8ConvNd): weight codes (out, in / groups, k)."""

    _float_type = nn.Conv1d
    _conv = staticmethod(F.conv1d)


class Int8Conv2d(_Int8ConvNd):
    """An int8 ``nn.Conv2d`` (see _Int8ConvNd): weight codes (out, in / groups, kh, kw)."""

    _float_type = nn.Conv2d
    _conv = staticmethod(F.conv2d)


def _int8_type_for(module: nn.Module):
    """(Int8 layer class, its constructor from ``module``) for an nn.Linear / nn.Conv1d / nn.Conv2d, else None."""
    if isinstance(module, nn.Linear):
        return Int8Linear, lambda act: Int8Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                                  activation_symmetric=act, device=module.weight.device,
                                                  dtype=module.weight.dtype)
    for float_type, int8_type in ((nn.Conv1d, Int8Conv1d), (nn.Conv2d, Int8Conv2d)):
        if isinstance(module, float_type):
            return int8_type, lambda act: int8_type.from_conv(module, act)
    return None


def export_int8(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each fake-quant layer's weight replaced by int8 codes and
    scales (see the section comment above for the keys). Raises ValueError
    for a model without fake-quant layers (never prepared with prepare_qat):
    its state dict would hold no int8 codes at all.

    FSDP2 (``fully_shard``) or other DTensor models: a collective (every rank
    calls it). Each rank quantizes its shard of the weights (docs/design.md
    §3.3) and only the codes, scales and the other entries are gathered: every
    rank gets the full state as plain tensors, equal to the unwrapped model's."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_int8: model must be an nn.Module, got {type(model).__name__}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _FAKE_QUANT_LAYERS)]
    if not layers:
        raise ValueError(f"export_int8: {type(model).__name__} has no fake-quant layers; prepare it with "
                         "eitp_kernels.nn.prepare_qat(model) (and train it) before exporting")
    state = dict(model.state_dict())
    for name, module in layers:
        prefix = f"{name}." if name else ""
        with torch.no_grad():
            q, scale, _ = quantize_int8(module.weight, granularity="channel", axis=0, symmetric=True)
        del state[prefix + "weight"]
        state[prefix + "weight_int8"] = q.contiguous()
        state[prefix + "weight_scale"] = scale
        state[prefix + "activation_mode"] = torch.tensor(_ACTIVATION_MODES[module._activation], dtype=torch.int8)
    return {key: _dtensor.full(value) for key, value in state.items()}


def _check_int8_entry(state, prefix: str, layer: nn.Module) -> bool | None:
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
    expected = tuple(layer.weight.shape)
    layer_name = prefix.rstrip('.') or '(root)'
    if codes.dtype != torch.int8:
        raise TypeError(f"load_int8: {prefix}weight_int8 must have dtype int8, got {codes.dtype}")
    if codes.dim() != len(expected) and codes.dim() in (2, 3, 4):
        kind = {2: "nn.Linear", 3: "nn.Conv1d", 4: "nn.Conv2d"}[codes.dim()]
        raise ValueError(f"load_int8: {prefix}weight_int8 is {codes.dim()}-D (the codes of an {kind}), but the "
                         f"model's layer {layer_name} is {type(layer).__name__}: expected an {kind} there")
    if tuple(codes.shape) != expected:
        raise ValueError(f"load_int8: {prefix}weight_int8 has shape {tuple(codes.shape)}, but the model's layer "
                         f"{layer_name} needs {expected}")
    if not scale.dtype.is_floating_point:
        raise TypeError(f"load_int8: {prefix}weight_scale must have a float dtype, got {scale.dtype}")
    if tuple(scale.shape) != expected[:1]:
        raise ValueError(f"load_int8: {prefix}weight_scale has shape {tuple(scale.shape)}, expected {expected[:1]}")
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
    """A model from ``export_int8`` output (or ``load_compressed_int8``'s file):
    ``model_or_factory`` (a module with the original float architecture, or a
    callable building one) gets every layer named in ``state`` by
    ``*.weight_int8`` replaced by an Int8Linear (nn.Linear), Int8Conv1d
    (nn.Conv1d) or Int8Conv2d (nn.Conv2d); then the state is loaded strictly.

    Each exported layer's entries are checked first (``weight_int8`` int8 of the
    layer's weight shape, ``weight_scale`` float (out,) finite and > 0,
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
    if any(_dtensor.is_dtensor(p) for p in model.parameters()):
        raise ValueError("load_int8: the model's parameters are DTensors (FSDP2 fully_shard or tensor parallel); "
                         "int8 layers are not sharded: pass the unwrapped architecture (or a factory building it) "
                         "and every rank gets the whole int8 model")
    suffix = "weight_int8"
    for key in sorted(k for k in state if k.endswith(suffix)):
        name = key[: -len(suffix)].rstrip(".")
        if key != (f"{name}.{suffix}" if name else suffix):
            raise ValueError(f"load_int8: unexpected key {key!r} (expected '<layer>.weight_int8')")
        try:
            old = model.get_submodule(name) if name else model
        except AttributeError:
            raise ValueError(f"load_int8: state has {key!r}, but the model has no submodule {name!r}") from None
        target = _int8_type_for(old)
        if target is None:
            raise ValueError(f"load_int8: {name or 'the model'} is {type(old).__name__}, expected an nn.Linear, "
                             "nn.Conv1d or nn.Conv2d")
        prefix = f"{name}." if name else ""
        new = target[1](_check_int8_entry(state, prefix, old))
        if not name:
            model = new
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    model.load_state_dict(state, strict=True)
    return model
