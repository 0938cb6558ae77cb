"""EntropyMonitorCallback with the real PyTorch Lightning: a tiny module trained for a few CPU steps."""
import csv
import importlib.util
import warnings

import pytest
import torch
from torch import nn

import eitp_kernels

HAS_LIGHTNING = any(importlib.util.find_spec(m) is not None for m in ("lightning", "pytorch_lightning"))
pytestmark = pytest.mark.skipif(
    not HAS_LIGHTNING, reason="PyTorch Lightning is not installed (pip install 'eitp-kernels[lightning]')")

if HAS_LIGHTNING:
    from eitp_kernels.integrations.lightning import EntropyMonitorCallback, pl

    class TinyModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    return torch.utils.data.DataLoader(data, batch_size=8)


class _RecordingLogger(pl.loggers.Logger if HAS_LIGHTNING else object):
    def __init__(self):
        super().__init__()
        self.records = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.records.append((step, dict(metrics)))


def _fit(callback, logger, max_steps, **trainer_kwargs):
    torch.manual_seed(0)
    module = TinyModule()
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         log_every_n_steps=1, **trainer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers etc.
        trainer.fit(module, _loader())
    return module


def test_callback_logs_entropies_every_n_steps():
    logger = _RecordingLogger()
    module = _fit(EntropyMonitorCallback(every_n_steps=2, skip_biases=True, log_on_train_start=True), logger, 6)
    entropy = [(step, m) for step, m in logger.records if any(k.startswith("entropy_bits/") for k in m)]
    assert [step for step, _ in entropy] == [0, 2, 4, 6]
    for _, metrics in entropy:
        assert sorted(metrics) == ["entropy_bits/net.0.weight", "entropy_bits/net.2.weight"]
    # the last values are the trained parameters' entropies in bits
    last = entropy[-1][1]
    for name in ("net.0.weight", "net.2.weight"):
        expected = float(eitp_kernels.histogram_entropy(module.get_parameter(name).detach(), base=2))
        assert last[f"entropy_bits/{name}"] == pytest.approx(expected, rel=1e-6)
    assert any("train_loss" in m for _, m in logger.records)  # the module's own logging is untouched


def test_callback_with_csv_logger_and_gradient_accumulation(tmp_path):
    logger = pl.loggers.CSVLogger(str(tmp_path), name="run")
    _fit(EntropyMonitorCallback(every_n_steps=3, base=None), logger, 6, accumulate_grad_batches=2)
    with open(logger.experiment.metrics_file_path) as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("entropy_nats/net.0.weight")]
    assert [int(r["step"]) for r in logged] == [3, 6]  # once per optimizer step, not per batch
    assert all(float(r["entropy_nats/net.2.bias"]) >= 0 for r in logged)


def test_callback_checks_its_options_at_construction():
    with pytest.raises(ValueError, match="every_n_steps must be an int >= 1, got 0"):
        EntropyMonitorCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="min_numel must be an int >= 1"):
        EntropyMonitorCallback(min_numel=0)
