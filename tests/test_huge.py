"""64-bit indexing: tensors with more than 2^31 elements (slow; not in CI).

CPU kernels (cpp backend), on this 24 GiB machine with peak memory kept under
~7 GiB (measured on 2 shared cores: 66 s, peak RSS 6.7 GiB): int8 codes for entropy (one row, and rows whose offsets pass 2^31)
and fp16 input for quantization / dequantization, with the values that decide
the answer (the absmax, a different code) placed beyond element 2^31, so a
32-bit index would give a visibly wrong scale or count.

Triton: the interpreter cannot run 2^31 elements, so the kernels' sources are
checked for int64 offsets (every ``tl.program_id`` is widened to int64 before
it is multiplied into an offset) and a moderately large row (2^20 elements)
runs through the interpreter against the reference.

    pytest -m slow tests/test_huge.py -s                          # CPU kernels, ~1 min, ~6.5 GiB
    TRITON_INTERPRET=1 pytest -m triton_interpret tests/test_huge.py
"""
from __future__ import annotations

import inspect
import math
import re
import resource
import time

import pytest
import torch

import eitp_kernels as ek
from eitp_kernels import reference
from conftest import INTERPRETER_ON

N = 2**31 + 2**21  # > 2^31 elements, a multiple of 256
CHUNK = 2**28


def _peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _needs_cpp():
    if not ek.backends()["cpp"].available:
        pytest.skip("needs the compiled extension")


def _entropy_from_counts(counts):
    c = torch.tensor(counts, dtype=torch.float64)
    p = c[c > 0] / c.sum()
    return float(-(p * p.log()).sum())


@pytest.mark.slow
def test_entropy_codes_over_2_31():
    _needs_cpp()
    t0 = time.time()
    codes = torch.empty(N, dtype=torch.int8)
    head = 2**31
    codes[:head].view(-1, 256).copy_(torch.arange(-128, 128, dtype=torch.int8))  # each code 2^23 times
    codes[head:].fill_(5)  # 2^21 more of code 5, all beyond index 2^31
    counts = [2**23] * 256
    counts[5 + 128] += 2**21
    want = _entropy_from_counts(counts)
    with ek.use_backend("cpp"):
        got = ek.histogram_entropy(codes).item()
        assert math.isclose(got, want, rel_tol=1e-6), (got, want)
        got_many = ek.histogram_entropy_many([codes[:16], codes])
        assert math.isclose(got_many[1].item(), want, rel_tol=1e-6)
        # Two rows: the second starts at 2^30 + 2^20 and ends past 2^31.
        rows = ek.histogram_entropy(codes.view(2, N // 2), dim=1)
    half = N // 2  # 2^30 + 2^20: row 0 = 2^22 full patterns + 2^12 patterns; row 1 the rest
    c0 = [half // 256] * 256
    c1 = [(head - half) // 256] * 256
    c1[5 + 128] += 2**21
    torch.testing.assert_close(rows.double(), torch.tensor([_entropy_from_counts(c0), _entropy_from_counts(c1)],
                                                           dtype=torch.float64), rtol=1e-6, atol=0)
    print(f"\nentropy of {N} int8 codes: {time.time() - t0:.1f} s, peak RSS {_peak_gib():.2f} GiB")


def _check_chunks(q, expected_row, upto):
    """q[:upto].view(-1, 256) equals expected_row everywhere, checked in chunks."""
    view = q[:upto].view(-1, 256)
    step = CHUNK // 256
    for r in range(0, view.shape[0], step):
        assert torch.equal(view[r:r + step], expected_row.expand(min(step, view.shape[0] - r), 256)), r


@pytest.mark.slow
def test_quantize_fp16_over_2_31():
    _needs_cpp()
    t0 = time.time()
    head = 2**31
    pattern = ((torch.arange(256, dtype=torch.float32) - 128) / 128).to(torch.float16)  # |v| <= 1
    x = torch.empty(N, dtype=torch.float16)
    x[:head].view(-1, 256).copy_(pattern)
    x[head:].zero_()
    x[-1] = 4.0  # the absmax sits beyond element 2^31
    with ek.use_backend("cpp"):
        # Per channel, 2 rows: row 1's offsets pass 2^31; its absmax (4) is the last element.
        qc, sc, _ = ek.quantize_int8(x.view(2, N // 2), granularity="channel", axis=0)
        torch.testing.assert_close(sc, torch.tensor([1.0, 4.0]) / 127, rtol=0, atol=0)
        assert qc[1, -1].item() == 127
        want_row0, _, _ = reference.quantize_int8(pattern, scale=sc[0])
        _check_chunks(qc.view(-1), want_row0, N // 2)
        del qc  # peak: x (4 GiB) + one int8 copy (2 GiB)
        q, s, _ = ek.quantize_int8(x)
        assert s.item() == torch.tensor(4.0 / 127, dtype=torch.float32).item(), s
        want_row, _, _ = reference.quantize_int8(pattern, scale=s)
        _check_chunks(q, want_row, head)
        assert q[-1].item() == 127 and int(q[head:-1].abs().max()) == 0
        del x
        # Dequantize the >2^31 codes back to fp16.
        out = ek.dequantize_int8(q, s, dtype=torch.float16)
        want_out = reference.dequantize_int8(want_row, s, dtype=torch.float16)
        assert out[-1].item() == reference.dequantize_int8(torch.tensor([127], dtype=torch.int8), s,
                                                           dtype=torch.float16).item()
        view = out[:head].view(-1, 256)
        step = CHUNK // 256
        for r in range(0, view.shape[0], step):
            assert torch.equal(view[r:r + step], want_out.expand(min(step, view.shape[0] - r), 256)), r
    print(f"\nquantize/dequantize of {N} fp16 values: {time.time() - t0:.1f} s, peak RSS {_peak_gib():.2f} GiB")


# --------------------------------------------------------------------------
# Triton: int64 offsets
# --------------------------------------------------------------------------


def _triton_kernels():
    import eitp_kernels.triton.coherence as m1
    import eitp_kernels.triton.entropy as m2
    import eitp_kernels.triton.finite_minmax as m3
    import eitp_kernels.triton.quant as m4

    found = {}
    for mod in (m1, m2, m3, m4):
        for name, obj in vars(mod).items():
            fn = getattr(obj, "fn", None)
            if fn is not None and callable(fn) and "tl." in inspect.getsource(fn):
                found[f"{mod.__name__.rsplit('.', 1)[1]}.{name}"] = inspect.getsource(fn)
    return found


def test_triton_kernels_widen_program_ids():
    """Every program id is widened to int64 before it scales an offset: either
    ``tl.program_id(k).to(tl.int64)`` directly, or each name derived from a
    narrow pid is widened (``name.to(tl.int64)``) and never multiplied as is."""
    pytest.importorskip("triton")
    kernels = _triton_kernels()
    assert len(kernels) >= 10, sorted(kernels)
    checked = 0
    for name, src in kernels.items():
        code = "\n".join(line.split("#", 1)[0] for line in src.splitlines())
        for var, rest in re.findall(r"(\w+)\s*=\s*tl\.program_id\(\d\)(.*)", code):
            checked += 1
            if rest.startswith(".to(tl.int64)"):
                continue
            derived = set(re.findall(rf"(\w+)\s*=\s*[^\n]*\b{var}\b", code)) - {var}
            assert derived, f"{name}: narrow program id {var!r} used directly"
            for d in derived | {var}:
                # A narrow id may not scale an offset: no product of it inside a
                # pointer expression or with a block size / stride / length. (A
                # small literal, e.g. the slot pid * 2 of a partials buffer,
                # stays far below 2^31 and is allowed.)
                for line in code.splitlines():
                    for m in re.finditer(rf"\b{d}\s*\*\s*(\w+)|(\w+)\s*\*\s*{d}\b", line):
                        other = m.group(1) or m.group(2)
                        if other.isdigit():
                            continue
                        assert "_ptr" not in line and not re.search(r"BLOCK|stride|len|^s[xy]?$|^N$|^D", other), \
                            f"{name}: {d!r} multiplied without int64: {line.strip()!r}"
            for d in derived:
                assert f"{d}.to(tl.int64)" in code, f"{name}: {d!r} (from program id {var!r}) never widened"
    assert checked >= 10
    print(f"\ntriton int64 offsets: {len(kernels)} kernels, {checked} program ids checked")


@pytest.mark.triton_interpret
@pytest.mark.skipif(not INTERPRETER_ON, reason="interpreter-scale check")
def test_triton_moderately_large_row():
    """A 2^20-element row (many programs per row) through the interpreter."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2**20, generator=g)
    x[-1] = 50.0  # absmax and range max at the very end
    codes = torch.randint(-128, 128, (2, 2**19), generator=g, dtype=torch.int8)
    for fn in (lambda: ek.histogram_entropy(x, bins=1000),
               lambda: ek.histogram_entropy(codes, dim=1),
               lambda: ek.quantize_int8(x),
               lambda: ek.quantize_int8(x.view(4, -1), granularity="channel", symmetric=False),
               lambda: ek.finite_minmax(x),
               lambda: ek.histogram_entropy_many([x[:7], codes[1], x], base=2)):
        with ek.use_backend("reference"):
            want = fn()
        with ek.use_backend("triton"):
            got = fn()
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            if b is None:
                continue
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
