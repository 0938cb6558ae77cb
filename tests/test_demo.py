"""eitp-train-demo end to end on a few epochs: table, JSON, plot, reproducibility; its options and extra."""
import json
import re
import sys

import pytest

from eitp_kernels.training import demo


def _run(tmp_path, name, *extra):
    out = tmp_path / name
    argv = ["--epochs", "3", "--prune-epochs", "1", "--hidden", "32", "--quiet", "--probe-steps", "3",
            "--out", str(out), *extra]
    assert demo.main(argv) == 0
    return json.loads((out / "results.json").read_text()), out


def test_demo_writes_results_and_is_seeded(tmp_path, capsys):
    first, out = _run(tmp_path, "a")
    table = capsys.readouterr().out
    assert "baseline (fp32)" in table and "EIT-P" in table and "compression" in table
    assert (out / "training_curves.png").stat().st_size > 1000
    for variant in ("baseline", "eitp"):
        assert 0.5 < first[variant]["accuracy"] <= 1.0
        assert len(first[variant]["history"]["test_accuracy"]) == 3
    assert first["eitp"]["file_bytes"] < first["baseline"]["file_bytes"]
    assert first["eitp"]["sparsity"] >= 0.49
    second, _ = _run(tmp_path, "b")
    assert second["eitp"]["accuracy"] == first["eitp"]["accuracy"]
    assert second["baseline"]["history"]["loss"] == first["baseline"]["history"]["loss"]


def test_demo_reports_the_overhead_of_each_part(tmp_path, capsys):
    results, _ = _run(tmp_path, "o")
    table = capsys.readouterr().out
    overhead = results["overhead"]
    steps = overhead["seconds_per_step"]
    assert list(steps) == ["fp32", "qat", "regularizer", "pruning"]
    assert all(s > 0 for s in steps.values())
    parts = overhead["overhead_seconds"]
    assert list(parts) == ["qat", "regularizer", "pruning"]
    # the parts add up to the full EIT-P step's overhead over fp32
    assert sum(parts.values()) == pytest.approx(steps["pruning"] - steps["fp32"], rel=1e-9, abs=1e-12)
    line = next(line for line in table.splitlines() if line.startswith("EIT-P step overhead"))
    for part in parts:
        assert f"{part} " in line and "ms (" in line


def test_overhead_parts_measure_what_they_name(monkeypatch):
    # A fake clock where each ingredient of a step costs a known time: every part
    # must get exactly its own cost (no timing of the real machine here).
    from eitp_kernels.nn import FakeQuantLinear

    clock = [0.0]
    real_step = demo._step

    def step(model, optimizer, xb, yb, regularizer=None, masks=None):
        out = real_step(model, optimizer, xb, yb, regularizer, masks)
        qat = any(isinstance(m, FakeQuantLinear) for m in model.modules())
        clock[0] += 1.0 + 0.125 * qat + 0.5 * (regularizer is not None) + 0.25 * bool(masks)
        return out

    monkeypatch.setattr(demo, "_step", step)
    monkeypatch.setattr(demo.time, "perf_counter", lambda: clock[0])
    train_set, _ = demo.load_digits_split(0)
    got = demo.measure_overheads(16, train_set, batch=32, lr=1e-3, seed=0, sparsity=0.5, steps=2, rounds=2)
    assert got["seconds_per_step"] == {"fp32": 1.0, "qat": 1.125, "regularizer": 1.625, "pruning": 1.875}
    assert got["overhead_seconds"] == {"qat": 0.125, "regularizer": 0.5, "pruning": 0.25}
    line = demo.format_overhead(got)
    assert "qat +125.000 ms (+12.5%), regularizer +500.000 ms (+50.0%), pruning +250.000 ms (+25.0%)" in line
    assert "total +875.000 ms (+87.5%)" in line


@pytest.mark.parametrize("epochs", [1, 2, 5, 30])
def test_default_prune_epochs_fit_any_epochs(epochs):
    args = demo.parse_args(["--epochs", str(epochs)])
    assert 0 < args.prune_epochs <= epochs
    assert demo.parse_args([]).prune_epochs == 8  # a quarter of the default 30, rounded up


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "5", "--prune-epochs", "8"], r"--prune-epochs must be between 0 and --epochs \(5\), got 8"),
    (["--prune-epochs", "-1"], r"--prune-epochs must be between 0 and --epochs \(30\), got -1"),
    (["--epochs", "0"], r"--epochs must be >= 1, got 0"),
    (["--batch", "0"], r"--batch must be >= 1, got 0"),
    (["--sparsity", "1.0"], r"--sparsity must be in \[0, 1\), got 1.0"),
])
def test_bad_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("module,package", [("tqdm", "tqdm"), ("sklearn", "scikit-learn")])
def test_missing_demo_extra_says_what_to_install(module, package, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if not installed
    assert demo.main(["--epochs", "1", "--quiet", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"{package} not installed" in err
    assert "pip install 'eitp-kernels[demo]'" in err
    assert not (tmp_path / "x").exists()  # nothing ran
