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
                      by Int8Linear / Int8Conv1d / Int8Conv2d, each linear
                      layer's paths decided (Int8Linear.plan).
    int8_summary(model) -> the paths each int8 layer takes, one line per layer.
    Int8Linear        int8 codes + scales; per batch size and device: dynamic
                      int8 activations, int8 x int8 -> int32 product (CPU:
                      our AVX-512 VNNI kernel for 1-64 rows (more for
                      small weights), else fbgemm for
                      2-16 rows, oneDNN for more, torch._int_mm; CUDA:
                      torch._int_mm) and a rescale where that is faster;
                      on a GPU for 1-16 rows the weight-only int8 kernel
                      (eitp_kernels.ops.int8_linear); else the cached
                      dequantized weight.
    Int8Conv1d/2d     int8 codes + scales; the cached dequantized weight
                      (outputs bit-identical to the fake-quant convolution).

One file of about 600 lines: the layers, their per-shape plan and the export
and load that decide it share the int8 product rule (int8_matmul_supported)
and the cached-weight invalidation; split apart, each would import the rest.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from eitp_kernels import _backends, _dtensor, _fbgemm_int8, _int8_gemv, _onednn_int8
from eitp_kernels.nn.qat import (_ACTIVATION_MODES, _ACTIVATION_NAMES, _FAKE_QUANT_LAYERS, _conv_arguments,
                                 _fake_quant_activation)
from eitp_kernels.ops import int8_linear, quant
from eitp_kernels.ops.quant import dequantize_int8, quantize_int8


# int8 x int8 products accumulate in int32: k * 128 * 127 must stay below 2^31.
_INT_MM_MAX_K = (2**31 - 1) // (128 * 127)
# "Few rows": m <= FEW_ROWS is a GEMV-shaped call (CUDA's torch._int_mm needs m > 16).
FEW_ROWS = 16
# The CPU rule of int8_matmul_supported with fbgemm's and oneDNN's products: the int8 path
# needs, for few rows, a weight of at least _CPU_MIN_INT8_WEIGHT_FEW_ROWS elements (the GEMV
# reads 1 byte per weight instead of 4), for more rows at least _CPU_MIN_INT8_WEIGHT elements
# and _CPU_MIN_INT8_MACS multiply-adds.
_CPU_MIN_INT8_WEIGHT_FEW_ROWS = 1 << 20
_CPU_MIN_INT8_WEIGHT = 1 << 16
_CPU_MIN_INT8_MACS = 1 << 23
# With our product (the row quantization in the same op): any batch for a weight of at least
# _OWN_ANY_BATCH_WEIGHT elements, _OWN_MIN_ROWS rows or more for one of _CPU_MIN_INT8_WEIGHT,
# and _OWN_MIN_MACS multiply-adds for one of _OWN_MIN_WEIGHT.
_OWN_ANY_BATCH_WEIGHT = 1 << 18
_OWN_MIN_ROWS = 4
_OWN_MIN_WEIGHT = 1 << 15
_OWN_MIN_MACS = 1 << 21

# The paths a layer's forward takes (Int8Linear.plan, int8_summary).
INT8 = "int8"  # dynamic int8 activations x int8 weight, exact int32 product, rescale
WEIGHT_ONLY = "weight-only int8"  # float activations x int8 weight dequantized in registers (GPU kernel)
DEQUANTIZED = "dequantized"  # F.linear with the cached dequantized weight


def _onednn_enabled() -> bool:
    """torch.backends.mkldnn available and enabled (a constant to torch.compile: the
    flag is read when a graph is traced)."""
    return torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)


# What torch.compiler.assume_constant_result(_onednn_enabled) does, without the
# import of torch._dynamo it makes (seconds; import eitp_kernels must not pay it).
# tests/test_import.py checks the marking is the decorator's.
_onednn_enabled._dynamo_marked_constant = True


def int8_matmul_supported(m: int, k: int, n: int, device: torch.device | str, *, epilogue: bool = True) -> bool:
    """Whether ``Int8Linear`` (``matmul="auto"``) multiplies an (m, k) activation
    by its (n, k) weight in int8 (else: weight-only int8 on a GPU for m <= 16,
    the cached dequantized weight otherwise). ``epilogue``: the layer can take
    our CPU product's epilogue (float32, symmetric activations: see
    :func:`cpu_int8_product`).

    Both devices: k and n multiples of 8 (torch's CUDA kernel requires it; the
    CPU, where any shape runs, keeps the same alignment) and k <= 132104 (the
    int32 accumulator cannot overflow). CUDA: m > 16 (torch._int_mm's cuBLAS
    path; fewer rows take the weight-only kernel). CPU: oneDNN enabled
    (``torch.backends.mkldnn``; without it torch._int_mm runs a scalar loop)
    and enough work for the int8 product's saving to pay for quantizing the
    activations and the rescale, against the cached dequantized weight.

    With our product (``epilogue`` and ``eitp_kernels._int8_gemv`` available):
    any m for k * n >= 2^18, m >= 4 for k * n >= 2^16, m * k * n >= 2^21 for
    k * n >= 2^15. Deciding figures (whole layer, int8 time / dequantized
    time, 10th percentiles, 1 then 2 threads, idle machine; ``python
    benchmarks/native/int8_path_rule.py --threads 1`` and ``--threads 2``
    ``--shapes 64x512,256x256,512x512,768x768 --rows 1,4,8,16,17,32,64,256``):
    512^2 (2^18) m = 1 0.56 / 0.64, every m up to 256 0.29-0.39; 256^2 (2^16)
    m = 1 1.27 / 1.23, m = 4 0.83 / 0.79, m = 256 0.40 / 0.61; 64 x 512
    (2^15) m = 16 0.86 / 1.08, m = 32 0.69 / 0.96, m = 64 (2^21) 0.58 /
    0.76; 512 x 10 (n = 10 is refused anyway) loses at every m up to 256.

    Otherwise (fbgemm's and oneDNN's products): for m <= 16, k * n >= 2^20
    (1024 x 1024: the GEMV reads 1 byte per weight instead of 4); for m >
    16, k * n >= 2^16 and m * k * n >= 2^23. Deciding figures (1 thread on
    the shared 2-core development VM, 10th percentiles, whole layer, int8
    time / dequantized time; ``python benchmarks/native/int8_path_rule.py
    --threads 1``, before our product): m = 1: 768^2 1.01, 1024^2 0.80; m =
    8: 512^2 1.36, 1024^2 0.40; m = 17: 512^2 1.14 (4.5e6 multiply-adds),
    768^2 0.62 (1.0e7); m = 64: 256^2 1.50 (4.2e6), 512^2 0.79 (1.7e7); 64 x
    512 loses up to m = 64 (2.1e6). Other devices: never.
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda") or m < 1 or k % 8 or n % 8 or not 0 < k <= _INT_MM_MAX_K:
        return False
    if device.type == "cpu":
        weight = k * n
        if epilogue and _int8_gemv.applies(k):
            enough = (weight >= _OWN_ANY_BATCH_WEIGHT or (weight >= _CPU_MIN_INT8_WEIGHT and m >= _OWN_MIN_ROWS)
                      or (weight >= _OWN_MIN_WEIGHT and m * weight >= _OWN_MIN_MACS))
        elif m <= FEW_ROWS:
            enough = weight >= _CPU_MIN_INT8_WEIGHT_FEW_ROWS
        else:
            enough = weight >= _CPU_MIN_INT8_WEIGHT and m * weight >= _CPU_MIN_INT8_MACS
        return enough and _onednn_enabled()
    return m > FEW_ROWS


# The CPU int8 products (cpu_int8_product).
OWN, FBGEMM, ONEDNN, INT_MM = "eitp int8_linear_rows", "fbgemm", "oneDNN", "torch._int_mm"
_CPU_OWN_MAX_ROWS = 64  # any number of rows for a weight of at most _CPU_OWN_ANY_ROWS_WEIGHT elements
_CPU_OWN_ANY_ROWS_WEIGHT = 1 << 20
_CPU_FBGEMM_ROWS = (2, 16)


def cpu_int8_product(m: int, k: int, n: int, epilogue: bool = True) -> str:
    """Which exact int8 product the CPU int8 path of ``Int8Linear`` runs for an
    (m, k) activation and an (n, k) weight: OWN (this library's AVX-512 VNNI
    kernel with the layer's whole epilogue, ``_int8_gemv``; only where the
    caller can take its ``epilogue``: symmetric activations, a float32
    layer), FBGEMM (fbgemm's packed product, ``_fbgemm_int8``), ONEDNN
    (oneDNN's packed u8 x s8 product, ``_onednn_int8``) or INT_MM
    (``torch._int_mm``: oneDNN's GEMV for one row, no packing). All give the
    same value; OWN, fbgemm and oneDNN each only where its probe passed.

    OWN for 1-64 rows: the layer's forward (one op: ``int8_linear_float_rows``
    for per-row activations) against quantize_dynamic's Linear, median of
    per-round time ratios, idle machine (python
    benchmarks/native/int8_linear_steps.py --threads 1 --no-steps --repeats
    300, thread CPU time; ``--threads 2``: wall time, OpenMP threads), m = 1,
    8, 64, 512 (512 rows of a 3072 or 4096 layer take oneDNN's product, see
    below). 1 thread: 4096 x 4096 (5 runs) 0.71-0.83, 0.83-1.04 (one run
    of five over 1: the weight comes from DRAM there), 0.83-0.92, 0.85-0.90;
    3072 x 3072 (2 runs) 0.85-0.89, 0.91-0.96, 0.84, 0.92; 1024 x 1024 (2
    runs) 0.61-0.68, 0.77, 0.90-0.93, 0.83-0.87. 2 threads: 4096 x 4096 (2
    runs) 0.73-0.75, 0.85-0.95, 0.85-0.88, 0.88-0.93; 3072 x 3072 0.84, 0.89,
    0.87, 0.92; 1024 x 1024 (2 runs) 0.73-0.75, 0.69-0.71, 0.86-0.88,
    0.91-0.95 (with parallel_chunks' pool instead of OpenMP: 1.05-1.16 at
    1024 x 1024 m = 8 and 64, 1.07-1.21 at 4096 x 4096 m = 8). More rows
    only for weights of at most 2^20 elements (1024 x 1024 at m = 512: ours with its epilogue 3366 and 2873 against oneDNN's 3292 and
    3049 plus its epilogue, 2 x 66-82; at 4096 x 4096 51387 and 43872
    against 43481 and 42975 plus 689-1042: no clear gain). The others:
    deciding figures (1 thread, 10th percentiles of the thread's CPU time, us, each product with the weight scales applied,
    ``python benchmarks/native/int8_linear_steps.py --threads 1`` on the
    shared 2-core development VM, load ~7): 1024 x 1024: m = 1 fbgemm 82,
    oneDNN 105, torch._int_mm 41; m = 8: 131, 179, 173; m = 512 fbgemm 4275,
    oneDNN 3484. 4096 x 4096: m = 1: 1096, 1750, 951; m = 8: 1253, 1779,
    6948; m = 64: 6572, 6244, 11755; m = 512: 52911, 42553 (torch._int_mm
    reorders the weight on every call)."""
    if epilogue and (m <= _CPU_OWN_MAX_ROWS or k * n <= _CPU_OWN_ANY_ROWS_WEIGHT) and _int8_gemv.applies(k):
        return OWN
    if _CPU_FBGEMM_ROWS[0] <= m <= _CPU_FBGEMM_ROWS[1] and _fbgemm_int8.applies(k):
        return FBGEMM
    if m > 1 and _onednn_int8.applies(k):
        return ONEDNN
    return INT_MM


def weight_only_supported(m: int, device: torch.device | str) -> bool:
    """Whether ``Int8Linear`` (``matmul="auto"``) takes the weight-only int8
    kernel for m rows on ``device``: CUDA, m <= 16, and the Triton backend
    available (``eitp_kernels.ops.int8_linear``). Any k and n."""
    device = torch.device(device)
    return device.type == "cuda" and 1 <= m <= FEW_ROWS and int8_linear.triton_available(device)


class _Int8Weight(nn.Module):
    """Buffers shared by the int8 layers: ``weight_int8`` (int8 codes, the float
    weight's shape), ``weight_scale`` (float32 per output channel, (out,)) and
    ``activation_mode`` (0-d int8: 0 none, 1 symmetric, 2 affine per tensor);
    ``bias`` stays a float parameter.

    The float paths use :meth:`dequantized_weight`: ``weight()`` computed once
    and kept (4 bytes per weight, the layer's dtype) until the codes or scales
    change (another tensor, or an in-place write: the version counters), the
    dtype changes or the layer moves. Never pickled or copied (rebuilt on use)."""

    def _init_int8(self, weight_shape: tuple[int, ...], bias: bool, activation_symmetric: bool | None,
                   device, dtype) -> None:
        self.dtype = dtype
        self.activation_symmetric = activation_symmetric
        self.register_buffer("weight_int8", torch.zeros(weight_shape, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(weight_shape[0], dtype=torch.float32, device=device))
        self.register_buffer("activation_mode",
                             torch.tensor(_ACTIVATION_MODES[activation_symmetric], dtype=torch.int8, device=device))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0], device=device, dtype=dtype)) if bias else None
        self._dequantized = None  # (codes, version, scale, version, dtype, weight): see dequantized_weight

    def weight(self) -> torch.Tensor:
        """The dequantized weight, ``weight_int8 * weight_scale`` per output channel, in ``dtype`` (a new tensor)."""
        return dequantize_int8(self.weight_int8, self.weight_scale, granularity="channel", axis=0, dtype=self.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """``weight()``, cached (see the class docstring); not to be written to."""
        if torch.compiler.is_compiling():
            return self.weight()
        codes, scale = self.weight_int8, self.weight_scale
        cached = getattr(self, "_dequantized", None)  # None too in a layer pickled by an older release
        if cached is None or not (cached[0] is codes and cached[1] == codes._version and cached[2] is scale
                                  and cached[3] == scale._version and cached[4] == self.dtype):
            with torch.no_grad():
                cached = self._dequantized = (codes, codes._version, scale, scale._version, self.dtype, self.weight())
        return cached[5]

    def __getstate__(self):
        # Caches are rebuilt on use: neither pickled nor copied (the packed weights are opaque tensors).
        state = self.__dict__.copy()
        for name in self._CACHES:
            state[name] = None
        return state

    _CACHES = ("_dequantized",)


def _refresh_after_load(module: "Int8Linear", incompatible_keys) -> None:
    module._refresh_code_sums()


class Int8Linear(_Int8Weight):
    """A linear layer stored as int8 codes plus per-output-channel float32 scales.

    Three paths, chosen per call from the batch (m rows of the input's (m, k)
    view) by the layer's :meth:`plan` for the input's device (``matmul="auto"``:
    :func:`int8_matmul_supported`, :func:`weight_only_supported`, else the
    dequantized weight; ``matmul="int8"`` / ``"weight_only"`` / ``"dequantize"``
    force one). :func:`int8_summary` prints every layer's plan.

    int8: the activations are quantized dynamically to int8 codes ``qx`` with
    scale ``sx``, then

        y[i, j] = sx[i] * weight_scale[j] * (qx @ weight_int8^T)[i, j] + bias[j]

    with ``qx @ weight_int8^T`` an exact int32 product (CPU, per
    :func:`cpu_int8_product`: fbgemm's packed product for 2-16 rows,
    ``eitp_kernels._fbgemm_int8``; oneDNN's u8 x s8 kernel for more,
    ``eitp_kernels._onednn_int8``; each keeps a packed copy of the int8
    weight from its first call on, one more byte per weight; else
    ``torch._int_mm``: the same value every way), converted to float32 once
    and multiplied by ``weight_scale`` (in fbgemm's and oneDNN's epilogues),
    then by ``sx`` with the bias added in one in-place pass (float32, returned
    in the layer's dtype). ``sx`` is per row (per token: quantize_int8
    granularity="channel", axis=0 on the 2-D view, symmetric) for layers
    trained without activation quantization, or per tensor with the trained
    mode (symmetric, or affine with ``- zero_point * sum_k weight_int8[j, k]``)
    otherwise, so those codes are exactly the fake-quant model's. The output
    differs from the fp32 path by the activation rounding only (per-row
    symmetric: at most sx[i] / 2 per input element).

    weight-only int8 (CUDA, 1-16 rows): ``int8_weight_only_linear(a(x),
    weight_int8, weight_scale, bias)`` (eitp_kernels.ops.int8_linear): one
    kernel reads each int8 code once and dequantizes it in registers; within
    fp32 rounding of the dequantized path.

    dequantized (``matmul="dequantize"``, shapes where int8 would be slower,
    inputs that require grad, or an input dtype other than the layer's):
    ``linear(a(x), dequantized_weight(), bias)`` with the same activation
    fake-quant ``a`` as the FakeQuantLinear it was exported from: the outputs
    are bit-identical to the fake-quant model's. The dequantized weight is
    cached (:meth:`dequantized_weight`), never recomputed per call.
    """

    MATMULS = ("auto", "int8", "weight_only", "dequantize")

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
        self._onednn_weight: _onednn_int8.PackedWeight | None = None  # the CPU int8 path's packed weights
        self._fbgemm_weight: _fbgemm_int8.PackedWeight | None = None
        self._own_weight: _int8_gemv.PackedWeight | None = None
        self._plans: dict = {}  # _plan_key(device type) -> Int8Linear.plan()
        self._fast = None  # forward's shortcut for layers dequantized at every batch size
        self._own_fast = None  # forward's shortcut for the batch sizes that take our int8 product

    _CACHES = _Int8Weight._CACHES + ("_onednn_weight", "_fbgemm_weight", "_own_weight", "_fast", "_own_fast")

    def _refresh_code_sums(self) -> None:
        affine = self.activation_symmetric is False
        self._weight_code_sums = self.weight_int8.sum(dim=1, dtype=torch.int32) if affine else None

    def _plan_key(self, device_type: str) -> tuple:
        """What a plan depends on besides the shape: the device type, ``matmul``, the dtype and the
        activation mode (our CPU product's rule applies to float32 layers without affine activations)."""
        return device_type, self.matmul, self.dtype, self.activation_symmetric

    def _takes_own_epilogue(self) -> bool:
        """Whether our CPU product's epilogue fits the layer: float32, activations not affine (their
        zero point is 0). Its own rule of int8_matmul_supported and forward both ask this."""
        return self.dtype == torch.float32 and self.activation_symmetric is not False

    def plan(self, device: torch.device | str | None = None) -> tuple[tuple[int, str], ...]:
        """The paths on ``device`` (default: where the layer's codes are) as
        ((first batch, path), ...), batches counted in rows of the (m, k) view,
        each path one of INT8, WEIGHT_ONLY, DEQUANTIZED up to the next entry's
        first batch. Decided once per device type, ``matmul`` setting, dtype
        and activation mode from the layer's shape (the rules of :func:`int8_matmul_supported` and
        :func:`weight_only_supported`) and kept."""
        device = torch.device(device) if device is not None else self.weight_int8.device
        key = self._plan_key(device.type)
        plans = self.__dict__.setdefault("_plans", {})  # absent in a layer pickled by an older release
        if key not in plans:
            k, n = self.in_features, self.out_features
            weight = max(k * n, 1)  # every batch size where a rule's answer may change
            firsts = {1, _OWN_MIN_ROWS, FEW_ROWS + 1, -(-_OWN_MIN_MACS // weight),
                      max(FEW_ROWS + 1, -(-_CPU_MIN_INT8_MACS // weight))}
            plan: list[tuple[int, str]] = []
            for m in sorted(firsts):
                path = self._path_for(m, device)
                if not plan or plan[-1][1] != path:
                    plan.append((m, path))
            plans[key] = tuple(plan)
        return plans[key]

    def _path_for(self, m: int, device: torch.device) -> str:
        if self.matmul == "dequantize":
            return DEQUANTIZED
        if self.matmul == "int8":
            return INT8
        if self.matmul == "weight_only":
            return WEIGHT_ONLY if m <= FEW_ROWS and int8_linear.triton_available(device) else DEQUANTIZED
        if weight_only_supported(m, device):
            return WEIGHT_ONLY
        return INT8 if int8_matmul_supported(m, self.in_features, self.out_features, device,
                                             epilogue=self._takes_own_epilogue()) else DEQUANTIZED

    def path(self, x: torch.Tensor) -> str:
        """The path ``forward(x)`` takes (see the class docstring)."""
        if x.dtype != self.dtype or x.shape[-1] != self.in_features or not x.numel():
            return DEQUANTIZED
        if x.requires_grad and torch.is_grad_enabled():
            return DEQUANTIZED
        device = x.device
        plan = self._plans.get(self._plan_key(device.type)) if "_plans" in self.__dict__ else None
        plan = plan or self.plan(device)
        path = plan[0][1]
        if len(plan) > 1:
            m = x.numel() // self.in_features
            for first, later in plan[1:]:
                if m >= first:
                    path = later
        return path

    def uses_int8_matmul(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` takes the int8 path."""
        return self.path(x) == INT8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self.__dict__.get("_fast")
        if fast is not None and not torch.compiler.is_compiling():
            # A batch the plan gives the dequantized path: nn.Linear's cost, plus these
            # checks (the cache's key, as dequantized_weight's, the plan's, the batch's size).
            buffers = self._buffers
            codes, scale = buffers["weight_int8"], buffers["weight_scale"]
            if (fast[0] is codes and fast[1] == codes._version and fast[2] is scale and fast[3] == scale._version
                    and fast[4] == self._plan_key(x.device.type) and x.dtype == self.dtype
                    and (fast[6] is None or x.numel() <= fast[6])):
                return F.linear(x, fast[5], self._parameters["bias"])
        own = self.__dict__.get("_own_fast")
        if own is not None and not torch.compiler.is_compiling():
            # A batch size that took our int8 product before, per-row activations: its one op,
            # plus these checks (codes and scales unchanged, the same rule, setting and batch size).
            buffers = self._buffers
            codes, scale = buffers["weight_int8"], buffers["weight_scale"]
            if (own[0] is codes and own[1] == codes._version and own[2] is scale and own[3] == scale._version
                    and own[4] is cpu_int8_product and own[5] == self._plan_key("cpu")
                    and x.dtype == torch.float32 and x.dim() == 2 and x.shape[0] in own[6]
                    and x.shape[1] == self.in_features and x.is_cpu and not (x.requires_grad and torch.is_grad_enabled())
                    and _backends.resolve(quant.OP_QUANTIZE, x.device, _backends.IMPLEMENTED) == "cpp"):
                return own[8](x, own[7][0], own[7][1], scale, self.bias)
        path = self.path(x)
        if path == DEQUANTIZED:
            weight = self.dequantized_weight()
            self._remember_fast_path(x, weight)
            return F.linear(_fake_quant_activation(x, self.activation_symmetric), weight, self.bias)
        if path == INT8:
            return self._int8_forward(x)
        rows = _fake_quant_activation(x, self.activation_symmetric).reshape(-1, self.in_features)
        y = int8_linear.int8_weight_only_linear(rows, self.weight_int8, self.weight_scale, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _remember_fast_path(self, x: torch.Tensor, weight: torch.Tensor) -> None:
        """Keep (codes, version, scales, version, plan key, weight, most input elements) for
        forward's shortcut: the batches the plan for x's device starts with, when they are
        dequantized and the activations are not quantized (None: every batch)."""
        key = self._plan_key(x.device.type)
        plan = self._plans.get(key) if "_plans" in self.__dict__ else None
        if (plan and plan[0][1] == DEQUANTIZED and self.activation_symmetric is None and x.dtype == self.dtype
                and not torch.compiler.is_compiling()):
            codes, scale = self.weight_int8, self.weight_scale
            most = (plan[1][0] - 1) * self.in_features if len(plan) > 1 else None
            self._fast = (codes, codes._version, scale, scale._version, key, weight, most)

    def _remember_own_path(self, m: int, packed) -> None:
        """Keep (codes, version, scales, version, rule, setting, batch sizes, packed weight, the op)
        for forward's shortcut to our int8 product (per-row activations on the CPU, float32: the
        only caller, forward's fused path, takes no other)."""
        codes, scale = self.weight_int8, self.weight_scale
        own = self.__dict__.get("_own_fast")
        key = (codes, codes._version, scale, scale._version, cpu_int8_product,
               self._plan_key("cpu"))
        same = own is not None and all(a is b or (type(a) is not torch.Tensor and a == b)
                                       for a, b in zip(own[:6], key)) and own[7] is packed
        sizes = own[6] if same else frozenset()
        self._own_fast = key + (sizes | {m}, packed, torch.ops.eitp.int8_linear_float_rows.default)

    def _own_packed_weight(self):
        if getattr(self, "_own_weight", None) is None:  # None too in a layer pickled by an older release
            self._own_weight = _int8_gemv.PackedWeight()
        return self._own_weight.of(self.weight_int8)

    def _int8_forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        m = rows.shape[0]
        if (rows.device.type == "cpu" and not torch.compiler.is_compiling() and self.dtype == torch.float32
                and self.activation_symmetric is None and cpu_int8_product(m, self.in_features, self.out_features) == OWN
                and _backends.resolve(quant.OP_QUANTIZE, rows.device, _backends.IMPLEMENTED) == "cpp"):
            # one op: the per-row quantization, the product and its epilogue
            packed = self._own_packed_weight()
            y = _int8_gemv.float_product(rows, packed, self.weight_scale, self.bias)
            self._remember_own_path(m, packed)
            return y.reshape(*x.shape[:-1], self.out_features)
        qx, sx, zero_point = self._quantize_activations(rows)
        if qx.device.type == "cuda" and qx.shape[0] > FEW_ROWS and int8_linear.triton_available(qx.device):
            # three launches: the quantization, torch._int_mm, the rescale (one Triton pass)
            affine = self.activation_symmetric is False
            if affine and (self._weight_code_sums is None or self._weight_code_sums.device != qx.device):
                self._refresh_code_sums()
            y = int8_linear.int8_linear_rescale(
                torch._int_mm(qx, self.weight_int8.t()), sx, self.weight_scale, self.bias,
                self._weight_code_sums if affine else None, zero_point if affine else None, self.dtype)
            return y.reshape(*x.shape[:-1], self.out_features)
        bias = self.bias
        if (qx.device.type == "cpu" and not torch.compiler.is_compiling() and self._takes_own_epilogue()
                and cpu_int8_product(*qx.shape, self.out_features) == OWN):
            # one op after the quantization: the product and its epilogue (per-tensor symmetric
            # activations, or per-row ones quantized by another backend: sx (m, 1))
            y = _int8_gemv.product(qx, sx.reshape(-1).expand(m), self._own_packed_weight(), self.weight_scale, bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        # y = float32(acc) * weight_scale from the product, then y * sx and + bias in place (each
        # rounded on its own, as OWN does; one (m, n) allocation in all).
        y = self._scaled_int8_product(qx, zero_point).mul_(sx)
        if bias is not None:
            y.add_(bias)
        return y.to(self.dtype).reshape(*x.shape[:-1], self.out_features)

    def _quantize_activations(self, rows: torch.Tensor):
        """(codes (m, k) int8, scale (m, 1) or (1,), zero point: 0 or a 0-d tensor) of
        the (m, k) activations: per row symmetric, or per tensor in the trained mode.
        The row op of quantize_int8's backend, called directly (its checks hold by
        construction here: a float (m, k) view; they cost more than the op on one row)."""
        per_row, symmetric = self.activation_symmetric is None, self.activation_symmetric is not False
        backend = _backends.resolve(quant.OP_QUANTIZE, rows.device, _backends.IMPLEMENTED)
        if backend == "reference" or torch.compiler.is_compiling():
            if per_row:
                qx, sx, _ = quantize_int8(rows, granularity="channel", axis=0, symmetric=True)
                return qx, sx.unsqueeze(1), 0
            qx, sx, zero_point = quantize_int8(rows, granularity="tensor", symmetric=symmetric)
            return qx, sx, 0 if symmetric else zero_point
        view = rows if per_row else rows.reshape(1, -1)
        qx, sx, zero_point = quant._QUANTIZE_ROWS[backend](view.contiguous(), None, None, symmetric)
        if per_row:
            return qx, sx.unsqueeze(1), 0
        return qx.reshape(rows.shape), sx, 0 if symmetric else zero_point.reshape(())

    def _scaled_int8_product(self, qx: torch.Tensor, zero_point) -> torch.Tensor:
        """float32 (m, n): float32(sum_k (qx - zero_point) weight_int8^T) * weight_scale,
        the int32 sum exact: on CPUs by the product :func:`cpu_int8_product` names
        (fbgemm or oneDNN with the scales in their epilogue, _fbgemm_int8 and
        _onednn_int8, each keeping a packed copy of the weight), else torch._int_mm.
        The same value every way."""
        m, k = qx.shape
        if qx.device.type == "cpu" and not torch.compiler.is_compiling():
            product = cpu_int8_product(m, k, self.out_features, epilogue=False)
            if product == FBGEMM:
                if getattr(self, "_fbgemm_weight", None) is None:  # None too in a layer pickled by an older release
                    self._fbgemm_weight = _fbgemm_int8.PackedWeight()
                return _fbgemm_int8.product(qx, zero_point, self._fbgemm_weight.of(self.weight_int8, self.weight_scale))
            if product == ONEDNN:
                if getattr(self, "_onednn_weight", None) is None:
                    self._onednn_weight = _onednn_int8.PackedWeight()
                return _onednn_int8.product(qx, zero_point, self._onednn_weight.of(self.weight_int8, self.weight_scale))
        if qx.device.type == "cuda" and m <= FEW_ROWS:  # torch._int_mm's CUDA kernel needs m > 16 (forced "int8")
            padded = torch.zeros(FEW_ROWS + 1, k, dtype=qx.dtype, device=qx.device)
            padded[:m] = qx
            return self._scaled_int8_product(padded, zero_point)[:m]
        acc = torch._int_mm(qx, self.weight_int8.t())
        if self.activation_symmetric is False:
            if self._weight_code_sums is None or self._weight_code_sums.device != acc.device:
                self._refresh_code_sums()
            acc = acc - zero_point * self._weight_code_sums
        return acc.to(torch.float32).mul_(self.weight_scale)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"activations={_ACTIVATION_NAMES[self.activation_symmetric]}, matmul={self.matmul}, "
                f"path on {self.weight_int8.device.type}: {describe_plan(self.plan())}")


def describe_plan(plan: tuple[tuple[int, str], ...]) -> str:
    """``Int8Linear.plan()`` in words: "int8", or "dequantized for batch 1-31, int8 from 32"."""
    if len(plan) == 1:
        return plan[0][1]
    parts = []
    for (first, path), following in zip(plan, plan[1:] + ((None, None),)):
        end = following[0]
        parts.append(f"{path} from {first}" if end is None else
                     f"{path} for batch {first}" + (f"-{end - 1}" if end - 1 > first else ""))
    return ", ".join(parts)


def int8_summary(model: nn.Module, device: torch.device | str | None = None) -> str:
    """One line per int8 layer of ``model``: its name, shape and paths on
    ``device`` (default: where each layer's codes are; batch = rows of the
    input's (m, k) view, see ``Int8Linear.plan``). Convolutions always use
    their cached dequantized weight."""
    lines = []
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            where = torch.device(device).type if device is not None else module.weight_int8.device.type
            lines.append(f"{name or '(root)'}: Int8Linear {module.in_features} -> {module.out_features} on {where}: "
                         f"{describe_plan(module.plan(device))}")
        elif isinstance(module, _Int8ConvNd):
            lines.append(f"{name or '(root)'}: {type(module).__name__}: {DEQUANTIZED}")
    return "\n".join(lines) if lines else "(no int8 layers)"


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
        return self._conv(x, self.dequantized_weight(), self.bias, self.stride, padding, self.dilation, self.groups)

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
    never from the state, so nothing the state claims is allocated.

    Each Int8Linear decides its paths here, from its shape and device
    (``Int8Linear.plan``: the int8 product where it is faster, else its cached
    dequantized weight); ``print(int8_summary(model))`` lists them and each
    layer's repr shows its own."""
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
    for module in model.modules():
        if isinstance(module, Int8Linear):
            module.plan()  # decided now, for the device the codes were loaded on
    return model
