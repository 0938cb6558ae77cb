"""The benchmark harness (eitp_kernels.bench): timing, bandwidth, memory, the CLI."""
import dataclasses
import json
import time

import pytest
import torch

from eitp_kernels import reference
from eitp_kernels.bench import cases, cli, harness, runner

CPU = torch.device("cpu")


def test_time_fn_returns_positive_median_and_enough_samples():
    x = torch.randn(4096)
    median, times = harness.time_fn(lambda: x.sum(), CPU, warmup=1, reps=5, min_time=0.01)
    assert median > 0 and all(t > 0 for t in times)
    assert len(times) >= 5 and sum(times) >= 0.01
    assert min(times) <= median <= max(times)


def test_time_fn_measures_a_known_sleep():
    median, times = harness.time_fn(lambda: time.sleep(0.002), CPU, warmup=0, reps=3, min_time=0)
    assert len(times) == 3
    assert 0.002 <= median < 0.05


def test_copy_bandwidth_is_positive():
    assert harness.measure_copy_bandwidth(CPU, quick=True, nbytes=4 << 20) > 0


def test_cpu_peak_memory_of_a_known_allocation():
    peak = harness.peak_memory(lambda: torch.empty(1 << 20), CPU)  # 4 MiB of float32
    assert peak is not None
    assert abs(peak - (4 << 20)) <= 0.1 * (4 << 20)


def test_cpu_peak_memory_counts_live_bytes_not_the_sum():
    def fn():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB: 6 MiB live
        del a
        c = torch.empty(1 << 18)  # 1 MiB: 3 MiB live
        return b, c

    peak = harness.peak_memory(fn, CPU)
    assert abs(peak - (6 << 20)) <= 0.1 * (6 << 20)


def test_outputs_match():
    x = torch.tensor([1.0, float("nan")])
    assert cases.outputs_match((x, x.clone()), (x, x))
    assert not cases.outputs_match(x + 1e-3, x)
    assert not cases.outputs_match(x.double(), x)  # dtype differs
    codes = torch.tensor([1, 2], dtype=torch.int8)
    assert cases.outputs_match(codes, codes.clone())
    assert not cases.outputs_match(codes + 1, codes)


def test_size_labels():
    assert cases.size_label(1 << 24) == "16M"
    assert cases.size_label(1000) == "1000"
    assert cases.size_label(4096, 4096) == "4096x4096"


def test_kernel_backends_never_include_reference_or_interpreted_triton():
    case = cases.build_cases(["finite_minmax"], CPU, quick=True)[0]
    names = cases.kernel_backends(case, CPU)
    assert "reference" not in names and "triton" not in names
    assert runner.backends_to_run(case, CPU, with_compile=False) == names + ["eager"]


def _toy_suite(fn):
    """A one-case suite on a tiny tensor whose library op is ``fn``."""

    def build(device, quick):
        return [
            cases.Case(
                op="toy", shape="64", dtype=torch.float32, make_inputs=cases.randn_inputs((64,), torch.float32),
                fn=fn, reference=reference.finite_minmax, implemented={"cpu": ("reference",)}, bytes=256,
            )
        ]

    return build


@pytest.fixture
def toy_op(monkeypatch):
    """Register the toy suite and let it run on the 'reference' backend."""

    def install(fn):
        monkeypatch.setitem(cases._SUITES, "toy", _toy_suite(fn))
        monkeypatch.setattr(runner, "kernel_backends", lambda case, device: ["reference"])

    return install


def test_cli_quick_json_has_every_row_and_column(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert cli.main(["--quick", "--ops", "finite_minmax", "--no-compile", "--device", "cpu", "--json", str(path)]) == 0
    document = json.loads(path.read_text())
    expected = [
        (case.shape, case.dtype_label, backend)
        for case in cases.build_cases(["finite_minmax"], CPU, quick=True)
        for backend in runner.backends_to_run(case, CPU, with_compile=False)
    ]
    rows = document["rows"]
    assert [(r["shape"], r["dtype"], r["backend"]) for r in rows] == expected
    assert set(rows[0]) == {field.name for field in dataclasses.fields(runner.Row)}
    assert all(r["check"] == "ok" and r["median_ms"] > 0 and r["rate"] > 0 for r in rows)
    assert all(r["x_compile"] is None for r in rows)
    assert all(r["x_eager"] == pytest.approx(1.0) for r in rows if r["backend"] == "eager")
    assert document["header"]["copy_gbps"] > 0 and document["failed"] is False
    out, err = capsys.readouterr()
    assert f"[{len(expected)}/{len(expected)}] finite_minmax" in err
    assert "% copy bw" in out and "x compile" in out


def test_cli_mismatch_fails_the_run(tmp_path, toy_op):
    toy_op(lambda x: (x.min() - 1, x.max()))  # a wrong minimum
    path = tmp_path / "bench.json"
    assert cli.main(["--quick", "--ops", "toy", "--no-compile", "--device", "cpu", "--json", str(path)]) == 1
    checks = {row["backend"]: row["check"] for row in json.loads(path.read_text())["rows"]}
    assert checks == {"reference": "MISMATCH", "eager": "ok"}


def test_cli_reports_a_failed_compile_without_failing(tmp_path, toy_op, monkeypatch):
    def broken_compile(fn):
        def compiled(*args):
            raise RuntimeError("no compiler here")

        return compiled

    toy_op(lambda x: reference.finite_minmax(x))
    monkeypatch.setattr(harness, "compile_reference", broken_compile)
    path = tmp_path / "bench.json"
    assert cli.main(["--quick", "--ops", "toy", "--device", "cpu", "--json", str(path)]) == 0
    rows = {row["backend"]: row for row in json.loads(path.read_text())["rows"]}
    assert rows["compile"]["check"] == "compile failed" and "no compiler here" in rows["compile"]["error"]
    assert rows["reference"]["check"] == "ok" and rows["reference"]["x_compile"] is None


def test_unknown_op_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--ops", "no_such_op"])
    assert exit_info.value.code == 2
