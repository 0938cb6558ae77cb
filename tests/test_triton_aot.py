"""Every Triton launch the launchers make, compiled ahead of time for sm_86 and sm_90 (no GPU needed).

The interpreter runs the Triton kernels on this machine but accepts programs
the real compiler rejects (it never turns an integer argument equal to 1 into
a constant) and computes in numpy. Here each distinct specialisation that the
launchers produce (eitp_kernels/_triton_aot.py: the launches are recorded from
one table of argument sets per op, bound as Triton's JIT binds them) goes
through Triton's compiler and bundled ptxas for both targets. Registers,
spills and shared memory of each kernel: ``python -m eitp_kernels._triton_aot``
(or this file with ``pytest -s``).
"""
import pytest

triton = pytest.importorskip("triton")

from conftest import INTERPRETER_ON  # noqa: E402

if INTERPRETER_ON:
    pytest.skip("compiles with Triton's real compiler: run without TRITON_INTERPRET", allow_module_level=True)

from eitp_kernels import _triton_aot  # noqa: E402

TARGETS = (86, 90)


@pytest.fixture(scope="module")
def launches():
    return _triton_aot.record()


@pytest.fixture(scope="module")
def compiled(launches):
    results = _triton_aot.compile_all(launches, TARGETS, workers=2)
    print(f"\n{len(launches)} Triton launch specialisations x {len(TARGETS)} targets")
    for r in results:
        print(r.line())
    spilled = _triton_aot.spills(results)
    print(f"{len(spilled)} with register spills (slower, not wrong)" + "".join(f"\n  {s}" for s in spilled))
    return results


def test_every_launch_compiles_within_limits(compiled):
    problems = _triton_aot.problems(compiled)
    assert not problems, f"{len(problems)} of {len(compiled)}:\n" + "\n".join(problems)


def test_every_kernel_and_integer_argument_equal_to_one_is_covered(launches):
    import eitp_kernels.triton.coherence as coherence
    import eitp_kernels.triton.entropy as entropy
    import eitp_kernels.triton.finite_minmax as finite_minmax
    import eitp_kernels.triton.int8_linear as int8_linear
    import eitp_kernels.triton.quant as quant

    kernels = {name for module in (coherence, entropy, finite_minmax, int8_linear, quant) for name, value in vars(module).items()
               if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel")}
    recorded = {launch.kernel for launch in launches}
    assert kernels <= recorded, f"kernels no launch reaches: {sorted(kernels - recorded)}"
    # every integer argument of every kernel is seen specialised to the constant 1 somewhere
    for kernel in sorted(kernels):
        mine = [launch for launch in launches if launch.kernel == kernel]
        ints = {name for launch in mine for name, ty in launch.signature if ty in ("i32", "i64")}
        ones = {launch.signature[path[0]][0] for launch in mine for path, value in launch.constexprs
                if launch.signature[path[0]][1] == "constexpr" and value == 1 and not isinstance(value, bool)}
        never_one = {name for name in ints if name not in ones and name not in _NEVER_ONE.get(kernel, ())}
        assert not never_one, f"{kernel}: integer arguments never launched equal to 1: {sorted(never_one)}"


# Integer arguments that cannot be 1, by the launcher code (eitp_kernels/triton/quant.py): ``chunk``
# is 16 x BLOCK >= 256 in _blocks; the range partials run only when a
# row has more than one chunk (chunks > 1 and row_length > chunk).
_NEVER_ONE = {
    "_dequant_rows_kernel": ("chunk",),
    "_fake_quant_backward_kernel": ("chunk",),
    "_range_partials_kernel": ("chunk", "chunks", "row_length"),
    "_params_from_partials_kernel": ("chunks",),  # folds the partials of those rows
    "_finite_minmax_fold_kernel": ("chunks",),  # launched only for rows of several chunks
    # eitp_kernels/triton/entropy.py: the range pass's parts are multiples of 2048 elements, >= 16384
    "_range_partials_zero_kernel": ("chunk",),
    # eitp_kernels/triton/quant.py: rows of 257 to 16384 elements only
    "_quant_row_tile_kernel": ("row_length",),
    # eitp_kernels/triton/coherence.py: the BLOCKS path's panels start at multiples of 256 rows of P
    # (row0) and of 8 tile rows (tile0); chunk_rows is a multiple of 64
    "_reduce_kernel": ("row0", "tile0"),
    "_stats_partial_kernel": ("chunk_rows",),
}


def test_fp64_coherence_gets_eps_at_fp64_and_fp32_divisions_are_correctly_rounded(compiled):
    stats = [r for r in compiled if r.ok and r.launch.kernel == "_stats_finalize_kernel"]
    assert stats
    for r in stats:
        assert "f64" in r.param_types, (r.launch.describe(), r.param_types)  # eps
        assert "f32" not in r.param_types, (r.launch.describe(), r.param_types)
    approximate = [r.line() for r in compiled if r.ok and r.approx_fp32_divisions]
    assert not approximate, "approximate fp32 division (div.full.f32) in:\n" + "\n".join(approximate)
