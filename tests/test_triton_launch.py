"""eitp_kernels._triton.launch: Triton launches run on the tensor's device, and every op launches through it.

Triton launches on the current CUDA device; a tensor on cuda:1 with cuda:0
current would be an illegal address. Checked without a GPU: a fake cuda:1
tensor, torch.cuda.device replaced by a recorder, a stand-in kernel.
"""
import ast
import contextlib
import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from eitp_kernels import _triton

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Kernel:
    __name__ = "_stand_in_kernel"

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.log.append(("run", grid, meta))
        return run


def test_launch_runs_under_the_tensors_device(monkeypatch):
    log = []

    @contextlib.contextmanager
    def device(d):
        log.append(("enter", torch.device(d)))
        yield
        log.append(("exit", torch.device(d)))

    monkeypatch.setattr(torch.cuda, "device", device)
    with FakeTensorMode():
        x = torch.empty(4, device="cuda:1")
    _triton.launch(_Kernel(log), (3,), 7, x, BLOCK=16)
    assert log == [("enter", torch.device("cuda:1")), ("run", (3,), {"BLOCK": 16}), ("exit", torch.device("cuda:1"))]


def test_launch_on_cpu_tensors_sets_no_device(monkeypatch):
    log = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: pytest.fail("no CUDA device guard for CPU tensors"))
    _triton.launch(_Kernel(log), (2, 1), torch.zeros(2))
    assert log == [("run", (2, 1), {})]


def test_every_triton_launch_in_the_ops_goes_through_launch():
    # a direct `kernel[grid](...)` would bypass the device guard and the grid check
    paths = [os.path.join(ROOT, "eitp_kernels", package, name) for package in ("ops", "triton")
             for name in sorted(os.listdir(os.path.join(ROOT, "eitp_kernels", package)))]
    for name in paths:
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(name).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                target = ast.unparse(node.func.value)
                assert not target.endswith("_kernel") and "wrap_triton" not in target, (name, node.lineno, target)
