"""What `import eitp_kernels` costs: no triton, no torch._inductor, no torch._dynamo.

Triton's backend runs only on a GPU (or under TRITON_INTERPRET=1), so a CPU
machine must not pay for importing it, nor for torch._inductor (which
torch.library.triton_op imports) or torch._dynamo (which
torch.compiler.assume_constant_result imports): each costs about as much as
torch itself. Each check runs in a fresh interpreter, since this test process
has imported everything already. The time is measured, not tested: see
`python tests/test_import.py` (prints the median of fresh-process import times).
"""
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("triton", "torch._inductor", "torch._dynamo", "pynvml")

_MODULES_ADDED = """
import json, sys
import torch
before = set(sys.modules)
import eitp_kernels
{after}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _modules_added_by_import(after="", env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "EITP_BACKEND")}
    env.update(env_extra or {})
    result = subprocess.run([sys.executable, "-c", _MODULES_ADDED.format(after=after)], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    *printed, modules = result.stdout.strip().splitlines()
    return json.loads(modules), "\n".join(printed)


def _heavy(modules):
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_import_loads_neither_triton_nor_inductor_nor_dynamo_and_backends_say_why():
    # backends() must not import triton on a CPU machine either, and still give the reason.
    after = "" if torch.cuda.is_available() else "print(eitp_kernels.backends()['triton'])"
    added, printed = _modules_added_by_import(after=after)
    assert _heavy(added) == [], _heavy(added)
    assert all(m.startswith("eitp_kernels") or "." not in m for m in added), added
    if not torch.cuda.is_available():
        assert printed.startswith("triton: unavailable (") and ("no GPU" in printed or "not installed" in printed)


def test_interpreter_request_defines_the_triton_ops_at_import():
    pytest.importorskip("triton")
    added, _ = _modules_added_by_import(after="import torch; torch.ops.eitp_triton.finite_minmax",
                                     env_extra={"TRITON_INTERPRET": "1"})
    assert "triton" in added and "eitp_kernels.triton.finite_minmax" in added


def test_triton_ops_defined_first_inside_a_compiled_function():
    # On a GPU a compiled function can be where the triton backend is first found available:
    # dynamo must run the definition (imports, op registrations) rather than trace it.
    pytest.importorskip("triton")
    code = ("import torch, eitp_kernels\n"
            "from eitp_kernels import _registration\n"
            "f = torch.compile(lambda x: x + int(_registration.define_triton_ops()), fullgraph=True)\n"
            "print(f(torch.zeros(1)).item(), hasattr(torch.ops.eitp_triton, 'finite_minmax'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "EITP_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["1.0", "True"], out.stdout


def test_the_constant_marking_is_what_assume_constant_result_sets():
    # nn/int8.py and _registration mark functions by hand (the decorator imports torch._dynamo).
    from eitp_kernels import _registration
    from eitp_kernels.nn import int8

    def probe():
        return True

    decorated = torch.compiler.assume_constant_result(probe)
    marks = {k: v for k, v in vars(decorated).items()}
    for marked in (int8._onednn_enabled, _registration.define_triton_ops):
        assert marks and all(getattr(marked, k, None) == v for k, v in marks.items()), (marked, marks)


def _import_seconds(statement):
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return float(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    # The measurement behind "import eitp_kernels takes at most 1.3x import torch":
    # fresh processes, the two statements interleaved, medians.
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    torch_s, both_s = [], []
    for _ in range(repeats):
        torch_s.append(_import_seconds("import torch"))
        both_s.append(_import_seconds("import eitp_kernels"))
    a, b = statistics.median(torch_s), statistics.median(both_s)
    print(f"import torch: {a:.3f} s, import eitp_kernels (torch included): {b:.3f} s, ratio {b / a:.2f} "
          f"(medians of {repeats} interleaved fresh processes)")
