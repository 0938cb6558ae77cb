"""EnergyMeter: NVML logic through a stand-in library (no GPU here), RAPL
through a fake powercap tree, and the nothing-measurable path."""
import os
import time

import pytest
import torch

from eitp_kernels.training import EnergyMeter


class FakeNvml:
    """Mimics pynvml: an energy counter (mJ) and a power reading (mW)."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy_supported=True, watts=50.0):
        self.energy_supported = energy_supported
        self.watts = watts
        self.energy_mj = 1_000_000
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_supported:
            raise self.NVMLError("Not Supported")
        self.energy_mj += 2500  # each read: 2.5 J more
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(self.watts * 1000)


def test_nvml_energy_counter_difference_in_joules():
    nvml = FakeNvml()
    with EnergyMeter(devices=[0, 1], nvml=nvml) as meter:
        pass
    # The stand-in's one counter rises 2.5 J per read and is read for device 0
    # then 1 at start and at stop: each device's stop read is two reads (5 J)
    # after its start read, so 2 devices * 5 J.
    assert meter.result.source == "nvml-energy"
    assert meter.result.joules == pytest.approx(10.0)
    assert nvml.inits == nvml.shutdowns == 1


def test_nvml_power_sampling_fallback_integrates_watts():
    nvml = FakeNvml(energy_supported=False, watts=40.0)
    with EnergyMeter(devices=[0], nvml=nvml, sample_interval_s=0.01) as meter:
        time.sleep(0.2)
    result = meter.result
    assert result.source == "nvml-power"
    # constant 40 W: trapezoid integral = 40 W * the sampled span (<= the region)
    assert result.joules == pytest.approx(40.0 * result.seconds, rel=0.1)
    assert result.watts == pytest.approx(40.0, rel=0.1)


def _fake_rapl(root, start_uj, max_uj=10**9):
    zone = os.path.join(root, "intel-rapl:0")
    os.makedirs(zone)
    with open(os.path.join(zone, "energy_uj"), "w") as f:
        f.write(str(start_uj))
    with open(os.path.join(zone, "max_energy_range_uj"), "w") as f:
        f.write(str(max_uj))
    return os.path.join(zone, "energy_uj")


def test_rapl_counter_with_wraparound(tmp_path):
    counter = _fake_rapl(str(tmp_path), start_uj=10**9 - 1_000_000)
    with EnergyMeter(devices=[], nvml=FakeNvml(), rapl_root=str(tmp_path)) as meter:
        with open(counter, "w") as f:
            f.write("2000000")  # wrapped: 1 J before the wrap + 2 J after
    assert meter.result.source == "rapl"
    assert meter.result.joules == pytest.approx(3.0)


def test_nothing_measurable_says_why_instead_of_failing(tmp_path):
    with EnergyMeter(devices=[], nvml=FakeNvml(), rapl_root=str(tmp_path)) as meter:
        pass
    assert meter.result.source == "none" and meter.result.joules is None
    assert "no CUDA device" in meter.result.note and "RAPL" in meter.result.note
    assert meter.result.seconds >= 0


@pytest.mark.gpu
def test_real_nvml_on_a_gpu():
    x = torch.randn(4096, 4096, device="cuda")
    with EnergyMeter() as meter:
        for _ in range(50):
            x = x @ x / 64
    assert meter.result.source.startswith("nvml")
    assert meter.result.joules > 0
