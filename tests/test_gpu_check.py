"""scripts/gpu_check.py (``make gpu-check``) on a machine without a GPU: its dry run and summaries."""
import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_TESTS = """
import pytest

@pytest.mark.gpu
def test_passes():
    pass

@pytest.mark.gpu
def test_skips():
    pytest.skip("needs a CUDA device")

@pytest.mark.gpu
def test_fails():
    assert 1 == 2, "kernel mismatch"

def test_not_gpu():
    pass
"""


def _write_bench_json(path):
    """A benchmark JSON as the benchmark CLI itself writes it."""
    from eitp_kernels.bench import report, runner

    rows = [runner.Row("histogram_entropy", "(4096, 4096)", "fp32", "cuda", median_ms=0.05, rate=1340.0,
                       pct_copy_bw=71.5, check="ok"),
            runner.Row("coherence_loss", "(256, 1024)", "bf16", "triton", median_ms=0.2, rate=410.0,
                       rate_unit="GFLOP/s", check="ok")]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    report.write_json(path, {"device": "NVIDIA H200", "copy_gbps": 1875.0}, rows)


def test_arch_list(gpu_check):
    assert gpu_check.arch_list("9.0") == "9.0"
    assert gpu_check.arch_list("8.6") == "8.6"
    assert gpu_check.arch_list("12") == "12.0"


def test_parse_bench_reads_what_the_benchmark_writes(gpu_check, tmp_path):
    _write_bench_json(str(tmp_path / "bench" / "bench.json"))
    headers, rows = gpu_check.parse_bench(str(tmp_path / "bench"))
    assert headers[0]["copy_gbps"] == 1875.0
    assert [(r["op"], r["backend"], r["pct_copy_bw"], r["copy_gbps"]) for r in rows] == [
        ("histogram_entropy", "cuda", 71.5, 1875.0), ("coherence_loss", "triton", None, 1875.0)]


def test_dry_run_writes_both_summaries(gpu_check, tmp_path, monkeypatch, capsys):
    tests = tmp_path / "test_tiny_gpu.py"
    tests.write_text(TINY_TESTS)
    real_run_step = gpu_check.run_step

    def run_step(name, cmd, out_dir, limit_s, env=None):
        if name == "bench":  # the real benchmark takes minutes here; its JSON format is the writer's own
            _write_bench_json(os.path.join(out_dir, "bench", "bench.json"))
            return {"step": name, "command": cmd, "status": "ok", "seconds": 0.0, "log": "bench.log",
                    "log_tail": ""}
        return real_run_step(name, cmd, out_dir, limit_s, env)

    monkeypatch.setattr(gpu_check, "run_step", run_step)
    monkeypatch.setattr(gpu_check, "query_device", lambda: {})
    out = tmp_path / "out"
    code = gpu_check.main([str(out), "--dry-run", "--tests", str(tests)])
    assert code == 1  # one failing test
    summary = json.loads((out / "gpu_check.json").read_text())
    outcomes = {t["test"].split("::")[-1]: t["outcome"] for t in summary["tests"]}
    assert outcomes == {"test_passes": "passed", "test_skips": "skipped", "test_fails": "failed"}
    assert summary["result"].startswith("FAILED") and "1 tests" in summary["result"]
    assert [s["step"] for s in summary["steps"]] == ["tests", "bench", "profile"]
    assert summary["steps"][-1]["status"] == "ok"  # the profile step ran for real, on the CPU
    assert "finite_minmax" in (out / "profile" / "profile-cpu.txt").read_text()
    assert summary["versions"]["torch"]
    assert len(summary["bench_rows"]) == 2
    text = (out / "gpu_check.txt").read_text()
    assert "DRY RUN" in text and "device   none" in text
    assert "failed" in text and "kernel mismatch" in text
    assert "histogram_entropy" in text and "72%" in text and "1875.0" in text
    assert "[gpu-check" in capsys.readouterr().out  # progress printed


def test_without_a_gpu_it_says_so(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "query_device", lambda: {})
    assert gpu_check.main([str(tmp_path / "out")]) == 2
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert summary["result"] == "no GPU"


def test_makefile_has_the_target():
    text = open(os.path.join(ROOT, "Makefile")).read()
    assert "gpu-check:" in text and "scripts/gpu_check.py" in text
    assert sys.executable  # the script runs with the venv's python or python3


def test_python_option_skips_the_venv_setup_and_builds_for_that_interpreter(gpu_check, tmp_path, monkeypatch):
    # the lent H200 had no network: the run used the machine's own python3 (torch 2.11)
    steps = []

    def fake_step(name, cmd, out_dir, limit_s, env=None):
        steps.append((name, cmd, limit_s, env))
        return {"step": name, "command": cmd, "status": "ok", "seconds": 0.0, "log": f"{name}.log", "log_tail": ""}

    monkeypatch.setattr(gpu_check, "query_device", lambda: {"name": "NVIDIA H200", "driver": "580",
                                                           "memory": "143771 MiB", "compute_capability": "9.0"})
    monkeypatch.setattr(gpu_check, "run_step", fake_step)
    monkeypatch.setattr(gpu_check, "versions", lambda python: {"torch": "2.11.0"})
    code = gpu_check.main([str(tmp_path / "out"), "--python", sys.executable, "--pytest-args", "-n 8",
                           "--limit", "tests=200", "--profile-args", "--device cuda --cases 'BT 4096x2048,16M fp16'"])
    assert code == 0
    names = [name for name, *_ in steps]
    assert names == ["build", "backends", "tests", "bench", "profile"]
    profile = steps[-1][1]
    assert profile[:3] == [sys.executable, "-m", "eitp_kernels.bench.profile"]
    assert profile[profile.index("--cases") + 1] == "BT 4096x2048,16M fp16"  # quoted arguments stay whole
    build = steps[0]
    assert build[1][0] == sys.executable and build[3]["TORCH_CUDA_ARCH_LIST"] == "9.0"
    tests = steps[2]
    assert tests[1][0] == sys.executable and "-n" in tests[1] and tests[2] == 200


def test_bad_limit_is_a_usage_error(gpu_check, tmp_path):
    with pytest.raises(SystemExit):
        gpu_check.main([str(tmp_path), "--dry-run", "--limit", "nosuchstep=5"])
