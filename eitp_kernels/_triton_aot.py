"""Ahead-of-time compilation of every Triton launch the ops make, for real GPU targets, without a GPU.

Triton's interpreter (how the Triton kernels run on a CPU machine) accepts
programs the real compiler rejects: it never specialises arguments (the JIT
turns an integer argument equal to 1 into a compile-time constant) and computes
in numpy. So the launchers are driven here on small CPU tensors with every
launch taken over by an observer (:data:`eitp_kernels._triton.launch_observers`):
each launch is bound exactly as Triton's JIT binds it for the chosen target
(its own ``create_function_from_signature`` and ``_pack_args``), giving the
signature, the constants and the alignment attributes a GPU launch would get,
and each distinct specialisation is compiled with ``triton.compile`` for
``GPUTarget("cuda", cc, 32)`` with the bundled ``ptxas``.

The calls come from one table per op (:func:`op_calls`): the argument sets
that select every launcher branch (each dtype, bins 1 / small / > 4096,
explicit range, int8/uint8 codes, one-element rows and single rows, which make
integer arguments equal to 1, soft histogram and backward, every coherence and
quant kernel). The specialisations are recorded from what the launchers do
with them, so a new launch in a launcher is compiled without editing a list.

``python -m eitp_kernels._triton_aot [--cc 86 90]`` prints one line per
compiled kernel (registers, spills, shared memory); tests/test_triton_aot.py
asserts the same in ``make test``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib
import os
import re
import sys
import tempfile

import torch

# Shared memory one block may use (bytes): sm_86 opts in to 99 KiB (Triton
# opts in), sm_80 to 163 KiB, sm_90 to 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
TARGETS = (86, 90)


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as the JIT binds it: what a compile needs, picklable."""
    module: str
    kernel: str
    signature: tuple  # ((arg name, type), ...)
    constexprs: tuple  # ((path, value), ...)
    attrs: tuple  # ((path, attributes), ...)
    options: tuple  # ((option, value), ...) from the launch's keywords
    origin: str  # the op call that made it (first seen)

    @property
    def key(self):
        return (self.module, self.kernel, self.signature, self.constexprs, self.attrs, self.options)

    def describe(self) -> str:
        consts = ", ".join(f"{self._arg_name(p)}={_show(v)}" for p, v in self.constexprs)
        return f"{self.kernel}({consts})"

    def _arg_name(self, path) -> str:
        return self.signature[path[0]][0] if len(path) == 1 else str(path)


def _show(value) -> str:
    return getattr(value, "name", None) or repr(value)


def _jit_function(kernel):
    """The JITFunction behind a kernel (it may come wrapped, e.g. by wrap_triton)."""
    import triton

    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = getattr(kernel, "fn", None) or getattr(kernel, "kernel", None)
        if kernel is None:
            raise TypeError("not a Triton JIT function")
    return kernel


def bind(kernel, args, meta, cc: int = 90, origin: str = "") -> Launch:
    """The specialisation Triton's JIT would compile for ``kernel[grid](*args, **meta)`` on sm_<cc>."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = _jit_function(kernel)
    backend = make_backend(GPUTarget("cuda", cc, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(meta)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    option_items = tuple(sorted((k, v) for k, v in kwargs.items() if k in options.__dict__))
    return Launch(fn.fn.__module__, fn.fn.__name__, tuple(signature.items()),
                  tuple(sorted(constexprs.items(), key=lambda kv: kv[0])),
                  tuple(sorted((k, tuple(map(tuple, v))) for k, v in attrs.items())), option_items, origin)


# --------------------------------------------------------------------------
# What the launchers launch
# --------------------------------------------------------------------------

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def op_calls():
    """(name, thunk) for every launcher branch; each thunk calls one Triton launcher on CPU tensors.

    One table per op. Each dtype gets the argument sets that select every
    constexpr branch and every integer argument equal to 1 (a one-element row:
    row_length, chunks and bins 1), long rows (several chunks, lengths
    divisible by 16) and short rows of odd length (small blocks), without the
    full cross product (each specialisation costs a compile per target).
    """
    from eitp_kernels.triton import coherence, entropy, finite_minmax, int8_linear, quant

    calls = []

    def add(name, fn):
        calls.append((name, fn))

    long, short, one, in_registers = (3, 40000), (37, 100), (1, 1), (5, 300)
    # histogram: (shape, bins, explicit range). bins 7: block-local histogram; 5000: one atomic per element.
    hist_cases = [(long, 7, False), (long, 5000, True), (short, 7, True), (short, 5000, False), (one, 1, False),
                  (one, 1, True)]
    # quant: (shape, symmetric, fake, static). long rows: range partials + static pass; short: per-row range;
    # in_registers: the row-in-registers kernel (rows of 257 to 16384).
    quant_cases = [(long, True, False, False), (long, False, True, False), (short, True, True, False),
                   (short, False, False, False), (one, False, False, False), (short, True, False, True),
                   (one, False, False, True), (in_registers, True, False, False), (in_registers, False, True, False)]
    for dtype in FLOATS:
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for shape in (long, short, one):
            x = torch.randn(shape).to(dtype)
            add(f"finite_minmax {dtype} {shape}", lambda x=x: finite_minmax.finite_minmax(x))
            add(f"dequant {dtype} {shape}", lambda shape=shape, d=dtype: quant.dequantize_int8_rows(
                torch.zeros(shape, dtype=torch.int8), torch.ones(shape[0]), torch.zeros(shape[0], dtype=torch.int32),
                d))
        for shape, bins, explicit in hist_cases:
            x = torch.randn(shape).to(dtype)
            lo, hi = torch.zeros(shape[0], dtype=acc), torch.ones(shape[0], dtype=acc)
            tag = f"{dtype} {shape} bins={bins} explicit={explicit}"
            add(f"counts {tag}",
                lambda x=x, lo=lo, hi=hi, b=bins, e=explicit: entropy.histogram_counts(x, lo, hi, b, e))
            add(f"entropy in one call {tag}", lambda x=x, lo=lo, hi=hi, b=bins, e=explicit:
                entropy.histogram_entropy_rows(x, lo if e else None, hi if e else None, b, e, None))
            if explicit:
                add(f"entropy in one call, range as numbers {tag}", lambda x=x, b=bins:
                    entropy.histogram_entropy_rows(x, None, None, b, True, None, [-1.0, 1.0]))
            add(f"soft {tag}",
                lambda x=x, lo=lo, hi=hi, b=bins, e=explicit: entropy.soft_histogram(x, lo, hi, b, e))
            add(f"soft backward {tag}", lambda x=x, lo=lo, hi=hi, b=bins, e=explicit: entropy.soft_histogram_backward(
                torch.ones(x.shape[0], b, dtype=torch.float64), x, lo, hi, b, e))
        for shape, symmetric, fake, static in quant_cases:
            x = torch.randn(shape).to(dtype)
            scale = torch.full((shape[0],), 0.1) if static else None
            zp = None if symmetric or not static else torch.zeros(shape[0], dtype=torch.int32)
            add(f"quant {dtype} {shape} symmetric={symmetric} fake={fake} static={static}",
                lambda x=x, sc=scale, z=zp, s=symmetric, f=fake:
                (quant.fake_quant_int8_rows if f else quant.quantize_int8_rows)(x, sc, z, s))
        for shape, symmetric in ((long, True), (short, False), (one, False)):
            x = torch.randn(shape).to(dtype)
            scale, zp = torch.full((shape[0],), 0.1), None if symmetric else torch.zeros(shape[0], dtype=torch.int32)
            add(f"fake quant backward {dtype} {shape} symmetric={symmetric}",
                lambda x=x, sc=scale, z=zp, s=symmetric: quant.fake_quant_int8_rows_backward(x, x, sc, z, s))
    for code in (torch.int8, torch.uint8):
        for shape in (long, short, one):
            x = torch.zeros(shape, dtype=code)
            add(f"counts {code} {shape}", lambda x=x: entropy.histogram_counts(x, None, None, 256, False))
            add(f"entropy in one call {code} {shape}",
                lambda x=x: entropy.histogram_entropy_rows(x, None, None, 256, False, 0.6931471805599453))
    # entropy of int64 counts: with and without a base; one bin
    for rows, bins, log_base in ((37, 7, None), (3, 5000, 0.6931471805599453), (1, 1, None)):
        add(f"entropy of counts ({rows}, {bins}) log_base={log_base}",
            lambda c=torch.ones(rows, bins, dtype=torch.int64), b=log_base: entropy.entropy_from_counts(c, b))
    # many tensors: mixed dtypes and sizes; one tensor (segments == 1); codes; each range mode
    mixed = [torch.randn(3000), torch.randn(5, 7).half(), torch.randn(10).double(), torch.randn(1)]
    for group, bins, rng in ((mixed, 7, None), (mixed, 5000, (0.0, 1.0)), ([torch.randn(1).bfloat16()], 1, None),
                             ([torch.randn(20000)], 1, (0.0, 1.0)),
                             ([torch.zeros(300, dtype=torch.int8), torch.zeros(1, dtype=torch.uint8)], 256, None)):
        add(f"many bins={bins} range={rng} {[t.dtype for t in group]}",
            lambda g=group, b=bins, r=rng: entropy.histogram_counts_many(g, b, r))
    # coherence: self and cross; one row and column; more columns than rows (the other backward order)
    for dtype in FLOATS:
        for n, d, dp, cross, squared in ((16, 40, 24, False, True), (16, 40, 24, True, False), (1, 1, 1, False, False),
                                         (1, 1, 1, True, True), (100, 3, 70, True, True)):
            x = torch.randn(n, d).to(dtype)
            y = torch.randn(n, dp).to(dtype) if cross else None
            add(f"coherence {dtype} ({n}, {d}, {dp}) cross={cross} squared={squared}",
                lambda x=x, y=y, s=squared: _coherence_both(coherence, x, y, s))
    # weight-only int8 linear: every BLOCK_M (1-16 rows), with and without bias, m = k = n = 1
    for m, k, n, dtype, bias in ((1, 1, 1, torch.float32, True), (2, 300, 37, torch.bfloat16, False),
                                 (3, 64, 64, torch.float16, True), (8, 100, 24, torch.float32, True),
                                 (16, 256, 40, torch.bfloat16, True)):
        x, w = torch.randn(m, k).to(dtype), torch.zeros(n, k, dtype=torch.int8)
        b = torch.zeros(n, dtype=dtype) if bias else None
        add(f"int8 weight-only linear {dtype} ({m}, {k}, {n}) bias={bias}",
            lambda x=x, w=w, b=b: int8_linear.int8_weight_only_linear(x, w, torch.ones(w.shape[0]), b))
    # the int8 path's rescale: per row / per tensor, affine, bias, each output dtype; m = n = 1
    for m, n, dtype, per_row, affine, bias in ((1, 1, torch.float32, True, True, True),
                                               (40, 24, torch.float32, True, False, True),
                                               (33, 16, torch.bfloat16, False, True, False),
                                               (20, 8, torch.float16, False, False, True)):
        acc = torch.zeros(m, n, dtype=torch.int32)
        row_scale = torch.ones(m if per_row else 1)
        b = torch.zeros(n, dtype=dtype) if bias else None
        sums, zp = (torch.zeros(n, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)) if affine else (None, None)
        add(f"int8 linear rescale {dtype} ({m}, {n}) per_row={per_row} affine={affine} bias={bias}",
            lambda a=acc, r=row_scale, b=b, s=sums, z=zp, d=dtype:
            int8_linear.int8_linear_rescale(a, r, torch.ones(a.shape[1]), b, s, z, d))
    return calls


def _coherence_both(coherence, x, y, squared):
    # every path (GRAM, BLOCKS, PRODUCT: eitp_kernels.ops.coherence.plan) forward and backward
    for path in (coherence.GRAM, coherence.BLOCKS, coherence.PRODUCT):
        out = coherence.coherence_forward(x, y, 1.0, 0.5, squared, 1e-5, path)
        coherence.coherence_backward(torch.ones(()), out[0], x, y, *out[1:], 1.0, 0.5, squared, path)


def record(calls=None, cc: int = 90) -> list[Launch]:
    """The distinct specialisations the launchers make for ``calls`` (default :func:`op_calls`), nothing run."""
    from eitp_kernels import _triton

    seen: dict = {}
    current = [""]

    def observer(kernel, grid, args, meta):
        launch = bind(kernel, args, meta, cc, current[0])
        seen.setdefault(launch.key, launch)
        return True  # taken over: nothing runs

    _triton.launch_observers.append(observer)
    try:
        for name, thunk in (op_calls() if calls is None else calls):
            current[0] = name
            thunk()
    finally:
        _triton.launch_observers.remove(observer)
    return list(seen.values())


# --------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Compiled:
    launch: Launch
    cc: int
    ok: bool
    error: str = ""
    shared: int = 0  # bytes of shared memory per block (Triton's dynamic allocation)
    registers: int = 0  # per thread
    spill_stores: int = 0  # bytes
    spill_loads: int = 0
    num_warps: int = 0
    approx_fp32_divisions: int = 0  # div.full.f32 / div.approx.f32 in the PTX (not correctly rounded)
    param_types: tuple = ()  # PTX .param types of the kernel's arguments, in order

    def line(self) -> str:
        if not self.ok:
            return f"sm_{self.cc} FAIL {self.launch.describe()}  [{self.launch.origin}]\n    {self.error}"
        return (f"sm_{self.cc} ok   regs={self.registers:3d} spills={self.spill_stores}/{self.spill_loads} B "
                f"shared={self.shared:6d} B warps={self.num_warps}  {self.launch.describe()}")


def _ptxas_usage(log: str) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from a ``ptxas -v`` log."""
    regs = max((int(m) for m in re.findall(r"Used (\d+) registers", log)), default=0)
    stores = max((int(m) for m in re.findall(r"(\d+) bytes spill stores", log)), default=0)
    loads = max((int(m) for m in re.findall(r"(\d+) bytes spill loads", log)), default=0)
    return regs, stores, loads


def compile_one(launch: Launch, cc: int) -> Compiled:
    """Compile ``launch`` for sm_<cc> with Triton's compiler; failures are returned, not raised.

    Triton runs its bundled ``ptxas -v``; its log (registers, spills) is printed
    with ``knobs.nvidia.dump_ptxas_log`` and captured here.
    """
    import contextlib
    import io

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        fn = _jit_function(getattr(importlib.import_module(launch.module), launch.kernel))
        src = ASTSource(fn, dict(launch.signature), dict(launch.constexprs),
                        {k: [list(a) for a in v] for k, v in launch.attrs})
        log = io.StringIO()
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(launch.options))
        regs, stores, loads = _ptxas_usage(log.getvalue())
        ptx = kernel.asm["ptx"]
        return Compiled(launch, cc, True, shared=int(kernel.metadata.shared), registers=regs, spill_stores=stores,
                        spill_loads=loads, num_warps=int(kernel.metadata.num_warps),
                        approx_fp32_divisions=len(re.findall(r"\bdiv\.(?:full|approx)\.f32", ptx)),
                        param_types=tuple(re.findall(r"\.param \.(\w+) \w+_param_\d+", ptx)))
    except Exception as error:  # noqa: BLE001 - every failure is reported with its kernel
        return Compiled(launch, cc, False, error=f"{type(error).__name__}: {error}"[:3000])


def _init_worker(cache_dir: str) -> None:
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    from triton import knobs

    knobs.cache.dir = cache_dir


def compile_all(launches: list[Launch], targets=TARGETS, workers: int = 2) -> list[Compiled]:
    """Every launch for every target, in a process pool, with a fresh Triton cache (nothing reused)."""
    jobs = [(launch, cc) for cc in targets for launch in launches]
    with tempfile.TemporaryDirectory(prefix="eitp-triton-aot-") as cache_dir:
        if workers <= 1:
            _init_worker(cache_dir)
            return [compile_one(launch, cc) for launch, cc in jobs]
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a clean triton import in each worker
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                    initargs=(cache_dir,)) as pool:
            return list(pool.map(compile_one, *zip(*jobs)))


def problems(results: list[Compiled]) -> list[str]:
    """What would fail on the GPU: a failed compile, shared memory over the target's per-block limit."""
    found = []
    for r in results:
        if not r.ok:
            found.append(r.line())
        elif r.shared > SHARED_LIMIT[r.cc]:
            found.append(f"{r.line()}\n    shared memory {r.shared} B > sm_{r.cc} limit {SHARED_LIMIT[r.cc]} B")
    return found


def spills(results: list[Compiled]) -> list[str]:
    """Kernels whose registers spill to local memory (slower, not wrong): reported, not failed."""
    return [r.line() for r in results if r.ok and (r.spill_stores or r.spill_loads)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", type=int, nargs="+", default=list(TARGETS), help="compute capabilities (86 90)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    launches = record()
    print(f"{len(launches)} distinct Triton launch specialisations; compiling for "
          + ", ".join(f"sm_{cc}" for cc in args.cc), flush=True)
    results = compile_all(launches, args.cc, args.workers)
    for r in results:
        print(r.line())
    bad = problems(results)
    print(f"{len(results) - len(bad)} of {len(results)} compiled within limits")
    spilled = spills(results)
    print(f"{len(spilled)} with register spills" + "".join(f"\n  {line}" for line in spilled))
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
