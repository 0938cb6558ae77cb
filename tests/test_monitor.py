"""EntropyMonitor: values and units, the name filter, and log() to TensorBoard or a dict logger
with one device-to-host transfer."""
import math

import pytest
import torch
from torch import nn

import eitp_kernels
from eitp_kernels.nn import EntropyMonitor, entropy_unit


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4), nn.LayerNorm(4))
    model.register_parameter("tiny", nn.Parameter(torch.randn(3)))
    return model


def test_values_and_units_bits_by_default_nats_for_base_none():
    model = _model()
    bits = EntropyMonitor(model)
    nats = EntropyMonitor(model, base=None)
    assert bits.unit == "bits" and nats.unit == "nats"
    assert [entropy_unit(b) for b in (2, 2.0, None, 10, 3)] == ["bits", "bits", "nats", "hartleys", "base3"]
    got_bits, got_nats = bits(), nats()
    assert list(got_bits) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        # histogram_entropy defaults to nats; the monitor to bits
        expected_nats = eitp_kernels.histogram_entropy(p.detach(), bins=256)
        torch.testing.assert_close(got_nats[name], expected_nats, rtol=1e-6, atol=0)
        torch.testing.assert_close(got_bits[name], expected_nats / math.log(2), rtol=1e-6, atol=1e-7)


def test_name_filter():
    model = _model()
    model[0].bias.requires_grad_(False)
    names = lambda **kw: [n for n, _ in EntropyMonitor(model, **kw).selected()]  # noqa: E731
    assert names(skip_biases=True) == ["tiny", "0.weight", "2.weight", "3.weight"]
    assert names(min_numel=5) == ["0.weight", "0.bias", "2.weight"]
    assert names(include="0.*") == ["0.weight", "0.bias"]
    assert names(include=["0.w*", "2.*"], exclude="*bias") == ["0.weight", "2.weight"]
    assert names(exclude=lambda name, p: p.dim() < 2) == ["0.weight", "2.weight"]
    assert names(trainable_only=True, skip_biases=True, min_numel=4) == ["0.weight", "2.weight", "3.weight"]
    with pytest.warns(UserWarning, match=r"include='nothing\*' matches none of the model's 7 parameters"):
        assert list(EntropyMonitor(model, include="nothing*")()) == []
    with pytest.raises(TypeError, match="include must be None, a callable"):
        EntropyMonitor(model, include=3)
    with pytest.raises(ValueError, match="min_numel must be an int >= 1, got 0"):
        EntropyMonitor(model, min_numel=0)


def test_a_filter_that_matches_nothing_warns_once_with_the_names_it_could_match():
    model = _model()
    with pytest.warns(UserWarning) as record:
        monitor = EntropyMonitor(model, include="encoder.*", exclude=["*.bais"])
    messages = [str(w.message) for w in record]
    assert len(messages) == 2, messages
    assert "include='encoder.*' matches none" in messages[0] and "'tiny', '0.weight'" in messages[0]
    assert "exclude=['*.bais'] matches none" in messages[1]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor()  # warned once, at construction
        EntropyMonitor(model, include="0.*", exclude=lambda name, p: name.endswith("bias"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_parameter_holding_nan_or_inf_reports_nan(bad):
    model = _model()
    with torch.no_grad():
        model[0].weight[3, 5] = bad
    got = EntropyMonitor(model)()
    assert math.isnan(float(got["0.weight"]))
    assert all(math.isfinite(float(v)) for name, v in got.items() if name != "0.weight")
    logged = EntropyMonitor(model).log(lambda values: None)
    assert math.isnan(logged["entropy_bits/0.weight"])


class _HostReads:
    """Counts Tensor.tolist calls; any other read of a value (item, float, ...) fails the test."""

    def __init__(self, monkeypatch):
        self.tolist_calls = 0
        real_tolist = torch.Tensor.tolist

        def tolist(t):
            self.tolist_calls += 1
            return real_tolist(t)

        def refuse(name):
            def f(*args, **kwargs):
                raise AssertionError(f"Tensor.{name} called: an extra host transfer")
            return f

        monkeypatch.setattr(torch.Tensor, "tolist", tolist)
        for name in ("item", "numpy", "__float__", "__int__", "__bool__", "__index__", "cpu"):
            monkeypatch.setattr(torch.Tensor, name, refuse(name))


def test_log_to_a_dict_logger_one_transfer(monkeypatch):
    model = _model()
    monitor = EntropyMonitor(model, skip_biases=True)
    expected = {f"entropy_bits/{n}": float(v) for n, v in monitor().items()}
    calls = []
    reads = _HostReads(monkeypatch)
    logged = monitor.log(lambda values, **kwargs: calls.append((values, kwargs)), step=7)
    logged_no_step = monitor.log(lambda values: calls.append((values, {})))
    monkeypatch.undo()
    assert reads.tolist_calls == 2  # one per log() call, for all parameters
    assert calls == [(expected, {"step": 7}), (expected, {})]
    assert logged == expected == logged_no_step
    assert all(type(v) is float for v in logged.values())


class _RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_log_to_an_add_scalar_writer_one_transfer(monkeypatch):
    model = _model()
    monitor = EntropyMonitor(model, base=None, prefix="h")
    writer = _RecordingWriter()
    reads = _HostReads(monkeypatch)
    monitor.log(writer, step=3)
    monkeypatch.undo()
    assert reads.tolist_calls == 1
    expected = monitor()
    assert [t for t, _, _ in writer.scalars] == [f"h_nats/{n}" for n in expected]
    for (tag, value, step), (name, h) in zip(writer.scalars, expected.items()):
        assert step == 3 and type(value) is float and value == pytest.approx(float(h), rel=1e-6)


def test_log_rejects_a_writer_it_cannot_use():
    with pytest.raises(TypeError, match="writer must have add_scalar"):
        EntropyMonitor(_model()).log(object(), step=1)


def test_log_to_tensorboard_summary_writer(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'eitp-kernels[test]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model = _model()
    monitor = EntropyMonitor(model, min_numel=10)
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        first = monitor.log(writer, step=0)
        with torch.no_grad():
            model[0].weight.mul_(torch.randn_like(model[0].weight).sign() * 3).round_()  # few distinct values
        second = monitor.log(writer, step=5)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(first) == sorted(
        ["entropy_bits/0.weight", "entropy_bits/0.bias", "entropy_bits/2.weight"])
    for tag in first:
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [0, 5]
        assert got[0][1] == pytest.approx(first[tag], rel=1e-6) and got[1][1] == pytest.approx(second[tag], rel=1e-6)
    assert second["entropy_bits/0.weight"] < first["entropy_bits/0.weight"]


@pytest.mark.gpu
def test_gpu_log_syncs_once_and_keeps_the_order_across_devices():
    import warnings

    model = _model().cuda()
    model[2].cpu()  # parameters on two devices: one many-op call per device, values back in named order
    monitor = EntropyMonitor(model)
    expected = {f"entropy_bits/{n}": eitp_kernels.histogram_entropy(p.detach(), base=2).item()
                for n, p in model.named_parameters()}
    only_cuda = EntropyMonitor(model, exclude="2.*")
    only_cuda.log(lambda values: None)  # warm-up (pinned-memory allocator, kernels)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            only_cuda.log(lambda values: None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # (torch also warns, once, that the debug mode is a prototype: not a sync)
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
    logged = monitor.log(lambda values: None)
    assert list(logged) == list(expected)
    for tag, value in expected.items():
        assert logged[tag] == pytest.approx(value, rel=1e-6)
