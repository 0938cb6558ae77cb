"""The shared input checks: every failure is a TypeError/ValueError naming the op and the argument."""
import pytest
import torch

import eitp_kernels
from eitp_kernels import _validation as v


def test_check_tensor_accepts_and_returns():
    x = torch.randn(3, 4)
    assert v.check_tensor("op", "x", x, min_dim=2, max_dim=2) is x


@pytest.mark.parametrize("value, error, message", [
    ([1.0], TypeError, "op: x must be a torch.Tensor, got list"),
    (torch.arange(3), TypeError, r"op: x must have dtype in \(float16, bfloat16, float32, float64\), got int64"),
    (torch.ones(3, dtype=torch.complex64), TypeError, "got complex64"),
    (torch.ones(3, dtype=torch.bool), TypeError, "got bool"),
    (torch.ones(2, 2, 2), ValueError, r"op: x must have 1 to 2 dimensions, got shape \(2, 2, 2\)"),
    (torch.ones(0, 3), ValueError, r"op: x is empty \(shape \(0, 3\)\)"),
])
def test_check_tensor_rejects(value, error, message):
    with pytest.raises(error, match=message):
        v.check_tensor("op", "x", value, min_dim=1, max_dim=2)


def test_check_tensor_allows_empty_when_asked_and_code_dtypes():
    v.check_tensor("op", "x", torch.empty(0), allow_empty=True)
    v.check_tensor("op", "q", torch.zeros(3, dtype=torch.int8), dtypes=v.CODE_DTYPES)


def test_check_same_device():
    a = torch.ones(1)
    v.check_same_device("op", "x", a, "y", torch.ones(1))
    with pytest.raises(ValueError, match="x is on cpu but y is on meta"):
        v.check_same_device("op", "x", a, "y", torch.ones(1, device="meta"))


@pytest.mark.parametrize("value, error, message", [
    (True, TypeError, "bins must be an int, got bool"),
    (2.0, TypeError, "bins must be an int, got float"),
    (0, ValueError, "bins must be >= 1, got 0"),
    (-3, ValueError, "bins must be >= 1, got -3"),
])
def test_check_int(value, error, message):
    with pytest.raises(error, match=message):
        v.check_int("op", "bins", value, minimum=1)


@pytest.mark.parametrize("value, kwargs, error, message", [
    ("1", {}, TypeError, "eps must be a real number, got str"),
    (float("nan"), {}, ValueError, "eps must be finite"),
    (float("inf"), {}, ValueError, "eps must be finite"),
    (0.0, {"positive": True}, ValueError, "eps must be > 0"),
    (-1e-9, {"non_negative": True}, ValueError, "eps must be >= 0"),
])
def test_check_float(value, kwargs, error, message):
    with pytest.raises(error, match=message):
        v.check_float("op", "eps", value, **kwargs)


def test_check_dim_normalizes_and_rejects():
    assert v.check_dim("op", "dim", -1, 3) == 2
    with pytest.raises(ValueError, match="dim=3 is out of range for a tensor with 3 dimensions"):
        v.check_dim("op", "dim", 3, 3)
    with pytest.raises(ValueError, match="out of range for a tensor with 0 dimensions"):
        v.check_dim("op", "dim", 0, 0)


def test_check_choice():
    assert v.check_choice("op", "granularity", "group", ("tensor", "group")) == "group"
    with pytest.raises(ValueError, match=r"granularity must be one of \('tensor', 'group'\), got 'row'"):
        v.check_choice("op", "granularity", "row", ("tensor", "group"))


@pytest.mark.parametrize("value, error, message", [
    ((1.0,), TypeError, "range must be None or a"),
    ("ab", TypeError, "range must be None or a"),
    ((1.0, 1.0), ValueError, r"range must have lo < hi, got \(1.0, 1.0\)"),
    ((2.0, 1.0), ValueError, "lo < hi"),
    ((0.0, float("inf")), ValueError, r"range\[1\] must be finite"),
])
def test_check_range(value, error, message):
    with pytest.raises(error, match=message):
        v.check_range("op", "range", value)


def test_check_range_accepts_pairs():
    assert v.check_range("op", "range", None) is None
    assert v.check_range("op", "range", [-1, 2]) == (-1.0, 2.0)


def test_check_group_size():
    assert v.check_group_size("op", 4, 12) == 4
    with pytest.raises(ValueError, match="group_size=5 does not divide the last dimension \\(12\\)"):
        v.check_group_size("op", 5, 12)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        v.check_group_size("op", 0, 12)


@pytest.mark.parametrize("op", ["coherence_loss", "histogram_entropy", "fake_quant_int8"])
def test_validation_traces_under_dynamic_fullgraph_compile(op):
    # dynamo (dynamic=True) turned math.isfinite of a float argument into a torch op returning
    # a bool, which fullgraph=True refuses: coherence_loss could not be compiled that way
    calls = {
        "coherence_loss": lambda x: eitp_kernels.coherence_loss(x, offdiag_weight=0.005, squared=True),
        "histogram_entropy": lambda x: eitp_kernels.histogram_entropy(x, bins=32, range=(-3.0, 3.0), base=2.0),
        "fake_quant_int8": lambda x: eitp_kernels.fake_quant_int8(x, scale=0.05).sum(),
    }
    fn = calls[op]
    compiled = torch.compile(fn, dynamic=True, fullgraph=True, backend="eager")
    for rows in (64, 96):
        x = torch.randn(rows, 32)
        torch.testing.assert_close(compiled(x), fn(x))
