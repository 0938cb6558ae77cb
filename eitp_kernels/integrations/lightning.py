"""PyTorch Lightning callback that logs parameter entropies (``EntropyMonitor``).

Works with the unified ``lightning`` package (``lightning.pytorch``) or the
standalone ``pytorch_lightning``, whichever imports (``lightning`` first);
install one with ``pip install 'eitp-kernels[lightning]'``.

    trainer = Trainer(callbacks=[EntropyMonitorCallback(every_n_steps=100, skip_biases=True)], logger=...)

Every ``every_n_steps`` optimizer steps (``trainer.global_step``), on global
rank 0 only (parameters are replicated under DDP), it measures the module's
parameters with one ``histogram_entropy_many`` call per device and hands all
values, after one device-to-host transfer, to every logger of the trainer
(``logger.log_metrics({tag: value}, step=global_step)``: TensorBoard, CSV,
W&B, ...). Tags: ``entropy_bits/<parameter name>`` by default (the unit is
in the tag; the monitor defaults to bits, ``histogram_entropy`` to nats).
"""
from __future__ import annotations

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError as error:
        raise ImportError(
            "eitp_kernels.integrations.lightning needs PyTorch Lightning (the lightning or pytorch_lightning "
            "package): pip install 'eitp-kernels[lightning]'") from error

import torch

from eitp_kernels.nn import EntropyMonitor

__all__ = ["EntropyMonitorCallback"]


class EntropyMonitorCallback(pl.Callback):
    """Log ``EntropyMonitor`` values of the LightningModule every ``every_n_steps`` steps.

    Args:
        every_n_steps: log when ``trainer.global_step`` is a multiple of it
            (after the optimizer step; once per step under gradient accumulation).
        log_on_train_start: also log the initial parameters at step 0.
        **monitor_kwargs: ``EntropyMonitor``'s options (bins, range, base,
            trainable_only, include, exclude, skip_biases, min_numel, prefix).
    """

    def __init__(self, every_n_steps: int = 50, *, log_on_train_start: bool = False, **monitor_kwargs):
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"EntropyMonitorCallback: every_n_steps must be an int >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.log_on_train_start = bool(log_on_train_start)
        self.monitor_kwargs = monitor_kwargs
        self.monitor: EntropyMonitor | None = None
        self._last_logged_step: int | None = None
        EntropyMonitor(torch.nn.Module(), **monitor_kwargs)  # bad options fail here, not mid-training

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.monitor = EntropyMonitor(pl_module, **self.monitor_kwargs)

    def _log(self, trainer) -> None:
        step = trainer.global_step
        if step == self._last_logged_step or not trainer.is_global_zero or not trainer.loggers:
            return
        self._last_logged_step = step

        def to_loggers(values, step):
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)

        self.monitor.log(to_loggers, step=step)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.log_on_train_start:
            self._log(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # 0 until the first optimizer step (gradient accumulation)
        if step > 0 and step % self.every_n_steps == 0:
            self._log(trainer)
