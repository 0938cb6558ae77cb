"""eitp_kernels.nn.load_int8 against truncated, corrupted and hostile state dicts.

Every damaged input must raise a clear TypeError/ValueError/RuntimeError (the
message names the offending key), never load garbage silently, and never
allocate a size the state claims (a tensor claiming 2^40 elements is an
expanded view of one element: materializing it would exhaust memory).
"""
from __future__ import annotations

import io
import pickle
import resource

import pytest
import torch

from eitp_kernels import nn as enn

HUGE = 2**40


def _factory():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


@pytest.fixture
def state():
    return enn.export_int8(enn.prepare_qat(_factory(), quantize_activations=True))


def _huge(dtype):
    return torch.zeros(1, dtype=dtype).expand(HUGE)


def _edit(state, **changes):
    s = dict(state)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del s[key]
        else:
            s[key] = value
    return s


def test_roundtrip_loads(state):
    model = enn.load_int8(state, _factory)
    assert isinstance(model[0], enn.Int8Linear) and isinstance(model[2], enn.Int8Linear)
    x = torch.randn(3, 8)
    ref = enn.prepare_qat(_factory(), quantize_activations=True)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


BAD = {
    # wrong dtypes
    "codes-float": (lambda s: _edit(s, **{"0__weight_int8": s["0.weight_int8"].float()}), TypeError, "0.weight_int8"),
    "codes-uint8": (lambda s: _edit(s, **{"0__weight_int8": s["0.weight_int8"].view(torch.uint8)}), TypeError,
                    "0.weight_int8"),
    "codes-not-tensor": (lambda s: _edit(s, **{"0__weight_int8": [[1, 2]]}), TypeError, "0.weight_int8"),
    "scale-int": (lambda s: _edit(s, **{"0__weight_scale": s["0.weight_scale"].int()}), TypeError, "0.weight_scale"),
    "scale-complex": (lambda s: _edit(s, **{"0__weight_scale": s["0.weight_scale"].to(torch.complex64)}), TypeError,
                      "0.weight_scale"),
    "mode-float": (lambda s: _edit(s, **{"2__activation_mode": torch.tensor(1.0)}), TypeError, "2.activation_mode"),
    # lying shapes
    "codes-shape": (lambda s: _edit(s, **{"0__weight_int8": torch.zeros(4, 9, dtype=torch.int8)}), ValueError,
                    "0.weight_int8"),
    "codes-transposed": (lambda s: _edit(s, **{"0__weight_int8": s["0.weight_int8"].t()}), ValueError, "0.weight_int8"),
    "codes-huge": (lambda s: _edit(s, **{"0__weight_int8": _huge(torch.int8)}), ValueError, "0.weight_int8"),
    "codes-huge-2d": (lambda s: _edit(s, **{"0__weight_int8": torch.zeros(1, 1, dtype=torch.int8).expand(2**20, 2**20)}),
                      ValueError, "0.weight_int8"),
    "scale-shape": (lambda s: _edit(s, **{"0__weight_scale": torch.ones(5)}), ValueError, "0.weight_scale"),
    "scale-huge": (lambda s: _edit(s, **{"0__weight_scale": _huge(torch.float32)}), ValueError, "0.weight_scale"),
    "mode-huge": (lambda s: _edit(s, **{"0__activation_mode": _huge(torch.int8)}), ValueError, "0.activation_mode"),
    "mode-1d": (lambda s: _edit(s, **{"0__activation_mode": torch.tensor([1], dtype=torch.int8)}), ValueError,
                "0.activation_mode"),
    "codes-meta": (lambda s: _edit(s, **{"0__weight_int8": torch.empty(4, 8, dtype=torch.int8, device="meta")}),
                   ValueError, "0.weight_int8"),
    # bad values
    "mode-unknown": (lambda s: _edit(s, **{"0__activation_mode": torch.tensor(9, dtype=torch.int8)}), ValueError,
                     "0.activation_mode"),
    "scale-zero": (lambda s: _edit(s, **{"0__weight_scale": torch.zeros(4)}), ValueError, "0.weight_scale"),
    "scale-negative": (lambda s: _edit(s, **{"0__weight_scale": -s["0.weight_scale"]}), ValueError, "0.weight_scale"),
    "scale-nan": (lambda s: _edit(s, **{"2__weight_scale": torch.tensor([0.1, float("nan")])}), ValueError,
                  "2.weight_scale"),
    "scale-inf": (lambda s: _edit(s, **{"2__weight_scale": torch.tensor([float("inf"), 0.1])}), ValueError,
                  "2.weight_scale"),
    # missing keys
    "missing-scale": (lambda s: _edit(s, **{"0__weight_scale": None}), ValueError, "0.weight_scale"),
    "missing-mode": (lambda s: _edit(s, **{"2__activation_mode": None}), ValueError, "2.activation_mode"),
    "missing-bias": (lambda s: _edit(s, **{"0__bias": None}), RuntimeError, "0.bias"),
    "unexpected-key": (lambda s: _edit(s, extra=torch.zeros(3)), RuntimeError, "extra"),
    # keys that point at the wrong place
    "no-such-layer": (lambda s: _edit(s, **{"7__weight_int8": s["0.weight_int8"]}), ValueError, "7"),
    "not-a-linear": (lambda s: _edit(s, **{"1__weight_int8": s["0.weight_int8"]}), ValueError, "ReLU"),
    "malformed-key": (lambda s: _edit(s, **{"0weight_int8": s["0.weight_int8"]}), ValueError, "0weight_int8"),
    "non-str-key": (lambda s: {**s, 3: torch.zeros(1)}, TypeError, "keys"),
}


def _max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", sorted(BAD))
def test_hostile_state_rejected(state, name):
    make, exc, needle = BAD[name]
    bad = make(state)
    before = _max_rss_mib()
    with pytest.raises(exc) as info:
        enn.load_int8(bad, _factory)
    assert needle in str(info.value), str(info.value)
    # Peak RSS grew by far less than any claimed size (2^40 elements).
    assert _max_rss_mib() - before < 256


@pytest.mark.parametrize("state_arg", [None, [1, 2], "state.pt", torch.zeros(3)])
def test_state_must_be_a_mapping(state_arg):
    with pytest.raises(TypeError, match="state"):
        enn.load_int8(state_arg, _factory)


def test_factory_must_build_a_module(state):
    with pytest.raises(TypeError, match="model_or_factory"):
        enn.load_int8(state, lambda: 42)


def _saved(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.mark.parametrize("keep", [0, 1, 16, 100, 0.5, 0.9, -1])
def test_truncated_file(state, keep):
    data = _saved(state)
    n = keep if isinstance(keep, int) and keep >= 0 else (len(data) - 1 if keep == -1 else int(len(data) * keep))
    with pytest.raises((RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError)):
        loaded = torch.load(io.BytesIO(data[:n]), weights_only=True)
        enn.load_int8(loaded, _factory)


@pytest.mark.parametrize("seed", range(12))
def test_corrupted_file(state, seed):
    """Random byte flips: torch.load or load_int8 raises, or (a flip in a
    tensor payload, which the format has no checksum for) the model loads with
    every load_int8 invariant intact: int8 codes of the right shape, finite
    positive scales, a known activation mode."""
    data = bytearray(_saved(state))
    g = torch.Generator().manual_seed(seed)
    for pos in torch.randint(0, len(data), (4,), generator=g).tolist():
        data[pos] ^= 0xFF
    try:
        loaded = torch.load(io.BytesIO(bytes(data)), weights_only=True)
        model = enn.load_int8(loaded, _factory)
    except (RuntimeError, ValueError, TypeError, EOFError, KeyError, OSError, UnicodeDecodeError,
            pickle.UnpicklingError) as e:
        assert str(e) or type(e).__name__
        return
    for layer in (model[0], model[2]):
        assert layer.weight_int8.dtype == torch.int8
        assert bool(((layer.weight_scale > 0) & torch.isfinite(layer.weight_scale)).all())
        assert int(layer.activation_mode) in (0, 1, 2)
