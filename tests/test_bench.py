"""The benchmark harness (eitp_kernels.bench): timing, bandwidth, memory, the
CLI, its files, the peer libraries' rows and the readable output."""
import dataclasses
import json
import math
import os
import sys
import time
import warnings

import pytest
import torch

from eitp_kernels import reference
from eitp_kernels.bench import cases, cli, harness, peers, report, runner

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


def _toy_suite(fn, alternatives=(), targets=(), reference_fn=reference.finite_minmax):
    """A one-case suite on a tiny tensor whose library op is ``fn``."""

    def build(device, quick):
        return [
            cases.Case(
                op="toy", shape="64", dtype=torch.float32, make_inputs=cases.randn_inputs((64,), torch.float32),
                fn=fn, reference=reference_fn, implemented={"cpu": ("reference",)}, bytes=256,
                alternatives=tuple(alternatives), targets=tuple(targets),
            )
        ]

    return build


@pytest.fixture
def toy_op(monkeypatch):
    """Register the toy suite and let it run on the 'reference' backend."""

    def install(fn, alternatives=(), targets=(), reference_fn=reference.finite_minmax):
        monkeypatch.setitem(cases._SUITES, "toy", _toy_suite(fn, alternatives, targets, reference_fn))
        monkeypatch.setattr(runner, "kernel_backends", lambda case, device: ["reference"])

    return install


def test_cli_quick_writes_every_row_and_column_to_the_results_dir(tmp_path, capsys):
    argv = ["--quick", "--ops", "finite_minmax", "--no-compile", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    stem = tmp_path / "cpu-quick-finite_minmax"
    document = json.loads(stem.with_suffix(".json").read_text())
    expected = [
        (case.shape, case.dtype_label, backend)
        for case in cases.build_cases(["finite_minmax"], CPU, quick=True)
        for backend in runner.backends_to_run(case, CPU, with_compile=False)
    ]
    rows = document["rows"]
    assert [(r["shape"], r["dtype"], r["backend"]) for r in rows] == expected
    assert set(rows[0]) == {field.name for field in dataclasses.fields(runner.Row)} - {"output"}
    assert all(r["check"] == "ok" and r["median_ms"] > 0 and r["rate"] > 0 for r in rows)
    assert all(r["x_compile"] is None for r in rows)
    assert all(r["x_eager"] == pytest.approx(1.0) for r in rows if r["backend"] == "eager")
    assert all(r["ours_x"] > 0 for r in rows if r["backend"] == "eager")
    assert all(r["others_busy"] is None or r["others_busy"] >= 0 for r in rows)
    header = document["header"]
    assert header["copy_gbps"] > 0 and header["read_gbps"] > 0 and document["failed"] is False
    assert header["device_name"] and header["cpu_cores"] >= 1 and header["loadavg_after"] is not None
    out, err = capsys.readouterr()
    assert f"[{len(expected)}/{len(expected)} " in err and "finite_minmax 16" not in out  # progress on stderr
    text = stem.with_suffix(".txt").read_text()
    assert text == out  # the file holds exactly what was printed
    assert "legend" in out and "% copy" in out and "read-for-ownership" in out and "summary" in out
    assert max(len(line) for line in out.splitlines()) <= report.WIDTH
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not stem.with_suffix(".log").exists()  # nothing third-party was printed


def test_default_results_are_the_readme_files(tmp_path, monkeypatch, toy_op):
    """Without --out: bench-results/<device>-<quick|full>.txt/.json, the names
    benchmarks/README.md quotes (bench-results/cpu-full.txt after make bench)."""
    toy_op(lambda x: reference.finite_minmax(x))
    monkeypatch.setattr(cases, "SUITE_MODULES", ())
    monkeypatch.setattr(cases, "_SUITES", {"toy": cases._SUITES["toy"]})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--quick", "--no-compile", "--device", "cpu"]) == 0
    assert (tmp_path / "bench-results" / "cpu-quick.txt").exists()
    assert (tmp_path / "bench-results" / "cpu-quick.json").exists()
    args = cli._parse(["--device", "cpu"])
    assert cli._output_files(args)["txt"] == os.path.join("bench-results", "cpu-full.txt")


def test_cli_mismatch_fails_the_run(tmp_path, toy_op):
    toy_op(lambda x: (x.min() - 1, x.max()))  # a wrong minimum
    path = tmp_path / "bench.json"
    argv = ["--quick", "--ops", "toy", "--no-compile", "--device", "cpu", "--no-save", "--json", str(path)]
    assert cli.main(argv) == 1
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
    assert cli.main(["--quick", "--ops", "toy", "--device", "cpu", "--no-save", "--json", str(path)]) == 0
    rows = {row["backend"]: row for row in json.loads(path.read_text())["rows"]}
    assert rows["compile"]["check"] == "compile failed" and "no compiler here" in rows["compile"]["error"]
    assert rows["reference"]["check"] == "ok" and rows["reference"]["x_compile"] is None


def test_unknown_op_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--ops", "no_such_op"])
    assert exit_info.value.code == 2


def _minmax_peer(name, fn, modules=("numpy",)):
    """An alternative of the toy case computing ``fn(x)``."""
    return cases.Alternative(name, f"{name} for the test", lambda inputs: lambda: fn(*inputs), modules=modules,
                             convention="none")


def _toy_run(tmp_path, capsys, *extra):
    code = cli.main(["--quick", "--ops", "toy", "--no-compile", "--device", "cpu", "--out", str(tmp_path), *extra])
    out, err = capsys.readouterr()
    document = json.loads((tmp_path / "cpu-quick-toy.json").read_text())
    return code, out, err, {row["backend"]: row for row in document["rows"]}


def test_missing_peer_is_named_in_the_header_not_dropped(tmp_path, capsys, toy_op, monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_histogram", None)  # `import fast_histogram` now fails
    toy_op(reference.finite_minmax, alternatives=[
        _minmax_peer("right", reference.finite_minmax),
        _minmax_peer("fast-histogram", reference.finite_minmax, modules=("fast_histogram",)),
    ])
    code, out, _, rows = _toy_run(tmp_path, capsys)
    assert code == 0 and set(rows) == {"reference", "eager", "right"}
    header = out.split("legend")[0]
    assert "missing" in header and "fast-histogram" in header and "eitp-kernels[peers]" in header
    # The real entropy suite says the same when fast-histogram cannot be imported.
    entropy_cases = cases.build_cases(["histogram_entropy"], CPU, quick=False)
    assert "fast-histogram" in report.peer_status(entropy_cases, CPU, quick=False)["missing"]


def test_disagreeing_peer_is_flagged_and_not_timed(tmp_path, capsys, toy_op):
    toy_op(reference.finite_minmax, alternatives=[
        _minmax_peer("right", reference.finite_minmax),
        _minmax_peer("wrong", lambda x: (x.min() - 1, x.max())),
    ])
    code, out, _, rows = _toy_run(tmp_path, capsys)
    assert code == 0  # a peer's disagreement does not fail our run
    assert rows["right"]["check"] == "ok" and rows["right"]["median_ms"] > 0 and rows["right"]["kind"] == "peer"
    assert rows["right"]["ours_x"] > 0
    assert rows["wrong"]["check"] == "disagrees" and rows["wrong"]["median_ms"] is None
    assert "flagged" in out and "toy 64 fp32 wrong: disagrees" in out


def test_third_party_output_is_kept_out_of_the_table(tmp_path, capsys, toy_op, monkeypatch):
    """What torch.compile (or a peer) prints goes to the log file, counted in one summary line."""
    def noisy_compile(fn):
        def compiled(*args):
            os.write(2, b"W1130 graph break in user code\n  a dump line\n")
            print("stdout chatter")
            warnings.warn("a compile warning", UserWarning)
            return fn(*args)
        return compiled

    toy_op(reference.finite_minmax)
    monkeypatch.setattr(harness, "compile_reference", noisy_compile)
    code = cli.main(["--quick", "--ops", "toy", "--device", "cpu", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0
    assert "graph break" not in out + err, out + err
    assert "chatter" not in out and "a compile warning" not in out + err
    assert "third-party output kept out of the table" in out and "torch.compile" in out
    log = (tmp_path / "cpu-quick-toy.log").read_text()
    assert "graph break" in log and "a dump line" in log and "chatter" in log and "a compile warning" in log


def test_what_making_the_reference_prints_is_kept_out_of_the_table(tmp_path, capsys, toy_op):
    """A baseline built on the first reference call (the int8 suite's
    quantize_dynamic: torch.ao's deprecation notice) prints before any row."""
    noisy_once = []

    def reference_fn(x):
        if not noisy_once:
            noisy_once.append(True)
            warnings.warn("a baseline's deprecation notice", UserWarning)
            os.write(2, b"built a baseline\n")
        return reference.finite_minmax(x)

    toy_op(reference.finite_minmax, reference_fn=reference_fn)
    code = cli.main(["--quick", "--ops", "toy", "--device", "cpu", "--no-compile", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0
    assert "deprecation notice" not in out + err and "built a baseline" not in out + err, out + err
    log = (tmp_path / "cpu-quick-toy.log").read_text()
    assert "deprecation notice" in log and "built a baseline" in log


def test_rows_timed_while_the_machine_is_busy_are_flagged(tmp_path, capsys, toy_op, monkeypatch):
    clock = iter(range(0, 10**6, 50))  # other processes: 50 CPU-seconds between any two readings
    monkeypatch.setattr(harness, "_machine_busy_seconds", lambda: float(next(clock)))
    toy_op(reference.finite_minmax)
    _, out, err, rows = _toy_run(tmp_path, capsys)
    assert all(row["others_busy"] >= runner.BUSY_CORES for row in rows.values())
    assert "busy:" in err and "re-run those on an idle machine" in " ".join(out.split())
    assert any(line.rstrip().endswith("!") for line in out.splitlines())


def test_idle_machine_rows_are_not_flagged(monkeypatch):
    monkeypatch.setattr(harness, "_machine_busy_seconds", lambda: 100.0)
    load = harness.CpuLoad.start()
    time.sleep(0.01)
    assert load.others_busy() == 0.0


def test_targets_are_met_or_missed_with_their_ratios():
    case = _toy_suite(None, targets=[cases.Target("eager", 2.0), cases.Target("peer", 5.0),
                                     cases.Target("eager", 0.5, metric="memory"),
                                     cases.Target("copy", 2.0, metric="copy", copy_bytes=2_000_000),
                                     cases.Target("absent", 1.0)])(CPU, True)[0]
    rows = [runner.Row("toy", "64", "fp32", "cpp", median_ms=1.0, peak_mib=1.0, check="ok"),
            runner.Row("toy", "64", "fp32", "eager", kind="baseline", median_ms=3.0, peak_mib=4.0, check="ok"),
            runner.Row("toy", "64", "fp32", "peer", kind="peer", median_ms=4.0, check="ok")]
    results = report.check_targets([case], rows, copy_gbps=1.0)  # the copy takes 2 ms
    assert [(r.met, r.value) for r in results] == [(True, 3.0), (False, 4.0), (True, 0.25), (True, 0.5),
                                                   (None, None)]
    summary = report.format_summary(results, rows, False, [], 1.0)
    assert "3 met, 1 missed, 1 not measured" in summary and "MISSED" in summary and "4.00x" in summary


def _fake_rows(case_list, backends_of, check="compile failed", speedup=1234.5):
    """Rows with wide figures for every backend and alternative of the cases."""
    rows = []
    for case in case_list:
        for backend in backends_of(case):
            rows.append(runner.Row(case.op, case.shape, case.dtype_label, backend, kind=runner.row_kind(case, backend),
                                   median_ms=12345.678, rate=1234.5,
                                   pct_copy_bw=1234.0, x_eager=speedup, x_compile=speedup, ours_x=speedup,
                                   peak_mib=12345.6, check=check, others_busy=1.5))
    return rows


def test_full_suite_table_legend_and_header_fit_120_columns():
    full = cases.build_cases(None, CPU, quick=False)
    every = lambda case: ["cpp", "triton", "eager", "compile"] + [alt.name for alt in case.alternatives]  # noqa: E731
    rows = _fake_rows(full, every)
    table = report.format_table(rows)
    assert max(len(line) for line in table.splitlines()) <= report.WIDTH
    labels = {f"{case.shape} {case.dtype_label}" for case in full}
    assert all(label in table for label in labels)  # every case named in full, none cut short
    assert "eager=" not in table  # baselines are named in the backend column, not in the shape
    header = {"device": "cpu", "device_name": "x" * 60, "cpu_cores": 2, "torch_threads": 2, "torch": "2", "triton": "3",
              "eitp_kernels": "0", "python": "3", "copy_gbps": 1.0, "read_gbps": 1.0, "copy_buffer_bytes": 1 << 26,
              "quick": False, "compile": True, "busy_cores_before": 1.0, "loadavg_before": "1 1 1",
              "alternatives": report.peer_status(full, CPU, quick=False)}
    blocks = [report.format_header(header), report.format_legend(), report.format_notes(full, rows)]
    for speedup in (6.59, 1234.5):  # the summary's lines wrap differently with the numbers' widths
        timed = _fake_rows(full, every, check="ok", speedup=speedup)
        blocks.append(report.format_summary(report.check_targets(full, timed, 1.0), timed, False,
                                            ["/a/long/results/dir/cpu-full-histogram_entropy+coherence_loss.txt"], 1.0))
    for block in blocks:
        assert max(len(line) for line in block.splitlines()) <= report.WIDTH


def _small_case(case, make_inputs):
    return dataclasses.replace(case, make_inputs=make_inputs)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # torch's own deprecation notice
def test_every_installed_peer_agrees_with_the_reference_on_small_inputs():
    """The suites' alternatives through the runner's own check (conversion +
    stated convention), on small inputs of the same kind; missing peers skip."""
    from eitp_kernels.bench import suite_coherence_loss, suite_fake_quant_int8, suite_histogram_entropy

    entropy = next(c for c in suite_histogram_entropy.build(CPU, False) if c.alternatives and c.shape == "16M")
    quantize = next(c for c in suite_fake_quant_int8.build(CPU, False) if c.op == "quantize_int8")
    small = [_small_case(entropy, cases.randn_inputs((1 << 16,), torch.float32)),
             _small_case(quantize, cases.randn_inputs((64, 256), torch.float32))]
    small += suite_coherence_loss._barlow_cases(256, 64, quick=False)
    checked = []
    for case in small:
        inputs, expected = runner.prepare(case, CPU)
        for alt in runner.alternatives_to_run(case, CPU):
            out = alt.make(inputs)()
            assert runner.output_agrees(case, alt.name, out, expected), f"{case.name}: {alt.name}"
            checked.append(alt.name)
    assert {"torch.histc", "numpy", "torch.q_per_ch", "official BT"} <= set(checked)


def test_quantize_peer_check_allows_one_step_on_ties_only():
    codes = torch.zeros(100, 100, dtype=torch.int8)
    scales = torch.ones(100)
    one_off = codes.clone()
    one_off[0, 0] = 1
    assert peers.codes_agree((one_off, scales, None), (codes, scales, None))
    two_off = codes.clone()
    two_off[0, 0] = 2
    assert not peers.codes_agree((two_off, scales, None), (codes, scales, None))
    many_off = codes.clone()
    many_off[0, :10] = 1  # 1e-3 of the codes: more than rounding ties explain
    assert not peers.codes_agree((many_off, scales, None), (codes, scales, None))
    assert not peers.codes_agree((codes, scales * 1.001, None), (codes, scales, None))


def test_quick_leaves_out_slow_importing_peers_and_says_so():
    coherence = cases.build_cases(["coherence_loss"], CPU, quick=True)
    barlow = next(case for case in coherence if case.alternatives)
    assert [alt.name for alt in runner.alternatives_to_run(barlow, CPU, quick=True)] == ["official BT"]
    status = report.peer_status(coherence, CPU, quick=True)
    if peers.module_available("lightly"):
        assert any(label.startswith("lightly") for label in status["quick"])
        assert "lightly" in [alt.name for alt in runner.alternatives_to_run(barlow, CPU, quick=False)]
    else:
        assert "lightly" in status["missing"]


def test_entropy_compile_baseline_is_checked_by_its_stated_convention():
    # torch.compile's GPU division is not rounded once (seen on an H200): its rows get 5e-3,
    # the kernels keep the case's 1e-6, and the notes state why
    from eitp_kernels.bench import suite_histogram_entropy

    case = next(c for c in suite_histogram_entropy.build(torch.device("cpu"), quick=True) if "dim=1" in c.shape)
    expected = torch.full((4,), 5.0)
    off = expected * (1 + 1e-3)
    assert runner.output_agrees(case, "compile", off, expected)
    assert not runner.output_agrees(case, "cpp", off, expected)
    assert not runner.output_agrees(case, "compile", expected * (1 + 1e-2), expected)
    row = runner.Row(case.op, case.shape, case.dtype_label, "compile", kind="baseline", check="ok")
    assert "bin edge may land one bin over" in report.format_notes([case], [row])


def test_quantize_compile_baseline_allows_a_scale_ulp_and_one_step_on_ties_only():
    from eitp_kernels.bench import suite_fake_quant_int8

    case = next(c for c in suite_fake_quant_int8.build(torch.device("cpu"), quick=True) if c.op == "quantize_int8")
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))
    q, s, zp = reference.quantize_int8(x, granularity="channel")
    q_tie = q.clone()
    q_tie[3, 5] += 1 if q_tie[3, 5] < 127 else -1
    s_ulp = torch.nextafter(s, torch.full_like(s, math.inf))
    assert runner.output_agrees(case, "compile", (q_tie, s_ulp, zp), (q, s, zp))
    assert not runner.output_agrees(case, "cpp", (q_tie, s_ulp, zp), (q, s, zp))
    assert not runner.output_agrees(case, "compile", ((q.int() + 2).clamp(-127, 127).to(torch.int8), s, zp), (q, s, zp))


@pytest.mark.skipif(not peers.module_available("lightly"), reason="lightly (the [peers] extra) is not installed")
@pytest.mark.parametrize("mode", [[], ["--solo", "--rounds", "1"]], ids=["interleaved", "solo"])
def test_barlow_twins_ab_script_reports_every_implementation_and_the_floor(mode):
    """benchmarks/native/barlow_twins_ab.py, the timing the RESULTS' Barlow
    Twins ceiling quotes: one line per shape and mode, each with positive
    times for ours, lightly, the plain formula and the bare products, and the
    ratios computed from them (its agreement check runs first)."""
    import re
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "native" / "barlow_twins_ab.py"
    out = subprocess.run([sys.executable, str(script), "--threads", "1", "--shapes", "256x128", "--repeats", "2", *mode],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    pattern = re.compile(r"256x128 (fwd\+bwd|fwd)\s+ours\s+([\d.]+) ms\s+lightly\s+([\d.]+)\s+plain\s+([\d.]+)\s+"
                         r"products\s+([\d.]+)\s+lightly/ours ([\d.]+)\s+plain/ours ([\d.]+)\s+ours/products ([\d.]+)")
    rows = [pattern.search(line) for line in out.splitlines() if "256x128" in line]
    assert [r.group(1) for r in rows if r] == ["fwd", "fwd+bwd"], out
    for r in rows:
        ours, lightly, plain, products = (float(r.group(i)) for i in range(2, 6))
        assert min(ours, lightly, plain, products) > 0
        assert float(r.group(8)) == pytest.approx(ours / products, rel=0.01)
        if mode:  # solo: ratios of the medians
            assert float(r.group(6)) == pytest.approx(lightly / ours, rel=0.01)


def test_gpu_header_names_capability_and_multiprocessors_within_the_width():
    assert cli._gpu_properties(CPU) is None
    header = {"device": "cuda", "device_name": "NVIDIA H200", "cpu_cores": 16, "torch_threads": 16, "torch": "2",
              "triton": "3", "eitp_kernels": "0", "python": "3", "copy_gbps": 1.0, "read_gbps": 1.0,
              "copy_buffer_bytes": 1 << 28, "quick": False, "compile": True,
              "gpu": {"capability": "sm_90", "multiprocessors": 132, "memory_mib": 143771}}
    text = report.format_header(header)
    assert "sm_90, 132 multiprocessors, 143771 MiB; 16 CPU cores" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= report.WIDTH


@pytest.mark.gpu
def test_gpu_properties_of_the_current_device():
    props = cli._gpu_properties(torch.device("cuda"))
    assert props["capability"].startswith("sm_") and props["multiprocessors"] >= 1 and props["memory_mib"] > 0


def test_profile_tables_name_the_operators_of_each_backend(tmp_path):
    from eitp_kernels.bench import profile

    code = profile.main(["--device", "cpu", "--quick", "--ops", "coherence_loss", "--cases", "BT 512x256",
                         "--backends", "cpp,official BT,nosuchbackend", "--warmup", "1", "--calls", "2",
                         "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "profile-cpu.json").read_text())
    by_backend = {(p["case"], p["backend"]): p for p in data["profiles"]}
    # both cases matched by the substring, each with the two known backends; the unknown one left out
    assert set(by_backend) == {(c, b) for c in ("BT 512x256 fwd", "BT 512x256 fwd+bwd") for b in ("cpp", "official BT")}
    ours = by_backend[("BT 512x256 fwd", "cpp")]
    assert any(e["name"] == "eitp::coherence_forward" for e in ours["entries"])
    official = by_backend[("BT 512x256 fwd", "official BT")]
    assert any(e["name"] == "aten::native_batch_norm" for e in official["entries"])
    for p in data["profiles"]:
        assert p["total_us"] > 0 and all(e["us"] > 0 and e["calls"] > 0 for e in p["entries"])
        assert sum(e["share"] for e in p["entries"]) <= 1 + 1e-9
    text = (tmp_path / "profile-cpu.txt").read_text()
    assert "coherence_loss BT 512x256 fwd+bwd fp32, cpp:" in text
    assert max(len(line) for line in text.splitlines()) <= report.WIDTH


def test_profile_without_a_matching_case_is_a_usage_error(tmp_path):
    from eitp_kernels.bench import profile

    with pytest.raises(SystemExit):
        profile.main(["--device", "cpu", "--quick", "--ops", "coherence_loss", "--cases", "no such shape",
                      "--out", str(tmp_path)])


@pytest.mark.gpu
def test_profile_on_a_gpu_lists_device_kernels(tmp_path):
    from eitp_kernels.bench import profile

    code = profile.main(["--device", "cuda", "--quick", "--ops", "finite_minmax", "--cases", "fp32",
                         "--backends", "cuda", "--calls", "2", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "profile-cuda.json").read_text())
    assert data["profiles"] and all(p["unit"] == "device kernel self time" for p in data["profiles"])
    for p in data["profiles"]:
        assert p["total_us"] > 0
        assert not any(e["name"].startswith("aten::") for e in p["entries"])  # kernels, not operators


# ---------------------------------------------------------------- p95, GPU call/device split, --host


def test_percentile_interpolates_between_order_statistics():
    assert harness.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert harness.percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    assert harness.percentile([5.0], 95) == 5.0
    with pytest.raises(ValueError, match="percentile"):
        harness.percentile([], 95)


def test_device_activity_sums_only_gpu_events():
    class Span:
        def __init__(self, us):
            self.us = us

        def elapsed_us(self):
            return self.us

    class Event:
        def __init__(self, device_type, us):
            self.device_type, self.time_range = device_type, Span(us)

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [Event(cuda, 10.0), Event(cpu, 500.0), Event(cuda, 2.5)]
    assert harness.device_activity(events) == (12.5, 2)


def test_rows_carry_p95_and_the_gpu_columns_only_where_measured():
    from eitp_kernels.bench import report
    from eitp_kernels.bench.runner import Row, _fill_figures

    case = cases.Case(op="toy", shape="n", dtype=torch.float32, make_inputs=lambda d: (), fn=lambda: None,
                      reference=lambda: None, implemented={}, bytes=1000)
    row = Row("toy", "n", "fp32", "cpp")
    _fill_figures(row, case, 0.002, [0.001, 0.002, 0.003, 0.010], None, None)
    assert row.p95_ms == pytest.approx(harness.percentile([1.0, 2.0, 3.0, 10.0], 95))
    cpu_table = report.format_table([row])
    assert "p95" in cpu_table and "dev ms" not in cpu_table and "launch" not in cpu_table
    gpu = dataclasses.replace(row, backend="cuda", device_ms=0.02, call_ms=0.05, launches=3.0)
    gpu_table = report.format_table([gpu])
    header = gpu_table.splitlines()[0]
    assert "dev ms" in header and "call ms" in header and "launch" in header
    cells = gpu_table.splitlines()[-1].split()
    assert cells[cells.index("cuda") + 3: cells.index("cuda") + 6] == ["0.020", "0.050", "3"]
    widest = dataclasses.replace(gpu, shape="(4096, 4096) codes", backend="a-peer-library", kind="peer",
                                 median_ms=123.4, p95_ms=150.2, device_ms=100.1, call_ms=130.5, launches=12.5,
                                 rate=1234.5, pct_copy_bw=99.0, x_eager=12.3, x_compile=10.2, ours_x=12.3,
                                 peak_mib=1024.5, check="compile failed", others_busy=1.5)
    assert max(map(len, report.format_table([gpu, widest]).splitlines())) <= report.WIDTH


@pytest.mark.gpu
def test_gpu_rows_report_device_and_call_time_and_launches(tmp_path):
    from eitp_kernels.bench import cli

    out = tmp_path / "r.json"
    assert cli.main(["--quick", "--ops", "finite_minmax", "--no-compile", "--no-save", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    kernel_rows = [r for r in rows if r["backend"] in ("cuda", "triton")]
    assert kernel_rows and all(r["device_ms"] > 0 and r["call_ms"] > 0 and r["launches"] >= 1 for r in kernel_rows)


def test_host_mode_prints_every_op_and_backend_against_histc(capsys):
    from eitp_kernels.bench import cli, host

    assert cli.main(["--host", "--quick", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "torch.histc" in text and "launches taken over" in text
    from eitp_kernels import _triton

    backends = ["cpp"] + (["triton"] if _triton.triton is not None else [])
    for op in host.tiny_calls(torch.device("cpu")):
        for backend in backends:
            assert any(line.startswith(op + " ") and f" {backend} " in line for line in text.splitlines()), (op, backend)
