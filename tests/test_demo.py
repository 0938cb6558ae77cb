"""eitp-train-demo end to end on a few epochs: table, JSON, plot, reproducibility."""
import json

from eitp_kernels.training import demo


def _run(tmp_path, name):
    out = tmp_path / name
    assert demo.main(["--epochs", "3", "--prune-epochs", "1", "--hidden", "32", "--quiet", "--out", str(out)]) == 0
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
