"""Device launches of one call on a GPU path, counted on any machine (docs/design.md §5.1).

A kernel of 20-60 us is worth that only if the call around it launches little
else. :func:`count_launches` runs a call on CPU tensors with the ``cuda`` or
``triton`` backend forced (the backend reports itself available for CPU
tensors inside the count only) and counts what it would launch on a GPU:

* ``triton``: every ``_triton.launch`` is taken over by a launch observer
  (nothing runs: outputs stay uninitialised) and recorded as one launch;
* aten ops, counted with ``torch.profiler``: an op launches once unless its
  children launch (``aten::zeros`` is its ``aten::zero_``; ``aten::to`` is its
  ``aten::copy_`` or nothing); views, allocations and host-side bookkeeping
  (``NO_KERNEL``) launch nothing;
* ``cuda``: each ``eitp::`` extension op is counted as its CUDA
  implementation launches: the aten ops of its shared binding code (the
  profiler sees them on CPU too: the CPU and CUDA impls are one template) plus
  ``CUDA_ONLY[op](event)``, the kernels and CUDA-only aten ops of its
  ``CudaBackend`` (read off csrc/bindings and csrc/cuda; tests/test_gpu.py-style
  checks compare the table with the CUDA profiler where a GPU is present).

Host syncs (``aten::item``, ``aten::_local_scalar_dense``, ``aten::is_nonzero``,
``aten::nonzero``) are listed separately: a GPU call must have none.

    python -m eitp_kernels.bench.launches      # the table for every op and GPU backend
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Iterator

import torch

from eitp_kernels import _backends, _registration, _triton

GPU_BACKENDS = ("cuda", "triton")

# aten ops that launch no kernel of their own (views, allocations, metadata,
# dispatch wrappers whose copying children are counted instead).
NO_KERNEL = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty", "aten::new_empty_strided",
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::as_strided",
    "aten::t", "aten::transpose", "aten::permute", "aten::expand", "aten::expand_as", "aten::unsqueeze",
    "aten::squeeze", "aten::select", "aten::slice", "aten::narrow", "aten::detach", "aten::detach_",
    "aten::alias", "aten::lift_fresh", "aten::resolve_neg", "aten::resolve_conj", "aten::split",
    "aten::split_with_sizes", "aten::chunk", "aten::unbind", "aten::flatten", "aten::view_as",
    "aten::result_type", "aten::numpy_T", "aten::movedim", "aten::unflatten",
    "aten::set_", "aten::pin_memory", "aten::_pin_memory", "aten::is_pinned", "aten::broadcast_tensors",
    "aten::dim", "aten::size", "aten::stride", "aten::record_stream", "aten::matrix_H", "aten::mT",
    "aten::_has_compatible_shallow_copy_type", "aten::scalar_tensor",
})
# aten ops that are other aten ops on every device: their children are counted.
COMPOSITE = frozenset({
    "aten::zeros", "aten::zeros_like", "aten::ones", "aten::ones_like", "aten::full", "aten::full_like",
    "aten::new_zeros", "aten::new_ones", "aten::new_full", "aten::_to_copy", "aten::to", "aten::contiguous",
    "aten::clone", "aten::where", "aten::stack", "aten::type_as", "aten::expand_as", "aten::_to_dim_order_copy",
})
HOST_SYNC = frozenset({"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero",
                       "aten::equal", "aten::allclose"})
TRITON_PREFIX = "triton::"


# --------------------------------------------------------------------------
# What each extension op's CUDA implementation launches beyond its shared
# binding code: event -> names of the launches (kernels, CUDA-only aten ops).
# --------------------------------------------------------------------------


def _shape(event, i: int) -> list:
    return list(event.input_shapes[i]) if i < len(event.input_shapes) else []


def _slices(rows: int) -> int:
    """Launches of a kernel whose grid puts rows on axis y in slices of 65535 (csrc/cuda)."""
    return math.ceil(rows / 65535)


def _rows_kernel(name: str, arg: int = 0) -> Callable:
    def launches(event) -> list[str]:
        shape = _shape(event, arg)
        if len(shape) != 2 or shape[0] * shape[1] == 0:
            return []
        return [name] * _slices(shape[0])
    return launches


# csrc/kernels/finite_minmax.h: kRangeChunk, kRangeBlocksPerRow (the range pass)
_RANGE_CHUNK = 256 * 16
_RANGE_BLOCKS_PER_ROW = 512


def _range_blocks_per_row(length: int) -> int:
    return min(max(1, math.ceil(length / _RANGE_CHUNK)), _RANGE_BLOCKS_PER_ROW)


def _finite_minmax(event) -> list[str]:
    # finite_minmax_cuda: the range pass (its partials are the result when a
    # row has one), else a fold launch; rows of no element: the binding's fills.
    shape = _shape(event, 0)
    if len(shape) != 2 or shape[0] * shape[1] == 0:
        return []
    fold = ["finite_minmax_fold_kernel"] if _range_blocks_per_row(shape[1]) > 1 else []
    return ["range_partials_kernel"] * _slices(shape[0]) + fold


def _counts_with_range(event) -> list[str]:
    # CudaBackend::counts_auto_range: the range pass (which zeroes the counts), the counting
    # pass; counts_given_range: the counting pass (the binding's zero fill is an aten op).
    shape = _shape(event, 0)
    if len(shape) != 2 or shape[0] * shape[1] == 0:
        return []
    auto_range = event.concrete_inputs[2] is None if len(event.concrete_inputs) > 2 else True
    range_pass = ["range_partials_kernel"] * _slices(shape[0]) if auto_range else []
    return range_pass + ["hist_rows_kernel"] * _slices(shape[0])


def _entropy_from_counts(event) -> list[str]:
    return ["entropy_kernel"] if _shape(event, 0) and _shape(event, 0)[0] > 0 else []


def _counts_many(event) -> list[str]:
    # counts_many_cuda: the pinned segment table's host-to-device copy, the
    # range pass (automatic range; the launcher skips it for a list of int8/uint8
    # codes only, which the profiler's record of a tensor list, dtype
    # 'TensorList', cannot tell: counted), the counting pass.
    auto_range = event.concrete_inputs[2] is None if len(event.concrete_inputs) > 2 else True
    return ["copy segment table"] + (["segments_range_kernel"] if auto_range else []) + ["segments_count_kernel"]


# csrc/kernels/quant.h: kQuantWarpRowMax, quant_cuda_range_pass
_QUANT_WARP_ROW_MAX = 1024


def _quant_rows(event) -> list[str]:
    # quantize_int8_rows_cuda (its workspace for computed scales is written, never zeroed first)
    x = _shape(event, 0)
    static = bool(_shape(event, 1)) or (len(event.concrete_inputs) > 1 and event.concrete_inputs[1] is not None)
    if len(x) != 2 or x[0] == 0:
        return []
    rows, length = x
    if not static:
        if length <= _QUANT_WARP_ROW_MAX:
            return ["quant_warp_rows_kernel"]
        if rows >= 256 or length <= _RANGE_CHUNK:
            return ["quant_block_rows_kernel"]
        return ["range_chunks_kernel", "params_from_workspace_kernel", "quant_static_kernel"]
    return ["quant_static_kernel"]


def _coherence_sides(event) -> int:
    return 2 if len(_shape(event, 3 if event.name.endswith("backward") else 1)) == 2 else 1


def _coherence_forward(event) -> list[str]:
    # csrc/bindings/coherence.cpp, CudaBackend. PRODUCT: the raw form (its one product is
    # the binding's shared aten::mm); GRAM: statistics and standardized copies per side
    # (the Gram matrices and sums are shared aten ops). Cross-correlation only: the CPU
    # binding makes a self-correlation's P by blocks, which CUDA does not.
    path = event.concrete_inputs[6] if len(event.concrete_inputs) > 6 else None
    if path == 2:
        return ["raw_stats_kernel", "raw_finalize_kernel", "raw_reduce_kernel", "raw_loss_kernel"]
    return ["stats_kernel", "standardize_kernel"] * _coherence_sides(event)


def _coherence_backward(event) -> list[str]:
    # PRODUCT: M and P's sums, then the centered operands and affine terms (the two
    # products are the binding's shared aten::addmm_); else standardized copies and
    # the epilogue per side.
    path = event.concrete_inputs[12] if len(event.concrete_inputs) > 12 else None
    if path == 2:
        return ["raw_operands_kernel", "raw_center_kernel"]
    return ["standardize_kernel", "backward_epilogue_kernel"] * _coherence_sides(event)


def _cpu_only(event) -> list[str]:
    # an op with a CPU kernel only (no CUDA implementation): no GPU path calls it
    raise KeyError(f"count_launches: {event.name} has no CUDA implementation; a cuda-path call cannot reach it")


CUDA_ONLY: dict[str, Callable] = {
    "eitp::coherence_forward": _coherence_forward,
    "eitp::coherence_backward": _coherence_backward,
    "eitp::finite_minmax": _finite_minmax,
    "eitp::histogram_counts": _rows_kernel("hist_rows_kernel"),
    "eitp::histogram_counts_with_range": _counts_with_range,
    "eitp::histogram_counts_many": _counts_many,
    "eitp::soft_histogram": _rows_kernel("soft_hist_kernel"),
    "eitp::soft_histogram_backward": _rows_kernel("soft_backward_kernel", arg=1),
    "eitp::entropy_from_counts": _entropy_from_counts,
    "eitp::quantize_int8_rows": _quant_rows,
    "eitp::fake_quant_int8_rows": _quant_rows,
    "eitp::dequantize_int8_rows": _rows_kernel("dequant_kernel"),
    "eitp::fake_quant_int8_rows_backward": _rows_kernel("backward_kernel", arg=1),
    "eitp::int8_linear_rows": _cpu_only,  # csrc/bindings/int8_linear.cpp: CPU (AVX-512 VNNI) only
    "eitp::int8_linear_float_rows": _cpu_only,
}


# --------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Launches:
    """What one call launches on a GPU path, in order."""
    backend: str
    kernels: tuple[str, ...]  # one entry per device launch
    syncs: tuple[str, ...]  # ops that wait for the device (a GPU call should have none)

    @property
    def total(self) -> int:
        return len(self.kernels)

    def __str__(self) -> str:
        return f"{self.total} launches ({', '.join(self.kernels)})" + (
            f"; host syncs: {', '.join(self.syncs)}" if self.syncs else "")


@contextlib.contextmanager
def forced_backend(backend: str) -> Iterator[None]:
    """Inside the block, every op picks ``backend`` for CPU tensors, as it would for CUDA tensors
    (``_backends.resolve`` answers it; not thread-safe: for counting only)."""
    if backend not in GPU_BACKENDS:
        raise ValueError(f"forced_backend: backend must be one of {GPU_BACKENDS}, got {backend!r}")
    real_resolve = _backends.resolve

    def resolve(op_name, device, implemented):
        if device.type != "cpu":
            return real_resolve(op_name, device, implemented)
        if backend not in implemented.get("cuda", ()):
            raise _backends.BackendUnavailableError(f"{op_name}: no {backend!r} implementation to count")
        return backend

    if backend == "cuda" and not _backends._extension.load()[0]:
        raise RuntimeError(f"forced_backend: the extension is not loaded ({_backends._extension.load()[1]})")
    if backend == "triton" and not _registration.define_triton_ops():
        raise RuntimeError(f"forced_backend: {_backends.TRITON_MISSING}")
    _backends.resolve = resolve
    try:
        yield
    finally:
        _backends.resolve = real_resolve


def _take_over(kernel, grid, args, meta) -> bool:
    name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "kernel")
    with torch.profiler.record_function(TRITON_PREFIX + name):
        pass
    return True


def count_launches(fn: Callable[[], object], backend: str) -> Launches:
    """Run ``fn()`` (a call on CPU tensors) with ``backend`` forced and return what it launches.

    Triton kernels do not run: what a call computes from their outputs is
    garbage, so count calls whose Python control flow does not read tensor
    values (every op's GPU path, which never syncs).
    """
    from torch.profiler import ProfilerActivity, profile

    with forced_backend(backend):
        _triton.launch_observers.append(_take_over)
        try:
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                fn()
        finally:
            _triton.launch_observers.remove(_take_over)
    kernels: list[str] = []
    syncs: list[str] = []
    for event in prof.events():
        if event.cpu_parent is None:
            _walk(event, backend, kernels, syncs)
    return Launches(backend, tuple(kernels), tuple(syncs))


def _walk(event, backend: str, kernels: list[str], syncs: list[str]) -> None:
    """Append the launches of ``event`` (and its children) to ``kernels``."""
    name = event.name
    if name.startswith(TRITON_PREFIX):
        kernels.append(name)
        return
    if name in HOST_SYNC:
        syncs.append(name)  # the outermost one (aten::item, not its aten::_local_scalar_dense)
        return
    primitive = name.startswith("aten::") and name not in NO_KERNEL and name not in COMPOSITE
    if primitive:
        # One kernel on a GPU; its children on CPU are CPU implementation
        # details (a reduction's output fill, say), except host syncs.
        kernels.append(name)
        _collect_syncs(event, syncs)
        return
    for child in event.cpu_children:
        _walk(child, backend, kernels, syncs)
    if backend == "cuda" and name.startswith("eitp::"):
        if name not in CUDA_ONLY:
            raise KeyError(f"count_launches: no CUDA launch table for {name}; add it to "
                           "eitp_kernels.bench.launches.CUDA_ONLY")
        kernels.extend(f"{name}:{k}" for k in CUDA_ONLY[name](event))


def _collect_syncs(event, syncs: list[str]) -> None:
    for child in event.cpu_children:
        if child.name in HOST_SYNC:
            syncs.append(child.name)
        else:
            _collect_syncs(child, syncs)


# --------------------------------------------------------------------------
# The calls each op's budget is checked on (tests/test_launch_counts.py,
# the benchmark's GPU rows, ``python -m eitp_kernels.bench.launches``)
# --------------------------------------------------------------------------


def standard_calls(device: str = "cpu") -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (call on small tensors on ``device``, launch budget on a GPU path)."""
    import eitp_kernels as ek

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 300, generator=g).to(device)
    codes = torch.randint(-128, 128, (64, 300), dtype=torch.int8, generator=g).to(device)
    q, s, zp = ek.quantize_int8(x, granularity="channel")
    xg = x.clone().requires_grad_()
    grad = torch.randn(64, 300, generator=g).to(device)
    many = [x, x.double(), x[:7].half()]

    def fake_quant_backward():
        torch.autograd.grad(ek.fake_quant_int8(xg, granularity="channel"), xg, grad)

    # two views of one batch (the raw-product path: column means near 0)
    z1 = torch.randn(64, 48, generator=g).to(device).requires_grad_()
    z2 = (0.8 * z1.detach() + 0.6 * torch.randn(64, 48, generator=g).to(device)).requires_grad_()

    def barlow_twins():
        torch.autograd.grad(ek.coherence_loss(z1, z2, offdiag_weight=0.0051, squared=True), (z1, z2))

    return {
        "histogram_entropy(x)": (lambda: ek.histogram_entropy(x), 3),
        "histogram_entropy(codes)": (lambda: ek.histogram_entropy(codes), 3),
        "histogram_entropy(x, dim=1)": (lambda: ek.histogram_entropy(x, dim=1), 3),
        "histogram_entropy_many(fp32, fp64, fp16)": (lambda: ek.histogram_entropy_many(many), 12),
        "finite_minmax(x)": (lambda: ek.finite_minmax(x), 2),
        "quantize_int8(x, tensor)": (lambda: ek.quantize_int8(x), 3),
        "fake_quant_int8(x, tensor)": (lambda: ek.fake_quant_int8(x), 3),
        "fake_quant_int8(x, channel)": (lambda: ek.fake_quant_int8(x, granularity="channel"), 2),
        "fake_quant_int8(x, channel) fwd+bwd": (fake_quant_backward, 2 + 2),
        # 1 for autograd's gradient of the loss, 5 forward, 4 backward (3 kernels, 3 products)
        "coherence_loss(x, y) Barlow Twins fwd+bwd": (barlow_twins, 10),
        "dequantize_int8(q, channel)": (lambda: ek.dequantize_int8(q, s, granularity="channel"), 2),
    }


def main() -> None:
    calls = standard_calls()
    width = max(map(len, calls))
    for backend in GPU_BACKENDS:
        for name, (fn, budget) in calls.items():
            counted = count_launches(fn, backend)
            mark = "" if counted.total <= budget else "  OVER BUDGET"
            print(f"{backend:7s} {name:{width}s} {counted.total:3d} (budget {budget}){mark}: {counted}")


if __name__ == "__main__":
    main()
