"""The test set-up's own rules (tests/conftest.py): which tests skip where."""
import pytest

import conftest


class _Item:
    def __init__(self, *markers):
        self.keywords = {m: True for m in markers}
        self.added = []

    def add_marker(self, marker):
        self.added.append(marker)


def _skipped(item):
    return any(getattr(m, "name", None) == "skip" for m in item.added)


@pytest.mark.parametrize("has_cuda", [False, True])
def test_interpreter_tests_skip_without_the_interpreter_even_on_a_gpu_machine(monkeypatch, has_cuda):
    monkeypatch.setattr(conftest, "HAS_CUDA", has_cuda)
    monkeypatch.setattr(conftest, "INTERPRETER_ON", False)
    interp, gpu, plain = _Item("triton_interpret"), _Item("gpu"), _Item()
    conftest.pytest_collection_modifyitems(None, [interp, gpu, plain])
    assert _skipped(interp)
    assert _skipped(gpu) is (not has_cuda)
    assert not _skipped(plain)


def test_interpreter_tests_run_with_the_interpreter(monkeypatch):
    monkeypatch.setattr(conftest, "HAS_CUDA", False)
    monkeypatch.setattr(conftest, "INTERPRETER_ON", True)
    interp = _Item("triton_interpret")
    conftest.pytest_collection_modifyitems(None, [interp])
    assert not _skipped(interp)
