"""The CPU kernels' thread pool (csrc/cpu/parallel_cpu.h, docs/design.md §3.4):
the same bits at 1 and 2 threads on inputs that take the parallel paths
(whole-row chunks, spans of one long row, histogram items), and a forked child
that computes with a fresh pool instead of waiting on its parent's workers."""
from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

import eitp_kernels as ek

pytestmark = pytest.mark.skipif("cpp" not in ek.backends(), reason="needs the compiled extension")


def _results(x_rows, x_long):
    with ek.use_backend("cpp"):
        return [
            ek.quantize_int8(x_rows, granularity="channel")[0],
            ek.quantize_int8(x_long, granularity="tensor")[:2],
            ek.fake_quant_int8(x_long, granularity="tensor"),
            ek.dequantize_int8(*ek.quantize_int8(x_rows, granularity="channel")[:2], granularity="channel"),
            ek.finite_minmax(x_long),
            ek.finite_minmax(x_rows, dim=1),
            ek.histogram_entropy(x_long, bins=300),
            ek.histogram_entropy_many([x_rows, x_long], bins=64),
        ]


def _inputs():
    g = torch.Generator().manual_seed(3)
    x_rows = torch.randn(257, 1031, generator=g)  # 257 rows: whole-row chunks
    x_long = torch.randn(1 << 19, generator=g) * 3 + 1  # one row: spans and histogram items
    x_long[12345] = float("nan")
    return x_rows, x_long


def test_two_threads_give_one_threads_bits():
    before = torch.get_num_threads()
    x_rows, x_long = _inputs()
    try:
        torch.set_num_threads(1)
        serial = _results(x_rows, x_long)
        torch.set_num_threads(2)
        for _ in range(3):
            torch.testing.assert_close(_results(x_rows, x_long), serial, rtol=0, atol=0, equal_nan=True)
    finally:
        torch.set_num_threads(before)


def _as_lists(results):
    return [t.tolist() if isinstance(t, torch.Tensor) else [u.tolist() for u in t] for t in results]


def _child(queue, x_rows, x_long):
    # Only the library's kernels run at 2 threads here: torch's own OpenMP
    # regions are not fork-safe once the parent has used them (libgomp).
    torch.set_num_threads(2)
    queue.put(_as_lists(_results(x_rows, x_long)[4:7]))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_its_own_pool():
    before = torch.get_num_threads()
    x_rows, x_long = _inputs()
    torch.set_num_threads(2)
    try:
        expected = _as_lists(_results(x_rows, x_long)[4:7])  # the parent's pool workers now exist
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child, args=(queue, x_rows, x_long))
        child.start()
        try:
            got = queue.get(timeout=120)
            child.join(timeout=60)
        finally:
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
    finally:
        torch.set_num_threads(before)
    assert str(got) == str(expected)
