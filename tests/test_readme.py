"""The README's Python examples run exactly as written, and they do what their comments say.

Each ```python block is executed verbatim (warnings are errors: an example that makes the
library warn is a wrong example), then its results are checked: values against the
reference backend, shapes, dtypes, and the exact keys it logs or returns.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import warnings

import torch

import eitp_kernels
from eitp_kernels import nn as enn
from eitp_kernels import training

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# The sections whose ```python blocks this file runs and checks; a block anywhere else fails
# test_every_python_example_is_checked_here until a check for it is added below.
CHECKED_SECTIONS = ("Quick start", "API at a glance")


def _python_blocks() -> dict[str, list[str]]:
    """{'## ' heading: [the ```python blocks under it, in order]}."""
    blocks: dict[str, list[str]] = {}
    heading = None
    for part in re.split(r"^## ", README.read_text(), flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        blocks[heading.strip()] = re.findall(r"^```python\n(.*?)^```", body, flags=re.S | re.M)
    return blocks


def _section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _code(section: str) -> str:
    (code,) = _python_blocks()[section]
    return code


def _exec(code: str, namespace: dict, section: str) -> dict:
    """Run README code into ``namespace`` with warnings as errors (e.g. prepare_qat's warning
    about layers it did not convert: an example that makes the library warn is wrong)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(code, f"{README}:{section}", "exec"), namespace)
    return namespace


def _run(section: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # the examples may write files (m.eitpz)
    torch.manual_seed(0)
    return _exec(_code(section), {}, section)


def test_every_python_example_is_checked_here():
    with_code = {heading for heading, codes in _python_blocks().items() if codes}
    assert with_code == set(CHECKED_SECTIONS), "add checks for the README's new examples to tests/test_readme.py"
    assert all(len(_python_blocks()[section]) == 1 for section in CHECKED_SECTIONS)


def test_quick_start_computes_what_its_comments_say(tmp_path, monkeypatch):
    ns = _run("Quick start", tmp_path, monkeypatch)
    x, h, h_rows, loss = ns["x"], ns["h"], ns["h_rows"], ns["loss"]
    xd = x.detach()
    with eitp_kernels.use_backend("reference"):
        assert torch.equal(h, eitp_kernels.histogram_entropy(xd, base=2))
        assert torch.equal(h_rows, eitp_kernels.histogram_entropy(xd, dim=1))
        x_ref = xd.clone().requires_grad_()
        loss_ref = eitp_kernels.coherence_loss(x_ref)
        loss_ref.backward()
    assert h.shape == () and 0 < h.item() <= 8  # bits of a 256-bin histogram
    assert h_rows.shape == (4096,)
    assert loss.shape == () and torch.allclose(loss, loss_ref, rtol=1e-5)
    assert x.grad is not None and torch.allclose(x.grad, x_ref.grad, rtol=1e-4, atol=1e-9)
    q, scale, zp, x_hat = ns["q"], ns["scale"], ns["zp"], ns["x_hat"]
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.shape == (4096,) and zp is None  # one scale per row; symmetric
    # half a step of rounding, plus the rounding of x_hat = q * scale to float32
    assert torch.all((x_hat - xd).abs() <= scale[:, None] / 2 * (1 + 1e-4))
    with eitp_kernels.use_backend("reference"):
        assert torch.equal(q, eitp_kernels.quantize_int8(xd, granularity="channel", axis=0)[0])


def test_api_example_logs_exactly_the_entropies_and_trains_the_prepared_model(tmp_path, monkeypatch):
    section = "API at a glance"
    # Run as written, in two parts in one namespace: the checks of the ops' results come
    # before the training layer, whose save_compressed prunes the model (and w) in place.
    ops_part, marker, training_part = _code(section).partition("\n# EIT-P training layer\n")
    assert marker, "the API example's training-layer part moved: update this test"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns = _exec(ops_part, {}, section)
    model, monitor, x, w = ns["model"], ns["monitor"], ns["x"], ns["w"]
    weights = ["0.weight", "2.weight"]  # skip_biases=True
    assert list(ns["entropies"]) == weights
    # monitor.log(logged.update) leaves exactly the entropy tags in `logged`, with the values
    assert ns["logged"] == {f"entropy_bits/{name}": ns["entropies"][name].item() for name in weights}
    assert list(ns["logged"]) == monitor.tags()
    with eitp_kernels.use_backend("reference"):
        for name, value in ns["entropies"].items():  # in bits, as the reference computes them
            assert torch.equal(value, eitp_kernels.histogram_entropy(model.get_parameter(name).detach(), base=2))
        assert torch.equal(ns["h"], eitp_kernels.histogram_entropy(x, range=(x.min(), x.max())))
        assert torch.equal(ns["h_rows"], eitp_kernels.histogram_entropy(x, dim=1, base=2))
        assert torch.allclose(ns["h_loss"], eitp_kernels.histogram_entropy(x, bins=64, differentiable=True))
        assert torch.equal(ns["codes"], eitp_kernels.quantize_int8(w)[0])
        expected_many = torch.stack([eitp_kernels.histogram_entropy(p.detach()) for p in model.parameters()])
    assert ns["h_rows"].shape == (4096,)
    assert torch.allclose(ns["hs"], expected_many, rtol=1e-6)  # one entropy per tensor
    assert 0 < ns["bits"].item() <= 8  # bits per int8 code
    assert all(loss.shape == () and torch.isfinite(loss) for loss in ns["losses"])
    q, scale, zp, w_hat = ns["q"], ns["scale"], ns["zp"], ns["w_hat"]  # affine, per group of 128
    assert q.dtype == torch.int8 and scale.shape == zp.shape == (256, 8)
    step = scale.repeat_interleave(128, dim=1)
    assert torch.all((w_hat - w).abs() <= step / 2 * (1 + 1e-4))
    qat_model, optimizer = ns["qat_model"], ns["optimizer"]
    assert isinstance(qat_model[0], enn.FakeQuantLinear) and isinstance(qat_model[2], enn.FakeQuantLinear)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in qat_model.parameters()}  # the optimizer trains the model that runs
    assert isinstance(ns["int8_model"][0], enn.Int8Linear) and isinstance(ns["int8_model"][2], enn.Int8Linear)
    assert ns["y"].shape == (4096, 10) and torch.isfinite(ns["y"]).all()

    _exec(training_part, ns, section)
    extra_loss, metrics = ns["extra_loss"], ns["metrics"]
    assert extra_loss.shape == () and torch.isfinite(extra_loss)
    assert {"entropy_bits", "coherence_loss", "iem"} <= set(metrics)
    # save_compressed(model, sparsity=0.5) pruned the model in place, as its comment says
    for name in weights:
        zeros = (model.get_parameter(name) == 0).double().mean().item()
        assert 0.49 <= zeros <= 0.51, (name, zeros)
    report = ns["report"]
    assert isinstance(report, training.CompressionReport)
    assert report.compressed_bytes == (tmp_path / "m.eitpz").stat().st_size and report.ratio > 1
    state, float_state = ns["state"], model.state_dict()
    assert state.keys() == float_state.keys()
    assert all(state[k].shape == float_state[k].shape for k in float_state)
    assert isinstance(ns["int8_model"][0], enn.Int8Linear)
    assert ns["meter"].result.source in ("nvml-energy", "nvml-power", "rapl", "none")
    assert isinstance(ns["sched"], training.InertiaAwareLR)


def test_backends_listing_is_what_its_command_prints():
    # The Backends section shows a shell command and its output on a machine without a GPU,
    # with the CUDA build of torch that make installs (triton included). The command runs
    # as written; its lines must match wherever this machine is such a machine.
    match = re.search(r"^\$ python -c \"(.*?)\"\n(.*?)^```", _section("Backends"), flags=re.S | re.M)
    assert match, "the Backends section's `$ python -c` listing moved: update this test"
    code, shown = match.group(1), match.group(2).splitlines()
    env = {k: v for k, v in os.environ.items() if k not in ("EITP_BACKEND", "TRITON_INTERPRET")}
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                             cwd=README.parent).stdout.splitlines()
    assert [line.split(":")[0] for line in printed] == [line.split(":")[0] for line in shown]
    assert printed[:2] == shown[:2]  # reference, and cpp (the extension is built wherever the tests run)
    from eitp_kernels import _extension

    if torch.cuda.is_available() or not _extension.has_device_kernels("CUDA") \
            or importlib.util.find_spec("triton") is None:
        return  # another kind of machine: its cuda and triton lines differ by design
    assert printed == shown


def test_compiled_functions_follow_use_backend_but_not_a_later_eitp_backend(monkeypatch):
    # The Backends section's torch.compile paragraph: a compiled function recompiles inside a
    # use_backend block asking for another backend; EITP_BACKEND is read when it is traced.
    text = " ".join(_section("Backends").split())
    assert "recompiles when it is called inside a block that asks for another backend" in text
    assert "`EITP_BACKEND` is read when a function is traced; changing it afterwards does not recompile" in text
    from torch._dynamo.utils import counters

    monkeypatch.delenv("EITP_BACKEND", raising=False)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: eitp_kernels.finite_minmax(t), fullgraph=True, backend="eager")
    x = torch.randn(64)
    for _ in range(3):  # settled: later calls of the same kind reuse the graph
        compiled(x)
    graphs = counters["stats"]["unique_graphs"]
    monkeypatch.setenv("EITP_BACKEND", "reference")
    compiled(x)
    assert counters["stats"]["unique_graphs"] == graphs  # not retraced: still the backend it was traced with
    with eitp_kernels.use_backend("reference"):
        compiled(x)
    assert counters["stats"]["unique_graphs"] == graphs + 1  # retraced for the block's backend
    torch._dynamo.reset()
