"""save_compressed / load_compressed: round trip, report, and bad files."""
import json
import struct

import pytest
import torch
from torch import nn

from eitp_kernels import reference
from eitp_kernels.training import compression


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def test_round_trip_matches_per_channel_int8(tmp_path):
    model = _model()
    path = tmp_path / "m.eitpz"
    report = compression.save_compressed(model, path)
    state = compression.load_compressed(path)
    for name, tensor in model.state_dict().items():
        if tensor.dim() >= 2:
            expected = reference.fake_quant_int8(tensor, granularity="channel", axis=0)
            torch.testing.assert_close(state[name], expected, rtol=0, atol=0)
        else:
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)
    assert report.original_bytes == sum(t.numel() * 4 for t in model.state_dict().values())
    assert report.compressed_bytes == path.stat().st_size
    assert report.ratio > 3.0  # int8 alone is ~4x before zstd
    assert 0 < report.code_entropy_bits <= 8


@pytest.mark.parametrize("granularity, kwargs", [("tensor", {}), ("channel", {"axis": 0}), ("group", {"group_size": 16})])
def test_round_trip_every_granularity(tmp_path, granularity, kwargs):
    model = _model()
    path = tmp_path / "m.eitpz"
    compression.save_compressed(model, path, granularity=granularity, group_size=16)
    state = compression.load_compressed(path)
    weight = model.state_dict()["0.weight"]
    expected = reference.fake_quant_int8(weight, granularity=granularity, **kwargs)
    torch.testing.assert_close(state["0.weight"], expected, rtol=0, atol=0)


def test_group_size_must_divide(tmp_path):
    with pytest.raises(ValueError, match="does not divide"):
        compression.save_compressed(_model(), tmp_path / "x", granularity="group", group_size=7)


def test_pruning_lowers_entropy_and_size_and_loads_into_model(tmp_path):
    dense = compression.save_compressed(_model(), tmp_path / "dense.eitpz")
    model = _model()
    sparse = compression.save_compressed(model, tmp_path / "sparse.eitpz", sparsity=0.8)
    # magnitude_prune zeroes floor(0.8 * numel) per weight tensor (or a few more on ties)
    pruned = sum(int(0.8 * p.numel()) for p in model.parameters() if p.dim() >= 2)
    assert sparse.sparsity >= pruned / sparse.quantized_parameters
    assert sparse.code_entropy_bits < dense.code_entropy_bits
    assert sparse.compressed_bytes < dense.compressed_bytes
    # achieved size can never beat the entropy bound by more than the header overhead allows
    assert sparse.achieved_bits >= sparse.code_entropy_bits * 0.95
    fresh = _model()
    compression.load_compressed(tmp_path / "sparse.eitpz", model=fresh)
    x = torch.randn(5, 64)
    assert torch.allclose(fresh(x), fresh(x))
    assert (fresh[0].weight == 0).sum().item() >= int(0.8 * fresh[0].weight.numel())


def test_default_coder_is_shallow_and_no_larger_than_level_19(tmp_path):
    # The speed is benchmarks/save_compressed_speed.py's; here its deterministic proxy
    # (one match-search attempt, against level 19's deep search) and the size it must keep.
    import zstandard

    deep = zstandard.ZstdCompressionParameters.from_level(19)
    assert compression._FAST_PARAMETERS["search_log"] == 1 < deep.search_log
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    default = compression.save_compressed(model, tmp_path / "default.eitpz", sparsity=0.5)
    model.load_state_dict(state)
    level19 = compression.save_compressed(model, tmp_path / "level19.eitpz", sparsity=0.5, level=19)
    assert default.compressed_bytes <= level19.compressed_bytes
    for name in ("default", "level19"):
        loaded = compression.load_compressed(tmp_path / f"{name}.eitpz")
        torch.testing.assert_close(loaded["0.weight"], compression.load_compressed(tmp_path / "level19.eitpz")["0.weight"],
                                   rtol=0, atol=0)


def test_report_fields_are_what_the_docstring_says(tmp_path):
    model = _model()
    report = compression.save_compressed(model, tmp_path / "m.eitpz", sparsity=0.5)
    state = model.state_dict()
    assert report.original_bytes == sum(t.numel() * t.element_size() for t in state.values())
    assert report.compressed_bytes == (tmp_path / "m.eitpz").stat().st_size
    assert report.achieved_bits == 8 * report.compressed_bytes / report.quantized_parameters
    codes = [reference.quantize_int8(t.float(), granularity="channel")[0] for t in state.values() if t.dim() >= 2]
    zeros = sum(int((c == 0).sum()) for c in codes)
    assert report.sparsity == zeros / report.quantized_parameters  # measured, not the 0.5 asked for
    doc = compression.CompressionReport.__doc__
    for field in ("parameters", "quantized_parameters", "original_bytes", "compressed_bytes", "sparsity",
                  "code_entropy_bits", "achieved_bits", "ratio"):
        assert f"{field}:" in doc or f"{field} (property):" in doc, field


def test_level_must_be_an_int_or_none(tmp_path):
    with pytest.raises(TypeError, match="save_compressed: level must be None or an int"):
        compression.save_compressed(_model(), tmp_path / "x", level="max")


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.eitpz"
    compression.save_compressed(_model(), path)
    return path


def test_wrong_magic(tmp_path, good_file):
    bad = _write(tmp_path / "bad", b"NOTEITPZ" + good_file.read_bytes()[8:])
    with pytest.raises(ValueError, match="bad magic"):
        compression.load_compressed(bad)


@pytest.mark.parametrize("keep", [4, 12, 40])
def test_truncated_header(tmp_path, good_file, keep):
    bad = _write(tmp_path / "bad", good_file.read_bytes()[:keep])
    with pytest.raises(ValueError, match="truncated|magic"):
        compression.load_compressed(bad)


def test_truncated_payload(tmp_path, good_file):
    data = good_file.read_bytes()
    bad = _write(tmp_path / "bad", data[: len(data) - 100])
    with pytest.raises(ValueError, match="truncated|corrupted"):
        compression.load_compressed(bad)


def test_corrupted_payload_byte(tmp_path, good_file):
    data = bytearray(good_file.read_bytes())
    data[-50] ^= 0xFF
    bad = _write(tmp_path / "bad", bytes(data))
    with pytest.raises(ValueError, match="corrupted|checksum|truncated"):
        compression.load_compressed(bad)


def _rewrite_header(good_file, tmp_path, edit):
    data = good_file.read_bytes()
    (length,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16:16 + length])
    edit(header)
    raw = json.dumps(header).encode()
    return _write(tmp_path / "edited", data[:8] + struct.pack("<Q", len(raw)) + raw + data[16 + length:])


def test_huge_claimed_header_is_refused_without_reading_it(tmp_path, good_file):
    data = good_file.read_bytes()
    bad = _write(tmp_path / "bad", data[:8] + struct.pack("<Q", 1 << 60) + data[16:])
    with pytest.raises(ValueError, match="claims a"):
        compression.load_compressed(bad)


def test_lying_payload_size_is_refused(tmp_path, good_file):
    for claimed in (10, 1 << 50):  # too small: overflow check; huge: never allocated, caught at the end
        def edit(header, claimed=claimed):
            header["payload_bytes"] = claimed
        with pytest.raises(ValueError, match="decompresses to more|truncated"):
            compression.load_compressed(_rewrite_header(good_file, tmp_path, edit))


def test_lying_tensor_shape_is_refused(tmp_path, good_file):
    def edit(header):
        header["tensors"]["0.weight"]["shape"] = [1 << 40, 64]
    with pytest.raises(ValueError, match="header says"):
        compression.load_compressed(_rewrite_header(good_file, tmp_path, edit))


def test_not_json_header(tmp_path, good_file):
    data = good_file.read_bytes()
    (length,) = struct.unpack("<Q", data[8:16])
    bad = _write(tmp_path / "bad", data[:16] + b"\xff" * length + data[16 + length:])
    with pytest.raises(ValueError, match="corrupted header"):
        compression.load_compressed(bad)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        compression.save_compressed([1, 2], tmp_path / "x")
    with pytest.raises(ValueError, match="granularity"):
        compression.save_compressed(_model(), tmp_path / "x", granularity="row")


# --------------------------------------------------------------------------
# One int8 format: .eitpz <-> export_int8 <-> int8 models
# --------------------------------------------------------------------------
class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.conv1 = nn.Conv1d(8, 8, 3, groups=2)
        self.fc = nn.Linear(48, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(2)
        h = torch.relu(self.conv1(h)).flatten(1)
        return self.head(torch.relu(self.fc(h)))


def _trained_qat(activations=None):
    from eitp_kernels import nn as enn

    torch.manual_seed(0)
    qat = enn.prepare_qat(_ConvNet(), quantize_activations=activations is not None,
                          activation_symmetric=bool(activations))
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    for _ in range(2):
        loss = qat(torch.randn(4, 1, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return qat


@pytest.mark.parametrize("activations", [None, True, False])
@pytest.mark.parametrize("source", ["qat-model", "export_int8-state"])
def test_eitpz_loads_into_the_int8_model_of_export_int8(tmp_path, activations, source):
    from eitp_kernels import nn as enn

    qat = _trained_qat(activations)
    exported = enn.export_int8(qat)
    path = tmp_path / "m.eitpz"
    compression.save_compressed(qat if source == "qat-model" else exported, path)
    from_file = compression.load_compressed_int8(path, _ConvNet)
    from_state = enn.load_int8(exported, _ConvNet)
    assert isinstance(from_file.conv, enn.Int8Conv2d) and isinstance(from_file.conv1, enn.Int8Conv1d)
    assert isinstance(from_file.fc, enn.Int8Linear) and isinstance(from_file.head, enn.Int8Linear)
    # The file holds exactly export_int8's codes, scales and modes: the two int8 models are the same state.
    file_state, state = from_file.state_dict(), from_state.state_dict()
    assert file_state.keys() == state.keys()
    for key in state:
        assert torch.equal(file_state[key], state[key]), key
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(from_file(x), from_state(x), rtol=0, atol=0)
        for layer in (from_file.fc, from_file.head):  # the dequantized path is bit-identical to QAT
            layer.matmul = "dequantize"
        torch.testing.assert_close(from_file(x), qat(x), rtol=0, atol=0)
    # The fp32 reader still gives the dequantized float state of the same file.
    floats = compression.load_compressed(path)
    torch.testing.assert_close(floats["fc.weight"], from_state.fc.weight(), rtol=0, atol=0)


def test_eitpz_from_a_float_model_loads_as_int8(tmp_path):
    """A plain float model's file: per-channel weights become int8 layers
    (activation mode none); per-tensor scales are repeated per channel."""
    from eitp_kernels import nn as enn

    model = _model()
    for granularity in ("channel", "tensor"):
        path = tmp_path / f"{granularity}.eitpz"
        compression.save_compressed(model, path, granularity=granularity)
        int8 = compression.load_compressed_int8(path, _model)
        assert isinstance(int8[0], enn.Int8Linear) and int8[0].activation_symmetric is None
        floats = compression.load_compressed(path)
        torch.testing.assert_close(int8[0].weight(), floats["0.weight"], rtol=0, atol=0)
    compression.save_compressed(model, tmp_path / "group.eitpz", granularity="group", group_size=16)
    with pytest.raises(ValueError, match="per group"):
        compression.load_compressed_int8(tmp_path / "group.eitpz", _model)


def test_eitpz_int8_loader_keeps_unconvertible_weights_float(tmp_path):
    from eitp_kernels import nn as enn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(6, 8), nn.Linear(8, 8))
    path = tmp_path / "m.eitpz"
    compression.save_compressed(make(), path)
    int8 = compression.load_compressed_int8(path, make)
    assert type(int8[0]) is nn.Embedding and isinstance(int8[1], enn.Int8Linear)
    torch.testing.assert_close(int8[0].weight, compression.load_compressed(path)["0.weight"], rtol=0, atol=0)


def test_eitpz_int8_loader_rejects_bad_modes_and_mismatched_models(tmp_path, good_file):
    def edit(header):
        header["tensors"]["0.weight"]["activation_mode"] = 7
    with pytest.raises(ValueError, match="activation_mode"):
        compression.load_compressed_int8(_rewrite_header(good_file, tmp_path, edit), _model)
    with pytest.raises(ValueError, match="needs"):
        compression.load_compressed_int8(good_file, lambda: nn.Sequential(nn.Linear(64, 40), nn.ReLU(),
                                                                          nn.Linear(48, 10)))
    with pytest.raises(TypeError, match="model_or_factory"):
        compression.load_compressed_int8(good_file, lambda: 3)


def test_save_compressed_checks_export_int8_triplets(tmp_path):
    from eitp_kernels import nn as enn

    state = enn.export_int8(enn.prepare_qat(_model()))
    with pytest.raises(ValueError, match="activation_mode"):
        compression.save_compressed({k: v for k, v in state.items() if k != "0.activation_mode"}, tmp_path / "x")
    with pytest.raises(ValueError, match="weight_scale"):
        compression.save_compressed({**state, "0.weight_scale": -state["0.weight_scale"]}, tmp_path / "x")


@pytest.mark.parametrize("damage", ["magic", "truncated", "byte", "shape"])
def test_int8_loader_rejects_damaged_files_like_load_compressed(tmp_path, good_file, damage):
    data = good_file.read_bytes()
    if damage == "magic":
        bad = _write(tmp_path / "bad", b"NOTEITPZ" + data[8:])
    elif damage == "truncated":
        bad = _write(tmp_path / "bad", data[: len(data) - 100])
    elif damage == "byte":
        flipped = bytearray(data)
        flipped[-50] ^= 0xFF
        bad = _write(tmp_path / "bad", bytes(flipped))
    else:
        def edit(header):
            header["tensors"]["0.weight"]["shape"] = [1 << 40, 64]
        bad = _rewrite_header(good_file, tmp_path, edit)
    with pytest.raises(ValueError, match="magic|truncated|corrupted|checksum|header says"):
        compression.load_compressed_int8(bad, _model)
