"""Benchmark cases and the registry of per-op suites.

A *case* is one op on one input (shape, dtype, arguments). A *suite* is a
function ``build(device, quick) -> list[Case]`` registered under an op name;
the ``eitp-bench`` CLI and the pytest-benchmark files in ``benchmarks/`` both
take their cases from it, so sizes are defined once.

Adding a suite for op ``<op>`` (about 30 lines):

1. Create ``eitp_kernels/bench/suite_<op>.py``::

       \"\"\"Benchmark cases of <op>.\"\"\"
       import functools

       import torch

       import eitp_kernels
       from eitp_kernels import _backends, reference
       from eitp_kernels.bench.cases import Case, randn_inputs, register_suite, size_label

       OP = "<op>"

       def build(device: torch.device, quick: bool) -> list[Case]:
           n = 1 << 20 if quick else 1 << 24
           cases = []
           for dtype in (torch.float32, torch.bfloat16):
               cases.append(Case(
                   op=OP, shape=size_label(n), dtype=dtype,
                   make_inputs=randn_inputs((n,), dtype),
                   fn=functools.partial(eitp_kernels.<op>, bins=256),
                   reference=functools.partial(reference.<op>, bins=256),
                   implemented=_backends.IMPLEMENTED,
                   bytes=n * dtype.itemsize,          # or flops=... (GFLOP/s column)
               ))
           return cases

       register_suite(OP, build)

   Optional: ``alternatives=`` other libraries or formulations computing the
   same output (:class:`Alternative`; see ``peers.py``), timed as extra rows
   after their output is checked; ``targets=`` goals for the fastest kernel
   (:class:`Target`), checked in the run's summary.

   ``fn`` and ``reference`` take the tensors ``make_inputs(device)`` returns;
   bind other arguments with ``functools.partial``. ``bytes`` is the op's
   minimum memory traffic (each input read once, each output written once),
   the same for every backend. An op without kernels yet passes
   ``implemented={}``: only the eager and torch.compile baselines run.
2. Add ``"suite_<op>"`` to :data:`SUITE_MODULES` below if it is not listed.
3. Add ``benchmarks/bench_<op>.py`` (copy ``bench_finite_minmax.py``, change ``OP``).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, Callable, Mapping, Sequence

import torch

import eitp_kernels

# Suite modules in eitp_kernels.bench, in table order. A listed module that
# does not exist (yet) is skipped; one that exists but fails to import raises.
SUITE_MODULES = (
    "suite_finite_minmax",
    "suite_histogram_entropy",
    "suite_coherence_loss",
    "suite_fake_quant_int8",
    "suite_eitp_regularizer",
    "suite_int8_linear",
)

Builder = Callable[[torch.device, bool], "list[Case]"]
_SUITES: dict[str, Builder] = {}

# (rtol, atol) of the output check against the eager reference, by the
# reference output's dtype; integer outputs must match exactly.
TOLERANCES = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}

DTYPE_LABELS = {
    torch.float64: "fp64",
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int8: "int8",
    torch.uint8: "uint8",
}


# Why a torch.compile baseline may differ from the reference on a GPU: inductor's generated
# code divides float32 with Triton's approximate division, not rounded once like the
# reference's (compile rows failed the exact checks in an H200 run, torch 2.11).
COMPILED_GPU_DIVISION = "its float32 division on a GPU is not rounded once"


@dataclasses.dataclass(frozen=True)
class Alternative:
    """Another way to compute a case's output, timed beside the library's
    kernels: another library (a *peer*, ``modules`` non-empty) or another
    formulation in plain PyTorch. Checked against the reference like the
    kernels (through ``to_reference`` and ``agrees``) before it is timed."""

    name: str  # the table's backend column (at most 15 characters)
    description: str  # the legend's line: what exactly runs
    make: Callable[[tuple], Callable[[], Any]]  # the case's inputs -> the timed zero-argument call
    to_reference: Callable[[Any], Any] | None = None  # the call's output -> the reference's form (untimed)
    agrees: Callable[[Any, Any], bool] | None = None  # (converted output, reference) -> bool; None: the case's check
    modules: tuple[str, ...] = ()  # modules the call imports: a peer library ("" = none: plain PyTorch/NumPy)
    convention: str = ""  # where it differs from the reference by design (the notes)
    devices: tuple[str, ...] = ("cpu", "cuda")
    slow_import: bool = False  # importing it takes seconds: left out of --quick

    @property
    def is_peer(self) -> bool:
        return bool(self.modules)


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal for the case's best kernel (the fastest of its library backends).

    metric "speed": ``against``'s median / ours >= ``ratio`` (``against``: a
    baseline or an alternative's name); "memory": our peak / ``against``'s
    peak <= ``ratio``; "copy": our median / the time of copying the case's
    bytes at the copy bandwidth <= ``ratio`` (``against`` is "copy")."""

    against: str
    ratio: float
    metric: str = "speed"
    source: str = ""  # what the goal stands for, printed beside it (e.g. "memory bound")
    copy_bytes: int = 0  # metric "copy": bytes of the copy (read + written)

    def describe(self) -> str:
        if self.metric == "speed":
            return f">= {self.ratio:g}x {self.against}"
        if self.metric == "memory":
            return f"peak <= {self.ratio:.0%} of {self.against}'s"
        return f"<= {self.ratio:g}x the time of a copy"


@dataclasses.dataclass(frozen=True)
class Case:
    """One op on one input; ``run`` it on a backend or as the eager reference."""

    op: str
    shape: str  # label for the table, e.g. "16M" or "4096x4096 dim=1"
    dtype: torch.dtype
    make_inputs: Callable[[torch.device], tuple]
    fn: Callable[..., Any]  # the library op, dispatched by eitp_kernels.use_backend
    reference: Callable[..., Any]  # from eitp_kernels.reference: the ground truth
    implemented: Mapping[str, Sequence[str]]  # backends per device type: eitp_kernels._backends.IMPLEMENTED
    bytes: int | None = None  # minimum memory traffic: gives GB/s and % of copy bandwidth
    flops: int | None = None  # floating-point operations: gives GFLOP/s instead of GB/s
    rtol: float | None = None  # check tolerance; None: TOLERANCES by output dtype
    atol: float | None = None
    alternatives: tuple[Alternative, ...] = ()  # peers and other formulations, timed as extra rows
    targets: tuple[Target, ...] = ()  # goals checked in the summary (full sizes only)
    # The torch.compile baseline's check where compiled code cannot compute the reference's
    # arithmetic exactly (None: the case's check), and why (printed in the notes).
    compile_agrees: Callable[[Any, Any], bool] | None = None
    compile_convention: str = ""

    @property
    def dtype_label(self) -> str:
        return DTYPE_LABELS.get(self.dtype, str(self.dtype).replace("torch.", ""))

    @property
    def name(self) -> str:
        return f"{self.op} {self.shape} {self.dtype_label}"

    def run(self, backend: str, inputs: tuple) -> Any:
        """The op on ``backend`` ("eager": the reference itself)."""
        if backend == "eager":
            return self.reference(*inputs)
        with eitp_kernels.use_backend(backend):
            return self.fn(*inputs)

    def matches(self, out: Any, expected: Any) -> bool:
        """Whether ``out`` agrees with the reference output ``expected``."""
        return outputs_match(out, expected, self.rtol, self.atol)


def outputs_match(out: Any, expected: Any, rtol: float | None = None, atol: float | None = None) -> bool:
    """Tensors: same shape and dtype, allclose (NaN == NaN), exact for integers.
    Tuples and lists element by element; anything else by ``==``."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(out, torch.Tensor) or out.shape != expected.shape or out.dtype != expected.dtype:
            return False
        out, expected = out.cpu(), expected.cpu()
        if not expected.is_floating_point():
            return torch.equal(out, expected)
        default_rtol, default_atol = TOLERANCES.get(expected.dtype, (1e-5, 1e-6))
        rtol = default_rtol if rtol is None else rtol
        atol = default_atol if atol is None else atol
        return torch.allclose(out.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True)
    if isinstance(expected, (tuple, list)):
        return (
            isinstance(out, (tuple, list))
            and len(out) == len(expected)
            and all(outputs_match(o, e, rtol, atol) for o, e in zip(out, expected))
        )
    return out == expected


def register_suite(op: str, builder: Builder) -> Builder:
    """Register ``builder(device, quick) -> list[Case]`` as the suite of ``op``."""
    if op in _SUITES and _SUITES[op] is not builder:
        raise ValueError(f"register_suite: a suite for {op!r} is already registered")
    _SUITES[op] = builder
    return builder


def load_suites() -> dict[str, Builder]:
    """Import the suite modules (skipping absent ones); op name -> builder, in order."""
    for module in SUITE_MODULES:
        name = f"{__package__}.{module}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise  # the suite exists but something it imports does not
    return dict(_SUITES)


def build_cases(ops: Sequence[str] | None, device: torch.device, quick: bool) -> list[Case]:
    """Every case of ``ops`` (None: every registered op) for ``device``."""
    suites = load_suites()
    unknown = sorted(set(ops or ()) - set(suites))
    if unknown:
        raise KeyError(f"no benchmark suite for {', '.join(unknown)}; known: {', '.join(suites)}")
    selected = [op for op in suites if ops is None or op in ops]
    return [case for op in selected for case in suites[op](device, quick)]


def kernel_backends(case: Case, device: torch.device) -> list[str]:
    """The library backends to benchmark ``case`` with on ``device``.

    Those the op implements for the device type and ``eitp_kernels.backends()``
    reports available there, best first; never ``reference`` (benchmarked as
    the ``eager`` baseline) nor Triton on CPU (the interpreter).
    """
    statuses = eitp_kernels.backends()
    names = []
    for name in case.implemented.get(device.type, ()):
        if name == "reference" or (name == "triton" and device.type == "cpu"):
            continue
        if statuses[name].available and device.type in statuses[name].devices:
            names.append(name)
    return names


def randn_inputs(shape: Sequence[int], dtype: torch.dtype, seed: int = 0) -> Callable[[torch.device], tuple]:
    """A ``make_inputs`` giving one standard-normal tensor (drawn on the CPU with
    a fixed seed, so every device and run sees the same values)."""

    def make(device: torch.device) -> tuple:
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(tuple(shape), generator=generator).to(device=device, dtype=dtype),)

    return make


def size_label(*dims: int) -> str:
    """"16M" for one dim of 2^24 elements, "4096x4096" for several dims."""
    if len(dims) > 1:
        return "x".join(str(d) for d in dims)
    (n,) = dims
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def element_bytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes of a tensor of ``shape`` and ``dtype``."""
    return math.prod(shape) * dtype.itemsize


def one_tensor_case(op: str, label: str, shape: Sequence[int], dtype: torch.dtype, fn: Callable,
                    reference_fn: Callable, values_written: int, **fields) -> Case:
    """A Case of ``fn(x)`` on one standard-normal tensor of ``shape``, checked
    against ``reference_fn``; bytes moved: x read once and ``values_written``
    values of the compute dtype written. ``fields``: any other Case field."""
    from eitp_kernels import _backends, reference

    out_bytes = element_bytes((values_written,), reference.compute_dtype(dtype))
    return Case(op=op, shape=label, dtype=dtype, make_inputs=randn_inputs(shape, dtype), fn=fn,
                reference=reference_fn, implemented=_backends.IMPLEMENTED,
                bytes=element_bytes(shape, dtype) + out_bytes, **fields)
