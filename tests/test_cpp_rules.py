"""Rules the C++ extension owns, and what the Python side relies on them for:
the histogram bin limit."""
import os
import subprocess
import sys

import pytest
import torch

import eitp_kernels
from eitp_kernels.ops.entropy import MAX_BINS

from conftest import cpu_backends

# --------------------------------------------------------------------------
# histogram bins: at most MAX_BINS, the number of csrc/kernels/entropy.h
# --------------------------------------------------------------------------


def test_compiled_ops_take_exactly_max_bins():
    # No rows: the (0, bins) outputs cost nothing, so the limit itself is tried.
    x, lo, hi = torch.empty(0, 3), torch.empty(0), torch.empty(0)
    assert torch.ops.eitp.histogram_counts(x, lo, hi, MAX_BINS, False).shape == (0, MAX_BINS)
    assert torch.ops.eitp.soft_histogram(x, lo, hi, MAX_BINS, False).shape == (0, MAX_BINS)
    message = rf"bins must be in \[1, {MAX_BINS}\], got {MAX_BINS + 1}"
    with pytest.raises(ValueError, match=message):
        torch.ops.eitp.histogram_counts(x, lo, hi, MAX_BINS + 1, False)
    with pytest.raises(ValueError, match=message):
        torch.ops.eitp.soft_histogram(x, lo, hi, MAX_BINS + 1, False)
    with pytest.raises(ValueError, match=message):
        torch.ops.eitp.histogram_counts_many([torch.randn(3)], MAX_BINS + 1, None)


@pytest.mark.parametrize("backend", cpu_backends())
def test_every_backend_rejects_more_than_max_bins(backend):
    message = f"bins must be <= {MAX_BINS}, got {MAX_BINS + 1}"
    with eitp_kernels.use_backend(backend):
        with pytest.raises(ValueError, match=message):
            eitp_kernels.histogram_entropy(torch.randn(10), bins=MAX_BINS + 1)
        with pytest.raises(ValueError, match=message):
            eitp_kernels.histogram_entropy(torch.randn(10, requires_grad=True), bins=MAX_BINS + 1,
                                           differentiable=True)
        with pytest.raises(ValueError, match=message):
            eitp_kernels.histogram_entropy_many([torch.randn(10)], bins=MAX_BINS + 1)


def test_the_limit_holds_without_the_extension():
    code = ("import torch, eitp_kernels\n"
            "print('extension loaded:', eitp_kernels._extension.load()[0])\n"
            "try:\n"
            "    eitp_kernels.histogram_entropy(torch.randn(10), bins=(1 << 24) + 1)\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    env = dict(os.environ, EITP_NO_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "extension loaded: False" in out
    assert f"bins must be <= {MAX_BINS}" in out


# --------------------------------------------------------------------------
# The CPU kernels' hot loops are vectorized in their x86-64-v3 clones
# --------------------------------------------------------------------------

# float32 loops whose speed depends on it (a scalar loop with a branch per value
# was 3.3x slower for the histogram counts: csrc/cpu/entropy_cpu.cpp).
_VECTOR_LOOPS = ("count_float_range<float>", "span_quantize<float>", "span_fake_quant<float>",
                 "span_dequantize<float>", "span_backward<float>")


def _clone_disassembly(path: str, objdump: str) -> dict[str, str]:
    """{demangled name: disassembly} of the functions of the x86-64-v3 clones in the library."""
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", path], capture_output=True, text=True,
                          check=True).stdout
    functions, name, lines = {}, None, []
    for line in text.splitlines():
        if line.endswith(">:") and " <" in line:
            if name is not None:
                functions[name] = "\n".join(lines)
            name, lines = line.split(" <", 1)[1][:-2], []
        elif name is not None:
            lines.append(line)
    if name is not None:
        functions[name] = "\n".join(lines)
    return {k: v for k, v in functions.items() if k.endswith("[clone .arch_x86_64_v3]")}


def test_cpu_hot_loops_are_vectorized():
    import platform
    import shutil

    from eitp_kernels import _extension

    objdump = shutil.which("objdump")
    if platform.machine() != "x86_64" or objdump is None:
        pytest.skip("needs an x86-64 build and binutils' objdump")
    if os.environ.get("EITP_DEBUG", "0") not in ("", "0"):
        pytest.skip("EITP_DEBUG=1 builds with -O0: nothing is vectorized")
    if not _extension.load()[0]:
        pytest.skip("extension not built")
    import eitp_kernels._C as c

    clones = _clone_disassembly(c.__file__, objdump)
    for loop in _VECTOR_LOOPS:
        found = {name: body for name, body in clones.items() if loop in name}
        assert found, f"no x86-64-v3 clone of {loop} in {c.__file__}"
        for name, body in found.items():
            assert "%ymm" in body, f"{name} has no AVX2 vector instruction: its loop is scalar"
    # the straight-through gradient's load stays a plain load (a masked vmaskmovps load made the
    # backward ~8x slower inside autograd: quant_cpu.cpp, pass_or_zero)
    for dtype in ("float", "double", "eitp::BFloat16", "eitp::Half16"):
        for name, body in clones.items():
            if f"span_backward<{dtype}>" in name:
                assert "vmaskmov" not in body, f"{name} loads the gradient with a masked load"
