"""A static cost model of the GPU kernels, read from their SASS (no GPU needed).

Every CUDA kernel of the extension (``cuobjdump -sass`` of ``eitp_kernels/_C``)
and every Triton kernel the benchmark cases launch (recorded at the benchmark
sizes through :data:`eitp_kernels._triton.launch_observers`, bound and compiled
as :mod:`eitp_kernels._triton_aot` does) is disassembled for sm_90 and sm_86.
In each kernel the *hot loops* are found: the innermost loops (a backward
branch and the code it jumps back over) that read global memory and whose trip
count does not depend on the data they load (a binary search is not a hot
loop). A kernel without such a loop whose code reads global memory once per
program (a Triton block kernel) is read as one iteration of its whole body.
Per hot loop, counted once per thread and iteration (every instruction of the
body once; branches are not followed and the code they jump to is not
counted):

- instructions, global load and store bytes, the load widths;
- bytes in flight: the most load bytes a thread has issued and not yet used,
  over two passes of the body (loads issued at the end of one iteration for the
  next count);
- atomics, barriers, warp votes, fp64 instructions and calls (the correctly
  rounded division's slow path is a ``CALL``);
- the budget: the instructions a memory-bound loop may issue for the bytes it
  moves, ``issue_rate * loaded / read_rate`` for a loop that only reads and
  ``issue_rate * (loaded + stored) / copy_rate`` for one that also writes
  (H200: 9.66 instructions per byte read, 38.7 per fp32 element).

Three bounds give a kernel's time at the benchmark size (2^24 elements: every
benchmark case of these ops has 16M elements):

- bytes: elements * (bytes read + written per element) / bandwidth;
- issue: elements * instructions per element / issue rate (fp64 instructions
  weighted by the fp32:fp64 rate ratio, 2 on an H100/H200, 64 on an RTX 3090);
- latency: elements * bytes loaded per element / (bytes in flight per thread *
  resident threads * SMs / latency), resident threads from the registers, the
  block size and the shared memory (occupancy), the grid assumed to fill the GPU.

The prediction is the largest, for the kernel's slowest hot loop. Not counted: barriers' and atomics' waits
(conflicts), the tails and prologues of a loop, launches and host time, L2
hits. See docs/design.md §7.

``python -m eitp_kernels.bench.cost_model [--cc 90 86] [--only cuda|triton] [--kernel REGEX]``
prints one block per kernel and target; ``--failures`` prints what
tests/test_cost_model.py asserts (the hot-loop rules) as a table to paste.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile

from eitp_kernels.bench.sass import Loop, hot_loops, parse_sass

# --------------------------------------------------------------------------
# The machines
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Gpu:
    """What the model knows of a GPU. Rates in bytes/s and thread-instructions/s."""
    name: str
    cc: int  # the SASS target the model reads for it
    sms: int
    read_rate: float  # bytes/s a pure read reaches (src.sum())
    copy_rate: float  # bytes/s read + written of a copy (dst.copy_(src))
    issue_rate: float  # thread-instructions/s: SMs * 4 schedulers * 32 lanes * clock
    fp64_weight: float  # issue slots one fp64 instruction takes (fp32 rate / fp64 rate)
    latency: float  # s, DRAM load latency to cover with loads in flight
    max_threads_per_sm: int
    max_blocks_per_sm: int
    registers_per_sm: int
    shared_per_sm: int  # bytes a block may use on one SM at most, all blocks together


# H200 (the 2026-11-30 run, benchmarks/RESULTS.md): read 3456 GB/s, copy 4124 GB/s
# (the suite's own measurements); 132 SMs at 1.98 GHz boost. An H100 SXM has the
# same SMs and a similar measured rate. Latency: 600 ns, so about 2 MB must be in
# flight on the whole GPU (16 KB per SM). RTX 3090: 82 SMs at 1.695 GHz, 936 GB/s
# (nominal: never measured here), fp64 at 1/64 of fp32.
H200 = Gpu("H100/H200", 90, 132, 3.456e12, 4.124e12, 132 * 4 * 32 * 1.98e9, 2.0, 600e-9, 2048, 32, 65536,
           227 * 1024)
RTX3090 = Gpu("RTX 3090", 86, 82, 936e9, 936e9, 82 * 4 * 32 * 1.695e9, 64.0, 600e-9, 1536, 16, 65536, 99 * 1024)
GPUS = {90: H200, 86: RTX3090}
TARGETS = (90, 86)
BENCH_ELEMENTS = 1 << 24  # every benchmark case of these ops: 16M or 4096 x 4096 elements
BUDGET_FRACTION = 0.8  # the test's margin: hot-loop instructions <= 0.8 of the sm_90 budget
MIN_BYTES_IN_FLIGHT = 16  # per thread, in every hot loop


def budget_per_byte(gpu: Gpu, writes: bool) -> float:
    """Instructions a memory-bound loop may issue per byte it moves (H200: 9.66 reading, 8.10 copying)."""
    return gpu.issue_rate / (gpu.copy_rate if writes else gpu.read_rate)


def loop_budget(loop: Loop, gpu: Gpu) -> float:
    """Instructions a memory-bound iteration of ``loop`` may issue on ``gpu``."""
    return budget_per_byte(gpu, loop.stored > 0) * (loop.loaded + loop.stored)


def issue_cost(loop: Loop, gpu: Gpu) -> float:
    """Issue slots of one iteration of ``loop`` on ``gpu`` (fp64 instructions weighted by its fp32:fp64 rate)."""
    return loop.instructions + (gpu.fp64_weight - 1.0) * loop.fp64


# --------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------

_ELEMENT_SIZE = {"float": 4, "double": 8, "__half": 2, "__nv_bfloat16": 2, "int8": 1, "uint8": 1,
                 "fp32": 4, "fp64": 8, "fp16": 2, "bf16": 2, "i8": 1, "u8": 1, "i32": 4}
_MANGLED_TYPE = {"f": "float", "d": "double", "6__half": "__half", "13__nv_bfloat16": "__nv_bfloat16", "a": "int8",
                 "h": "uint8", "l": "int64"}

# Global bytes a kernel's hot loops load per input element, beyond one element of its dtype
# (T: the element size): the gradient stream, the bins-long table reads of the soft backward.
_LOADED_PER_ELEMENT = {
    "backward_kernel": lambda t: 2 * t,  # x and grad
    "dequant_kernel": lambda t: 1,  # codes (the template type is the output's)
    "soft_backward_kernel": lambda t: t + 16,  # x and two fp64 table entries
    "_fake_quant_backward_kernel": lambda t: 2 * t,
    "_soft_histogram_backward_kernel": lambda t: t + 16,
}

# Kernels whose loops walk something other than the input elements: the test does not judge them.
NOT_ELEMENTWISE = {
    "entropy_kernel": "a loop over a row's bins (the counts), not over the input",
    "params_from_workspace_kernel": "one warp per row: folds the row's range partials into its scale, no element loop",
    "finite_minmax_fold_kernel": "one warp per row: folds the row's range partials, no element loop",
}
# The coherence kernels (matrix products and column statistics) are outside the element rules.
EXCLUDED_SOURCES = ("coherence",)


@dataclasses.dataclass
class KernelReport:
    source: str  # "cuda" or "triton"
    name: str  # short name with its element type, e.g. hist_rows_kernel<float>
    key: str  # what the test's table names it by
    cc: int
    registers: int
    shared: int  # bytes per block (static + the launcher's dynamic allocation)
    threads_per_block: int
    element_size: int  # bytes of one input element, 0 if unknown (a kernel of many dtypes)
    loops: list
    base: str = ""
    judged: bool = True
    not_judged_why: str = ""

    @property
    def gpu(self) -> Gpu:
        return GPUS[self.cc]

    def loaded_per_element(self) -> float:
        if not self.element_size:
            return 0.0
        extra = _LOADED_PER_ELEMENT.get(self.base)
        return float(extra(self.element_size) if extra else self.element_size)

    def elements_per_iteration(self, loop: Loop) -> float:
        per = self.loaded_per_element()
        return loop.loaded / per if per else 0.0

    def occupancy(self) -> int:
        """Resident threads per SM."""
        gpu = self.gpu
        threads = max(32, self.threads_per_block)
        warps = (threads + 31) // 32
        regs_per_warp = ((max(self.registers, 1) * 32 + 255) // 256) * 256
        blocks = min(gpu.max_blocks_per_sm, gpu.max_threads_per_sm // threads,
                     gpu.registers_per_sm // (regs_per_warp * warps) if self.registers else gpu.max_blocks_per_sm)
        if self.shared:
            blocks = min(blocks, gpu.shared_per_sm // self.shared)
        return max(0, blocks) * threads

    def bounds(self, loop: Loop, elements: int = BENCH_ELEMENTS) -> dict | None:
        """{bytes, issue, latency} in seconds for ``elements`` through ``loop`` (None if the element size is unknown)."""
        per_iter = self.elements_per_iteration(loop)
        if not per_iter:
            return None
        gpu = self.gpu
        read = self.element_size if self.base not in _LOADED_PER_ELEMENT else self.loaded_per_element()
        if self.base in ("soft_backward_kernel", "_soft_histogram_backward_kernel"):
            read = self.element_size  # the table stays in L1/L2
        written = loop.stored / per_iter
        bytes_bound = elements * (read + written) / (gpu.copy_rate if written else gpu.read_rate)
        issue = elements * issue_cost(loop, gpu) / per_iter / gpu.issue_rate
        resident = self.occupancy() * gpu.sms
        in_flight = loop.in_flight * resident
        latency = elements * (loop.loaded / per_iter) * gpu.latency / in_flight if in_flight else float("inf")
        return {"bytes": bytes_bound, "issue": issue, "latency": latency}

    def problems(self) -> list[str]:
        """The hot-loop rules of tests/test_cost_model.py that this kernel breaks (judged on its own target)."""
        if not self.judged:
            return []
        found = []
        if not self.loops:
            return [f"no hot loop found{': ' + self.not_judged_why if self.not_judged_why else ''}"]
        for loop in self.loops:
            where = "kernel body" if loop.whole_kernel else f"loop {loop.start:#x}-{loop.end:#x}"
            budget = BUDGET_FRACTION * loop_budget(loop, H200)
            if issue_cost(loop, H200) > budget:
                found.append(f"{where}: {issue_cost(loop, H200):.0f} instructions > {budget:.1f} "
                             f"(0.8 of the sm_90 budget for {loop.loaded} B loaded + {loop.stored} B stored)")
            if loop.in_flight < MIN_BYTES_IN_FLIGHT:
                found.append(f"{where}: {loop.in_flight} B in flight per thread < {MIN_BYTES_IN_FLIGHT}")
            if loop.fp64 and self.element_size != 8:
                found.append(f"{where}: {loop.fp64} fp64 instructions on non-fp64 input")
            if loop.calls:
                found.append(f"{where}: {loop.calls} calls (division slow path)")
        return found

    def describe(self) -> str:
        gpu = self.gpu
        lines = [f"{self.source} sm_{self.cc} {self.name}  regs={self.registers} shared={self.shared} B "
                 f"threads/block={self.threads_per_block} resident/SM={self.occupancy()}"
                 + ("" if self.judged else f"  (not judged: {self.not_judged_why})")]
        for loop in self.loops:
            per = self.elements_per_iteration(loop)
            where = "kernel body" if loop.whole_kernel else f"loop {loop.start:#06x}-{loop.end:#06x}"
            widths = " ".join(f"{n}x{w}B" for w, n in sorted(loop.load_widths.items()))
            per_elem = f"{loop.instructions / per:.1f} instr/elem, budget {loop_budget(loop, gpu) / per:.1f}" if per else \
                f"{loop.instructions / max(loop.loaded + loop.stored, 1):.2f} instr/B"
            lines.append(f"  {where}: {loop.instructions} instr, {per:g} elem/iter ({per_elem}); loads {widths or '-'} "
                         f"= {loop.loaded} B, stores {loop.stored} B, in flight {loop.in_flight} B; "
                         f"atomics {loop.atomics} barriers {loop.barriers} votes {loop.votes} fp64 {loop.fp64} "
                         f"calls {loop.calls}")
            b = self.bounds(loop)
            if b:
                worst = max(b, key=b.get)
                lines.append(f"    {gpu.name} at {BENCH_ELEMENTS >> 20}M elements: bytes {b['bytes'] * 1e6:.1f} us, "
                             f"issue {b['issue'] * 1e6:.1f} us, latency {b['latency'] * 1e6:.1f} us -> "
                             f"{b[worst] * 1e6:.1f} us ({worst})")
        for problem in self.problems():
            lines.append(f"  FAILS {problem}")
        return "\n".join(lines)


def predicted_time(report: KernelReport, elements: int = BENCH_ELEMENTS) -> float | None:
    """Seconds for ``elements`` through the kernel's slowest hot loop (its largest bound).

    A kernel's hot loops are alternatives (a remainder loop, a branch per
    option) or passes over the same elements (quantize by rows: the range, then
    the codes); the model cannot tell them apart, so a two-pass kernel takes
    about twice this (its second pass reads from L1/L2)."""
    times = []
    for loop in report.loops:
        b = report.bounds(loop, elements)
        if b is None:
            return None
        times.append(max(b.values()))
    return max(times, default=None)


# --------------------------------------------------------------------------
# CUDA kernels of the extension
# --------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_THREADS = 256  # kThreads of every launcher in csrc/cuda
# Dynamic shared memory the launchers give a kernel at the benchmark's 256 bins.
CUDA_DYNAMIC_SHARED = {"hist_rows_kernel": 256 * 4, "segments_count_kernel": 256 * 4, "soft_hist_kernel": 256 * 8}


def tool(name: str) -> str | None:
    """cuobjdump / nvdisasm: Triton's bundled copy, else the CUDA toolkit's."""
    try:
        import triton

        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(bundled):
            return bundled
    except ImportError:
        pass
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    found = shutil.which(name) or os.path.join(cuda_home, "bin", name)
    return found if os.path.exists(found) else None


def _cuda_name(mangled: str) -> tuple[str, str]:
    """(kernel name, element type) of a mangled kernel name, e.g. ('hist_rows_kernel', 'float').

    The nested name's length-prefixed parts are read in order (``_ZN4eitp48_GLOBAL__N__..._cu_<hash>20soft_...``):
    a digit run inside the anonymous namespace's hash can read as a length that also ends at ``_kernel``."""
    pos = 3 if mangled.startswith("_ZN") else 2 if mangled.startswith("_Z") else len(mangled)
    while m := re.match(r"\d+", mangled[pos:]):
        start = pos + len(m.group())
        name, pos = mangled[start:start + int(m.group())], start + int(m.group())
        if name.endswith("_kernel"):
            rest = mangled[pos:]
            if not rest.startswith("I"):
                return name, ""
            t = re.match(r"I(\d+)", rest)
            arg = rest[1:1 + len(t.group(1)) + int(t.group(1))] if t else rest[1:2]
            return name, _MANGLED_TYPE.get(arg, arg)
    return mangled, ""


def resource_usage(cuobjdump: str, path: str) -> dict:
    """{arch number: {function: {REG, STACK, SHARED, LOCAL}}} from ``cuobjdump --dump-resource-usage``."""
    out = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True, check=True).stdout
    usage, arch, function = {0: {}}, 0, None
    for line in out.splitlines():
        m = re.match(r"\s*arch = sm_(\d+)", line)
        if m:
            arch = int(m.group(1))
            usage.setdefault(arch, {})
            continue
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            function = m.group(1)
            continue
        if function and "REG:" in line:
            usage[arch][function] = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            function = None
    return usage


def cuda_reports(path: str | None = None, targets=TARGETS) -> list[KernelReport]:
    """A report per CUDA kernel of the extension at ``path`` (default: the loaded ``eitp_kernels._C``)."""
    if path is None:
        import eitp_kernels._C as c

        path = c.__file__
    cuobjdump = tool("cuobjdump")
    if cuobjdump is None:
        raise RuntimeError("cuobjdump not found (ships with Triton and the CUDA toolkit)")
    usage = resource_usage(cuobjdump, path)
    reports = []
    for cc in targets:
        sass = subprocess.run([cuobjdump, "-sass", "-arch", f"sm_{cc}", path], capture_output=True, text=True,
                              check=True).stdout
        for mangled, code in sorted(parse_sass(sass).items()):
            name, elem = _cuda_name(mangled)
            use = (usage.get(cc) or usage.get(0) or {}).get(mangled, {})
            excluded = any(s in mangled for s in EXCLUDED_SOURCES)
            why = "coherence: matrix products and column statistics" if excluded else NOT_ELEMENTWISE.get(name, "")
            display = f"{name}<{elem}>" if elem else name
            reports.append(KernelReport(
                source="cuda", name=display, key=f"cuda {display}", cc=cc, registers=use.get("REG", 0),
                shared=use.get("SHARED", 0) + CUDA_DYNAMIC_SHARED.get(name, 0), threads_per_block=CUDA_THREADS,
                element_size=_ELEMENT_SIZE.get(elem, 0), loops=hot_loops(code), base=name, judged=not why,
                not_judged_why=why))
    return reports


# --------------------------------------------------------------------------
# Triton kernels, as the benchmark cases launch them
# --------------------------------------------------------------------------


def bench_calls():
    """(name, thunk) per Triton launcher call the benchmark cases make, at their sizes (2^24 elements).

    The cases (eitp_kernels/bench/suite_*.py): finite_minmax and histogram
    entropy (automatic range: the range pass, counting and the entropy, 256 bins)
    of 16M and 4096 x 4096 (dim=1) in fp32 / fp16 / bf16, entropy of 16M int8
    codes; fake-quant per channel / tensor / group of 128, quantize and
    dequantize per channel, fp32 4096 x 4096, symmetric; the fake-quant
    backward and the soft histogram (differentiable entropy) at the same size;
    Int8Linear's GPU kernels at 4096 x 4096 (the int8_linear suite's large
    layer): the weight-only product at 1 and 16 rows, the rescale of a 64-row
    int32 product.
    """
    import torch

    from eitp_kernels.triton import entropy, finite_minmax, int8_linear, quant

    calls = []
    flat, square = (1, 1 << 24), (4096, 4096)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        tag = str(dtype).replace("torch.", "")
        for label, shape in (("16M", flat), ("4096x4096", square)):
            x = torch.empty(shape, dtype=dtype)
            calls.append((f"finite_minmax {label} {tag}", lambda x=x: finite_minmax.finite_minmax(x)))
            if dtype != torch.float16:
                calls.append((f"histogram_entropy {label} {tag}",
                              lambda x=x: entropy.histogram_entropy_rows(x, None, None, 256, False, None)))
    codes = torch.empty(flat, dtype=torch.int8)
    calls.append(("histogram_entropy 16M int8",
                  lambda: entropy.histogram_entropy_rows(codes, None, None, 256, False, None)))
    x = torch.empty(square)
    group = torch.empty((1 << 24) // 128, 128)
    per_tensor = torch.empty(flat)
    scale = torch.ones(4096)
    calls += [
        ("fake_quant 4096x4096 channel", lambda: quant.fake_quant_int8_rows(x, None, None, True)),
        ("fake_quant 4096x4096 tensor", lambda: quant.fake_quant_int8_rows(per_tensor, None, None, True)),
        ("fake_quant 4096x4096 group128", lambda: quant.fake_quant_int8_rows(group, None, None, True)),
        ("fake_quant backward 4096x4096 channel",
         lambda: quant.fake_quant_int8_rows_backward(x, x, scale, None, True)),
        ("quantize 4096x4096 channel", lambda: quant.quantize_int8_rows(x, None, None, True)),
        ("dequantize 4096x4096 channel", lambda: quant.dequantize_int8_rows(
            torch.empty(square, dtype=torch.int8), scale, None, torch.float32)),
    ]
    lo, hi = torch.zeros(1), torch.ones(1)
    calls += [
        ("soft histogram 16M fp32", lambda: entropy.soft_histogram(per_tensor, lo, hi, 256, False)),
        ("soft histogram backward 16M fp32", lambda: entropy.soft_histogram_backward(
            torch.ones(1, 256, dtype=torch.float64), per_tensor, lo, hi, 256, False)),
    ]
    codes_square = torch.empty(square, dtype=torch.int8)
    calls += [(f"int8_linear weight-only 4096x4096 m={m}", lambda m=m: int8_linear.int8_weight_only_linear(
        torch.empty(m, 4096), codes_square, scale, scale)) for m in (1, 16)]
    calls.append(("int8_linear rescale 64x4096", lambda: int8_linear.int8_linear_rescale(
        torch.empty(64, 4096, dtype=torch.int32), torch.ones(64), scale, scale, None, None, torch.float32)))
    return calls


def record_bench_launches(cc: int = 90) -> list:
    """[(call name, Launch)], one per distinct specialisation, first call that makes it."""
    from eitp_kernels import _triton, _triton_aot

    seen: dict = {}
    current = [""]

    def observer(kernel, grid, args, meta):
        launch = _triton_aot.bind(kernel, args, meta, cc, current[0])
        seen.setdefault(launch.key, (current[0], launch))
        return True  # nothing runs

    _triton.launch_observers.append(observer)
    try:
        for name, thunk in bench_calls():
            current[0] = name
            thunk()
    finally:
        _triton.launch_observers.remove(observer)
    return list(seen.values())


def _triton_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"eitp-cost-model-{os.getuid()}")


def compile_sass(launch, cc: int) -> dict:
    """Triton-compile ``launch`` for sm_<cc>; {sass, registers, shared, num_warps} or {error}."""
    import contextlib
    import importlib
    import io

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from eitp_kernels import _triton_aot

    os.environ["TRITON_CACHE_DIR"] = _triton_cache_dir()
    knobs.cache.dir = _triton_cache_dir()
    try:
        fn = _triton_aot._jit_function(getattr(importlib.import_module(launch.module), launch.kernel))
        src = ASTSource(fn, dict(launch.signature), dict(launch.constexprs),
                        {k: [list(a) for a in v] for k, v in launch.attrs})
        with contextlib.redirect_stdout(io.StringIO()):
            kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(launch.options))
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            sass = subprocess.run([tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                                  check=True).stdout
            usage = resource_usage(tool("cuobjdump"), f.name)
        registers = max((u.get("REG", 0) for fns in usage.values() for u in fns.values()), default=0)
        return {"sass": sass, "registers": registers,
                "shared": int(kernel.metadata.shared), "num_warps": int(kernel.metadata.num_warps)}
    except Exception as error:  # noqa: BLE001 - reported with its kernel
        return {"error": f"{type(error).__name__}: {error}"[:2000]}


def _triton_element(launch) -> tuple[str, int]:
    """(type, bytes) of the element the kernel streams: its input x, codes q or
    tensor-list xs; the int8 weight codes of the weight-only product (its
    activations are a few rows, reread from cache); the int32 product the
    rescale reads."""
    sig = dict(launch.signature)
    streamed = ("w_ptr",) if launch.kernel == "_weight_only_kernel" else ("x_ptr", "q_ptr", "xs_ptr", "acc_ptr")
    for name in streamed:
        if name in sig:
            ty = sig[name].lstrip("*")
            return ty, _ELEMENT_SIZE.get(ty, 0)
    return "", 0


@functools.lru_cache(maxsize=None)
def triton_reports(targets=TARGETS, workers: int = 2) -> tuple:
    """A report per Triton kernel specialisation the benchmark cases launch, per target (compiled once per
    process; Triton's cache in the temporary directory keeps compiles across processes)."""
    jobs = []
    for cc in targets:
        for origin, launch in record_bench_launches(cc):
            jobs.append((origin, launch, cc))
    if workers > 1:
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(compile_sass, [j[1] for j in jobs], [j[2] for j in jobs]))
    else:
        results = [compile_sass(launch, cc) for _, launch, cc in jobs]
    reports = []
    for (origin, launch, cc), result in zip(jobs, results):
        ty, size = _triton_element(launch)
        key = f"triton {launch.kernel} [{origin}]"
        if "error" in result:
            reports.append(KernelReport("triton", launch.kernel, key, cc, 0, 0, 0, size, [], base=launch.kernel,
                                        judged=True, not_judged_why=result["error"]))
            continue
        functions = parse_sass(result["sass"])
        code = next(iter(functions.values())) if functions else []
        excluded = any(s in launch.module for s in EXCLUDED_SOURCES)
        reports.append(KernelReport(
            source="triton", name=f"{launch.describe()} x={ty}", key=key, cc=cc, registers=result["registers"],
            shared=result["shared"], threads_per_block=32 * result["num_warps"], element_size=size,
            loops=hot_loops(code), base=launch.kernel, judged=not excluded,
            not_judged_why="coherence" if excluded else ""))
    return tuple(reports)


# --------------------------------------------------------------------------
# The test's view and the CLI
# --------------------------------------------------------------------------


def failures(reports) -> dict[str, list[str]]:
    """{kernel key: problems on any target} for the judged kernels that break a hot-loop rule."""
    found: dict[str, list[str]] = {}
    for r in reports:
        for problem in r.problems():
            found.setdefault(r.key, []).append(f"sm_{r.cc} {problem}")
    return found


def summary(problems: list[str]) -> str:
    """One line naming each broken rule once, with its worst figure over loops and targets."""
    worst: dict[str, float] = {}
    for p in problems:
        for rule, pattern, sign in (("instructions over budget (x of 0.8 budget)", r"(\d+) instructions > ([\d.]+)", 1),
                                    ("B in flight (least)", r"(\d+) B in flight", -1),
                                    ("fp64 instructions", r"(\d+) fp64", 1),
                                    ("division slow-path calls", r"(\d+) calls", 1)):
            m = re.search(pattern, p)
            if m:
                value = float(m.group(1)) / float(m.group(2)) if m.lastindex == 2 else float(m.group(1))
                old = worst.get(rule)
                worst[rule] = value if old is None else (max(old, value) if sign > 0 else min(old, value))
        if "no hot loop" in p:
            worst["no hot loop found"] = 0
    parts = []
    for rule, value in worst.items():
        parts.append(rule if rule == "no hot loop found" else
                     f"{rule.split(' (')[0]} {value:.2f}x" if "budget" in rule else f"{value:g} {rule.split(' (')[0]}")
    return ", ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eitp_kernels.bench.cost_model", description=__doc__.split("\n")[0])
    parser.add_argument("--cc", type=int, nargs="+", default=list(TARGETS), choices=sorted(GPUS))
    parser.add_argument("--only", choices=("cuda", "triton"))
    parser.add_argument("--kernel", default="", help="regular expression on the kernel name")
    parser.add_argument("--extension", help="path of a built _C library (default: the installed one)")
    parser.add_argument("--failures", action="store_true", help="print only the kernels breaking the test's rules")
    args = parser.parse_args(argv)
    targets = tuple(args.cc)
    reports = []
    if args.only != "triton":
        try:
            reports += cuda_reports(args.extension, targets)
        except Exception as error:  # noqa: BLE001 - a CPU-only build still gets the Triton half
            print(f"CUDA kernels not read: {error}", file=sys.stderr)
    if args.only != "cuda":
        reports += list(triton_reports(targets))
    pattern = re.compile(args.kernel)
    reports = [r for r in reports if pattern.search(r.name) or pattern.search(r.key)]
    if args.failures:
        for key, problems in sorted(failures(reports).items()):
            print(f"    {key!r}: {summary(problems)!r},")
        return 0
    for r in reports:
        print(r.describe())
        t = predicted_time(r)
        if t is not None and r.loops:
            print(f"  predicted {r.gpu.name}: {t * 1e6:.1f} us for {BENCH_ELEMENTS >> 20}M elements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
