"""Energy metering of a code region.

    with EnergyMeter() as meter:
        train_steps()
    print(meter.result)   # EnergyResult(joules=..., seconds=..., source=..., note=...)

Sources, first that works:
1. ``nvml-energy``: NVML's total-energy counter (nvmlDeviceGetTotalEnergyConsumption,
   millijoules since driver load; Volta and newer), read at entry and exit.
2. ``nvml-power``: NVML power draw (nvmlDeviceGetPowerUsage, milliwatts)
   sampled by a background thread and integrated with the trapezoid rule,
   where the counter is unsupported.
3. ``rapl``: the CPU package counters under /sys/class/powercap
   (intel-rapl:N/energy_uj, microjoules, with wrap-around), where readable.
4. ``none``: nothing measurable; ``joules`` is None and ``note`` says why.
Never raises for lack of a meter. CUDA work is synchronized at entry and
exit so the region's GPU work is inside the measurement.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import threading
import time
from typing import Sequence

import torch

RAPL_ROOT = "/sys/class/powercap"


@dataclasses.dataclass
class EnergyResult:
    joules: float | None
    seconds: float
    source: str  # "nvml-energy", "nvml-power", "rapl" or "none"
    note: str = ""

    @property
    def watts(self) -> float | None:
        return None if self.joules is None or self.seconds <= 0 else self.joules / self.seconds


def _import_nvml():
    try:
        import pynvml  # provided by the nvidia-ml-py package

        return pynvml
    except ImportError:
        return None


class _NvmlSource:
    """NVML energy counter, or sampled power where the counter is unsupported."""

    def __init__(self, nvml, device_indices: Sequence[int], sample_interval_s: float):
        self.nvml = nvml
        nvml.nvmlInit()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in device_indices]
        self.interval = sample_interval_s
        self.samples: list[tuple[float, float]] = []  # (time s, total watts)
        self.start_mj: list[int] | None = None
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        try:
            self.start_mj = [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
            self.name = "nvml-energy"
        except nvml.NVMLError:
            self.name = "nvml-power"

    def _watts(self) -> float:
        return sum(self.nvml.nvmlDeviceGetPowerUsage(h) for h in self.handles) / 1000.0

    def _sample_loop(self) -> None:
        while not self.stop_event.is_set():
            self.samples.append((time.perf_counter(), self._watts()))
            self.stop_event.wait(self.interval)

    def start(self) -> None:
        if self.name == "nvml-power":
            self.samples.append((time.perf_counter(), self._watts()))
            self.thread = threading.Thread(target=self._sample_loop, daemon=True)
            self.thread.start()

    def stop(self) -> tuple[float, str]:
        try:
            if self.name == "nvml-energy":
                end = [self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
                return sum(e - s for e, s in zip(end, self.start_mj)) / 1000.0, ""
            self.stop_event.set()
            self.thread.join()
            self.samples.append((time.perf_counter(), self._watts()))
            joules = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(self.samples, self.samples[1:]))
            return joules, f"integrated from {len(self.samples)} power samples"
        finally:
            self.nvml.nvmlShutdown()


class _RaplSource:
    name = "rapl"

    def __init__(self, root: str = RAPL_ROOT):
        zones = sorted(glob.glob(os.path.join(root, "intel-rapl:[0-9]*")))
        zones = [z for z in zones if ":" not in os.path.basename(z)[len("intel-rapl:"):]]  # packages, not subzones
        self.zones = [z for z in zones if os.access(os.path.join(z, "energy_uj"), os.R_OK)]
        if not self.zones:
            raise OSError(f"no readable RAPL package counters under {root}")
        self.start_uj = self._read()

    def _read(self) -> list[int]:
        values = []
        for zone in self.zones:
            with open(os.path.join(zone, "energy_uj")) as f:
                values.append(int(f.read()))
        return values

    def _max_range(self, zone: str) -> int:
        try:
            with open(os.path.join(zone, "max_energy_range_uj")) as f:
                return int(f.read())
        except OSError:
            return 0

    def start(self) -> None:
        self.start_uj = self._read()

    def stop(self) -> tuple[float, str]:
        total = 0
        for zone, begin, end in zip(self.zones, self.start_uj, self._read()):
            delta = end - begin
            if delta < 0:  # the counter wrapped once
                delta += self._max_range(zone)
            total += delta
        return total / 1e6, f"CPU package counters ({len(self.zones)} zone(s)); excludes GPU and DRAM"


class EnergyMeter:
    """Context manager measuring joules and seconds of the enclosed region.

    Args:
        devices: CUDA device indices for NVML (default: all visible when CUDA is
            available, else none).
        sample_interval_s: power sampling period for the ``nvml-power`` fallback.
        nvml: the NVML module to use (default: ``pynvml`` from nvidia-ml-py);
            tests pass a stand-in.
        rapl_root: where to look for RAPL counters.
    """

    def __init__(self, devices: Sequence[int] | None = None, *, sample_interval_s: float = 0.05,
                 nvml=None, rapl_root: str = RAPL_ROOT):
        self.devices = devices
        self.sample_interval_s = sample_interval_s
        self.nvml = nvml
        self.rapl_root = rapl_root
        self.result: EnergyResult | None = None
        self._source = None
        self._why_not: list[str] = []
        self._t0 = 0.0

    def _device_indices(self) -> list[int]:
        if self.devices is not None:
            return list(self.devices)
        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []

    def _open_source(self):
        nvml = self.nvml if self.nvml is not None else _import_nvml()
        indices = self._device_indices()
        if nvml is None:
            self._why_not.append("NVML unavailable (nvidia-ml-py not installed: pip install 'eitp-kernels[gpu]')")
        elif not indices:
            self._why_not.append("no CUDA device to meter with NVML")
        else:
            try:
                return _NvmlSource(nvml, indices, self.sample_interval_s)
            except Exception as error:  # NVMLError_LibraryNotFound, driver not loaded, ...
                self._why_not.append(f"NVML failed: {error}")
        try:
            return _RaplSource(self.rapl_root)
        except OSError as error:
            self._why_not.append(str(error))
        return None

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def __enter__(self) -> "EnergyMeter":
        self._sync()
        self._why_not = []
        self._source = self._open_source()
        if self._source is not None:
            self._source.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        seconds = time.perf_counter() - self._t0
        if self._source is None:
            self.result = EnergyResult(None, seconds, "none", "; ".join(self._why_not) or "no energy source")
        else:
            joules, note = self._source.stop()
            self.result = EnergyResult(joules, seconds, self._source.name, note)
