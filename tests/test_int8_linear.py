"""Int8Linear's int8 path (dynamic activation quantization + an exact int8
product (fbgemm's or oneDNN's packed kernels on CPUs where they apply, else
torch._int_mm) + rescale) against its dequantized fp32 path, the shape rules that pick the
path, the two products against each other, and the digits accuracy of an int8
model against its QAT model."""
import copy
import pickle

import pytest
import torch
from torch import nn

import eitp_kernels

from eitp_kernels import _fbgemm_int8, _int8_gemv, _onednn_int8, quantize_int8, reference
from eitp_kernels import nn as enn


def _int8_layer(in_f, out_f, *, activations=None, bias=True, seed=0, matmul="auto"):
    """An Int8Linear exported from a FakeQuantLinear (activations: None, True symmetric, False affine)."""
    torch.manual_seed(seed)
    qat = enn.prepare_qat(nn.Sequential(nn.Linear(in_f, out_f, bias=bias)),
                          quantize_activations=activations is not None, activation_symmetric=bool(activations))
    with torch.no_grad():
        if bias:
            qat[0].bias.normal_()
    model = enn.load_int8(enn.export_int8(qat), lambda: nn.Sequential(nn.Linear(in_f, out_f, bias=bias)))
    layer = model[0]
    layer.matmul = matmul
    return layer, qat[0]


def _dequantized(layer, x):
    layer.matmul, saved = "dequantize", layer.matmul
    try:
        return layer(x)
    finally:
        layer.matmul = saved


def _per_row_bound(layer, x):
    """|int8 - fp32| bound for per-row symmetric activations: each input element
    moves by at most sx/2 (sx = row absmax / 127), so output j moves by at most
    sx/2 * sum_k |W_jk| (W the dequantized weight), plus fp32 rounding."""
    rows = x.reshape(-1, layer.in_features)
    sx = reference.quantize_int8(rows, "channel", 0, 128, True)[1]
    w = layer.weight().abs().sum(dim=1)
    bound = (sx.unsqueeze(1) / 2) * w
    return bound.reshape(*x.shape[:-1], layer.out_features) + 1e-5 * (1 + rows.abs().max())


@pytest.mark.parametrize("shape, matmul", [
    ((64, 32, 48), "int8"), ((1, 64, 64), "int8"), ((3, 5, 16, 8), "int8"), ((17, 128, 24), "int8"),
    ((1, 1024, 1024), "auto"), ((2, 20, 512, 512), "auto")])
def test_int8_path_within_the_activation_rounding_bound(shape, matmul):
    *batch, in_f, out_f = shape
    layer, _ = _int8_layer(in_f, out_f, matmul=matmul)
    x = torch.randn(*batch, in_f)
    with torch.no_grad():
        assert layer.uses_int8_matmul(x)
        y = layer(x)
        y_fp32 = _dequantized(layer, x)
    assert y.shape == (*batch, out_f) and y.dtype == torch.float32
    assert bool(((y - y_fp32).abs() <= _per_row_bound(layer, x)).all())
    assert not torch.equal(y, y_fp32)  # the int8 path really ran (activation rounding shows)


def test_int8_path_is_the_exact_integer_product():
    """y = sx_i * s_j * (qx @ qw^T)_ij + b_j: checked against the same formula in float64."""
    layer, _ = _int8_layer(32, 16, matmul="int8")
    x = torch.randn(9, 32)
    with torch.no_grad():
        y = layer(x)
    qx, sx, _ = reference.quantize_int8(x, "channel", 0, 128, True)
    acc = qx.double() @ layer.weight_int8.double().t()
    expected = acc * sx.double().unsqueeze(1) * layer.weight_scale.double() + layer.bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activations", [True, False])
def test_trained_activation_modes_match_the_fake_quant_model(activations):
    """Layers trained with per-tensor activation fake-quant keep those codes in
    the int8 path (affine: with the zero-point correction): only the float
    rounding of the rescale differs from the QAT layer."""
    layer, qat_layer = _int8_layer(64, 40, activations=activations, matmul="int8")
    x = torch.randn(6, 7, 64) + (0.5 if activations is False else 0.0)
    with torch.no_grad():
        assert layer.uses_int8_matmul(x)
        torch.testing.assert_close(layer(x), qat_layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_f, out_f", [(12, 16), (16, 3), (20, 20), (128, 128), (264, 260)])
def test_shapes_that_do_not_qualify_fall_back_bit_exactly(in_f, out_f):
    layer, qat_layer = _int8_layer(in_f, out_f)
    x = torch.randn(5, in_f)
    with torch.no_grad():
        assert not layer.uses_int8_matmul(x)
        torch.testing.assert_close(layer(x), qat_layer(x), rtol=0, atol=0)


def test_forced_int8_runs_any_cpu_shape_and_grad_inputs_fall_back():
    layer, qat_layer = _int8_layer(12, 3, matmul="int8")
    x = torch.randn(4, 12)
    with torch.no_grad():
        assert layer.uses_int8_matmul(x)
        assert bool(((layer(x) - _dequantized(layer, x)).abs() <= _per_row_bound(layer, x)).all())
    xg = x.clone().requires_grad_()
    assert not layer.uses_int8_matmul(xg)
    layer(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


def test_no_bias_empty_batch_and_dtype_mismatch():
    layer, qat_layer = _int8_layer(16, 8, bias=False, matmul="int8")
    with torch.no_grad():
        assert bool(((layer(torch.ones(2, 16)) - qat_layer(torch.ones(2, 16))).abs() < 1e-5).all())
        assert layer(torch.zeros(0, 16)).shape == (0, 8)
        assert not layer.uses_int8_matmul(torch.zeros(2, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="matmul must be one of"):
        enn.Int8Linear(8, 8, matmul="fast")


def test_int8_matmul_supported_rules(monkeypatch):
    from eitp_kernels.nn import int8
    monkeypatch.setattr(int8._int8_gemv, "applies", lambda k: False)  # fbgemm's and oneDNN's rule
    assert enn.int8_matmul_supported(1, 4096, 4096, "cpu")
    assert not enn.int8_matmul_supported(64, 4095, 4096, "cpu")
    assert not enn.int8_matmul_supported(64, 4096, 10, "cpu")
    assert not enn.int8_matmul_supported(0, 64, 64, "cpu")
    assert not enn.int8_matmul_supported(449, 128, 128, "cpu") and enn.int8_matmul_supported(449, 256, 256, "cpu")
    # few rows: a weight of 2^20 elements; more rows: 2^23 multiply-adds
    assert not enn.int8_matmul_supported(16, 512, 1024, "cpu") and enn.int8_matmul_supported(16, 1024, 1024, "cpu")
    assert not enn.int8_matmul_supported(31, 512, 512, "cpu") and enn.int8_matmul_supported(32, 512, 512, "cpu")
    assert not enn.int8_matmul_supported(16, 64, 64, "cuda") and enn.int8_matmul_supported(17, 64, 64, "cuda")
    assert not enn.int8_matmul_supported(64, 8 * 20000, 64, "cuda")  # int32 accumulator could overflow
    assert not enn.int8_matmul_supported(64, 64, 64, "meta")
    with torch.backends.mkldnn.flags(enabled=False):  # torch._int_mm's CPU loop without oneDNN
        assert not enn.int8_matmul_supported(64, 4096, 4096, "cpu")


def test_int8_matmul_supported_rule_with_our_product(monkeypatch):
    from eitp_kernels.nn import int8
    monkeypatch.setattr(int8._int8_gemv, "applies", lambda k: True)
    # any batch from 2^18 weights; 2^16 from 4 rows; 2^15 from 2^21 multiply-adds
    assert enn.int8_matmul_supported(1, 512, 512, "cpu") and not enn.int8_matmul_supported(1, 512, 504, "cpu")
    assert not enn.int8_matmul_supported(3, 256, 256, "cpu") and enn.int8_matmul_supported(4, 256, 256, "cpu")
    assert not enn.int8_matmul_supported(63, 64, 512, "cpu") and enn.int8_matmul_supported(64, 64, 512, "cpu")
    assert not enn.int8_matmul_supported(4096, 64, 256, "cpu")  # 2^14 weights: never
    # a layer that cannot take our product's epilogue keeps the other rule
    assert not enn.int8_matmul_supported(1, 512, 512, "cpu", epilogue=False)
    assert not enn.int8_matmul_supported(31, 512, 512, "cpu", epilogue=False)
    assert enn.int8_matmul_supported(32, 512, 512, "cpu", epilogue=False)
    affine = enn.Int8Linear(512, 512, activation_symmetric=False)
    symmetric = enn.Int8Linear(512, 512)
    assert affine.plan("cpu") == ((1, enn.int8.DEQUANTIZED), (32, enn.int8.INT8))
    assert symmetric.plan("cpu") == ((1, enn.int8.INT8),)
    assert enn.Int8Linear(64, 512).plan("cpu") == ((1, enn.int8.DEQUANTIZED), (64, enn.int8.INT8))
    assert enn.Int8Linear(256, 256).plan("cpu") == ((1, enn.int8.DEQUANTIZED), (4, enn.int8.INT8))
    symmetric.activation_symmetric = False  # another activation mode, another plan
    assert symmetric.plan("cpu") == ((1, enn.int8.DEQUANTIZED), (32, enn.int8.INT8))


@pytest.mark.parametrize("activations", [None, True], ids=["per-row", "symmetric"])
def test_own_product_with_activations_quantized_by_the_reference_backend(activations):
    """The layer's int8 path under use_backend("reference"): the row scales come as (m, 1) from
    quantize_int8, the codes from the reference; the output equals the one of the cpp backend."""
    layer, _ = _int8_layer(512, 512, activations=activations, matmul="int8")
    x = torch.randn(9, 512)
    with torch.no_grad():
        expected = layer(x)
        with eitp_kernels.use_backend("reference"):
            assert torch.equal(layer(x), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 17, 64])
def test_cuda_int8_path(m):
    layer, _ = _int8_layer(64, 32)
    layer.cuda()
    x = torch.randn(m, 64, device="cuda")
    with torch.no_grad():
        assert layer.uses_int8_matmul(x) == (m > 16)
        y = layer(x)
        bound = _per_row_bound(layer.cpu(), x.cpu())
        layer.cuda()
        assert bool(((y.cpu() - _dequantized(layer, x).cpu()).abs() <= bound).all())


def test_load_state_refreshes_affine_code_sums():
    layer, _ = _int8_layer(32, 16, activations=False, matmul="int8")
    other, other_qat = _int8_layer(32, 16, activations=False, seed=5, matmul="int8")
    x = torch.randn(4, 32)
    with torch.no_grad():
        layer(x)  # caches the code sums of the first weights
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other_qat(x), rtol=1e-5, atol=1e-5)


def test_digits_int8_accuracy_within_half_a_point_of_qat(tmp_path):
    """A QAT MLP of the digits demo (64 -> 64 -> 64 -> 10, a few epochs):
    the int8 model (every layer forced onto the int8 path: "auto" would keep
    layers this small on the dequantized one) classifies the test split
    within 0.5 percentage points of the fake-quant model, and the .eitpz file
    loads into the same int8 model."""
    pytest.importorskip("sklearn")
    from eitp_kernels.training import compression
    from eitp_kernels.training.demo import load_digits_split, make_mlp

    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=0)
    torch.manual_seed(0)
    qat = enn.prepare_qat(make_mlp(64))
    opt = torch.optim.Adam(qat.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            loss = nn.functional.cross_entropy(qat(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def accuracy(model):
        with torch.no_grad():
            return 100.0 * (model(x_test).argmax(1) == y_test).float().mean().item()

    int8 = enn.load_int8(enn.export_int8(qat), lambda: make_mlp(64))
    layers = [m for m in int8.modules() if isinstance(m, enn.Int8Linear)]
    assert len(layers) == 3
    for layer in layers:
        layer.matmul = "int8"
    qat_acc, int8_acc = accuracy(qat), accuracy(int8)
    assert qat_acc > 90.0
    assert abs(int8_acc - qat_acc) <= 0.5, (qat_acc, int8_acc)
    print(f"digits test split: QAT {qat_acc:.2f}%, int8 {int8_acc:.2f}%")
    compression.save_compressed(qat, tmp_path / "digits.eitpz")
    from_file = compression.load_compressed_int8(tmp_path / "digits.eitpz", lambda: make_mlp(64))
    for layer in from_file.modules():
        if isinstance(layer, enn.Int8Linear):
            layer.matmul = "int8"
    with torch.no_grad():
        torch.testing.assert_close(from_file(x_test), int8(x_test), rtol=0, atol=0)


def test_bfloat16_layer_takes_the_int8_path_and_returns_bfloat16():
    torch.manual_seed(0)
    qat = enn.prepare_qat(nn.Sequential(nn.Linear(64, 32))).to(torch.bfloat16)
    model = enn.load_int8(enn.export_int8(qat), lambda: nn.Sequential(nn.Linear(64, 32)).to(torch.bfloat16))
    model[0].matmul = "int8"
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        assert model[0].uses_int8_matmul(x)
        y = model(x)
    qx, sx, _ = reference.quantize_int8(x, "channel", 0, 128, True)
    acc = qx.double() @ model[0].weight_int8.double().t()
    expected = acc * sx.double().unsqueeze(1) * model[0].weight_scale.double() + model[0].bias.double()
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), expected.to(torch.bfloat16).double(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("activations", [None, False])
def test_torch_compile_fullgraph_int8_model(activations):
    torch.manual_seed(0)

    def make():
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    qat = enn.prepare_qat(make(), quantize_activations=activations is not None, activation_symmetric=bool(activations))
    model = enn.load_int8(enn.export_int8(qat), make)
    model[0].matmul = model[2].matmul = "int8"
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert model[0].uses_int8_matmul(x)
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


needs_onednn = pytest.mark.skipif(not _onednn_int8.available(),
                                  reason="oneDNN's u8 x s8 op is missing or inexact in this torch")


def _int_mm_output(layer, x, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(enn.int8, "cpu_int8_product", lambda m, k, n, epilogue=True: enn.int8.INT_MM)
        return layer(x)


needs_fbgemm = pytest.mark.skipif(not _fbgemm_int8.available(),
                                  reason="fbgemm's dynamic linear is missing or inexact in this torch")
needs_own = pytest.mark.skipif(not _int8_gemv.available(),
                               reason="the int8_linear_rows op is missing here or this CPU has no AVX-512 VNNI")
_PRODUCTS = {"onednn": (enn.int8.ONEDNN, "_onednn_weight", needs_onednn),
             "fbgemm": (enn.int8.FBGEMM, "_fbgemm_weight", needs_fbgemm),
             "own": (enn.int8.OWN, "_own_weight", needs_own)}


@pytest.mark.parametrize("activations", [None, True, False], ids=["per-row", "symmetric", "affine"])
@pytest.mark.parametrize("product, m, in_f, out_f", [
    ("fbgemm", 1, 64, 64), ("fbgemm", 5, 12, 20), ("fbgemm", 16, 264, 256), ("fbgemm", 40, 72, 16),
    ("onednn", 2, 64, 64), ("onednn", 17, 128, 24), ("onednn", 64, 264, 256),
    ("own", 1, 64, 64), ("own", 5, 12, 20), ("own", 7, 66, 130), ("own", 64, 264, 256), ("own", 3, 3, 1)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_cpu_products_are_bit_identical_to_int_mm(monkeypatch, product, activations, m, in_f, out_f, bias):
    """The whole layer's output, every product forced in turn: the same bits as
    torch._int_mm's (the weight scales in fbgemm's and oneDNN's epilogues, the
    whole epilogue in our own kernel's; affine activations do not take ours)."""
    name, attribute, needs = _PRODUCTS[product]
    if needs.args[0]:  # the skipif condition
        pytest.skip(needs.kwargs["reason"])
    monkeypatch.setattr(enn.int8, "cpu_int8_product",
                        lambda m, k, n, epilogue=True: name if epilogue or name != enn.int8.OWN else enn.int8.INT_MM)
    layer, _ = _int8_layer(in_f, out_f, activations=activations, matmul="int8", bias=bias)
    x = torch.randn(m, in_f) * 3 + (0.7 if activations is False else 0.0)  # affine: a non-zero zero point
    with torch.no_grad():
        y = layer(x)
        ran = getattr(layer, attribute) is not None
        assert ran == (name != enn.int8.OWN or activations is not False)  # that product ran (ours: not affine)
        assert torch.equal(y, _int_mm_output(layer, x, monkeypatch))
        assert torch.equal(layer(x), y)  # again, on the kept buffers and packed weight
    if activations is False:
        assert int(quantize_int8(x, granularity="tensor", symmetric=False)[2]) != 0


@needs_onednn
def test_onednn_weight_follows_in_place_replaced_and_loaded_weights(monkeypatch):
    layer, _ = _int8_layer(64, 32, matmul="int8")
    other, _ = _int8_layer(64, 32, seed=3, matmul="int8")
    x = torch.randn(8, 64)
    with torch.no_grad():
        first = layer(x)
        layer.weight_int8.neg_()  # in place: the version counter moves
        assert torch.equal(layer(x), _int_mm_output(layer, x, monkeypatch)) and not torch.equal(layer(x), first)
        layer.weight_int8 = torch.randint(-127, 128, (32, 64), dtype=torch.int8)  # another tensor
        assert torch.equal(layer(x), _int_mm_output(layer, x, monkeypatch))
        layer.load_state_dict(other.state_dict())
        assert torch.equal(layer(x), other(x))


@needs_onednn
def test_a_layer_with_a_packed_weight_copies_and_pickles(monkeypatch):
    layer, _ = _int8_layer(64, 32, matmul="int8")
    x, x_few, x_one = torch.randn(20, 64), torch.randn(4, 64), torch.randn(1, 64)
    rows = {20: enn.int8.ONEDNN, 4: enn.int8.FBGEMM, 1: enn.int8.OWN}
    monkeypatch.setattr(enn.int8, "cpu_int8_product", lambda m, k, n, epilogue=True: rows[m])
    with torch.no_grad():
        y, y_few = layer(x), layer(x_few)  # packs the weight for oneDNN and for fbgemm
        y_one = layer(x_one) if _int8_gemv.available() else None  # and for our kernel
        layer.matmul = "dequantize"
        y_float = layer(x)  # caches the dequantized weight
        layer.matmul = "int8"
        for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert twin._onednn_weight is None and twin._fbgemm_weight is None and twin._dequantized is None
            assert twin._own_weight is None
            assert torch.equal(twin(x), y) and torch.equal(twin(x_few), y_few)
            assert y_one is None or torch.equal(twin(x_one), y_one)
        older = pickle.loads(pickle.dumps(layer))
        for name in ("_onednn_weight", "_fbgemm_weight", "_own_weight", "_dequantized", "_plans", "_fast"):
            del older.__dict__[name]  # as pickled before these attributes existed
        assert torch.equal(older(x), y) and torch.equal(older(x_few), y_few)
        older.matmul = "dequantize"
        assert torch.equal(older(x), y_float)
        assert layer._onednn_weight is not None and (layer._fbgemm_weight is not None or not _fbgemm_int8.available())
        assert (layer._own_weight is not None) == _int8_gemv.available()


def test_fbgemm_rules_and_probe(monkeypatch):
    assert not _fbgemm_int8.applies(_fbgemm_int8.MAX_K + 1)
    assert not _fbgemm_int8.applies(1)  # wrong sums for k = 1
    assert _fbgemm_int8.MAX_K * 255 * 128 <= 2**31 - 1
    if "qnnpack" in torch.backends.quantized.supported_engines:
        saved = torch.backends.quantized.engine
        try:
            torch.backends.quantized.engine = "qnnpack"  # no fbgemm under it: not used, nothing raised
            assert not _fbgemm_int8.applies(64)
        finally:
            torch.backends.quantized.engine = saved

    def probe():
        return _fbgemm_int8._probe.__wrapped__(torch.backends.quantized.engine)

    _assert_probe_refuses_a_missing_or_inexact_product(monkeypatch, _fbgemm_int8, probe)


def test_cpu_product_rule():
    rule = enn.int8.cpu_int8_product
    if _int8_gemv.available():
        assert rule(1, 1024, 1024) == rule(64, 4096, 4096) == rule(512, 1024, 1024) == enn.int8.OWN
        assert rule(65, 4096, 4096) != enn.int8.OWN
    assert rule(1, 1024, 1024, epilogue=False) == enn.int8.INT_MM  # one row: oneDNN's GEMV, no packing
    if _fbgemm_int8.available():
        assert rule(2, 1024, 1024, epilogue=False) == rule(16, 4096, 4096, epilogue=False) == enn.int8.FBGEMM
        assert rule(2, _fbgemm_int8.MAX_K + 1, 8, epilogue=False) != enn.int8.FBGEMM
    if _onednn_int8.available():
        assert rule(17, 4096, 4096, epilogue=False) == rule(512, 1024, 1024, epilogue=False) == enn.int8.ONEDNN
        assert rule(65, 4096, 4096) == enn.int8.ONEDNN
        with torch.backends.mkldnn.flags(enabled=False):
            assert rule(512, 1024, 1024, epilogue=False) == enn.int8.INT_MM  # switched off after the probe: not used


@needs_own
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 5, 63), (4, 64, 64), (6, 130, 65), (17, 1027, 200),
                                     (2, 36, 300), (1, 1027, 2080), (11, 1024, 2080)])
def test_own_int8_product_is_the_int_mm_epilogue_bit_for_bit(m, k, n):
    """Extreme codes (both weights and activations at -128 and 127), k and n
    off the packing's multiples: (float32(qx @ w^T) * s_j) * sx_i + b_j.
    Row tiles of 8 and their remainders (1-7 rows), groups read several at
    a time and one at a time (n / 32 not a multiple of the streams), and a
    weight over 2 MiB (prefetched: the last two)."""
    generator = torch.Generator().manual_seed(m * 1000 + k)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=generator)
    w[0], w[-1, ::2] = -128, 127
    qx = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=generator)
    qx[0] = 127
    weight_scale, bias = torch.rand(n, generator=generator) + 1e-3, torch.randn(n, generator=generator)
    row_scale = torch.rand(m, 1, generator=generator) + 0.5
    packed = _int8_gemv.PackedWeight()
    expected = (torch._int_mm(qx, w.t()).float() * weight_scale) * row_scale
    assert torch.equal(_int8_gemv.product(qx, row_scale, packed.of(w), weight_scale, None), expected)
    assert torch.equal(_int8_gemv.product(qx, row_scale, packed.of(w), weight_scale, bias), expected + bias)
    w.neg_()  # in place: repacked
    expected = (torch._int_mm(qx, w.t()).float() * weight_scale) * row_scale
    assert torch.equal(_int8_gemv.product(qx, row_scale.reshape(-1), packed.of(w), weight_scale, None), expected)


@needs_own
def test_own_int8_product_bad_inputs_name_the_argument():
    w = torch.randint(-127, 128, (16, 8), dtype=torch.int8)
    packed, sums = _int8_gemv.pack(w)
    qx, sx, ws = torch.zeros(2, 8, dtype=torch.int8), torch.ones(2), torch.ones(16)
    op = torch.ops.eitp.int8_linear_rows
    with pytest.raises(TypeError, match="q must be int8"):
        op(qx.float(), sx, packed, sums, ws, None)
    with pytest.raises(ValueError, match="row_scale must have shape"):
        op(qx, torch.ones(3), packed, sums, ws, None)
    with pytest.raises(ValueError, match="packed holds k_pad"):
        op(torch.zeros(2, 12, dtype=torch.int8), sx, packed, sums, ws, None)
    with pytest.raises(ValueError, match="packed holds n_pad"):
        op(qx, sx, packed, sums, torch.ones(80), None)
    with pytest.raises(ValueError, match="bias must have shape"):
        op(qx, sx, packed, sums, ws, torch.ones(15))
    with pytest.raises(TypeError, match="col_sums must be Int"):
        op(qx, sx, packed, sums.long(), ws, None)
    assert op(torch.zeros(0, 8, dtype=torch.int8), torch.ones(0), packed, sums, ws, None).shape == (0, 16)


@needs_own
@pytest.mark.parametrize("m, k, n", [(1, 64, 64), (3, 66, 130), (8, 4, 32), (17, 264, 40), (64, 1024, 64),
                                     (70, 1000, 8), (9, 13, 33)])
def test_own_float_product_is_the_quantization_then_the_product(m, k, n):
    """int8_linear_float_rows == quantize_int8_rows (per row, symmetric) then int8_linear_rows, bit
    for bit: rows of any scale, zeros, NaN and +-Inf, ties, denormals, values near float32's largest,
    k not a multiple of 4 or 16, m * k past the size from which the threads share the rows'
    quantization (65536)."""
    torch.manual_seed(m * k + n)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    weight_scale, bias = torch.rand(n) + 0.01, torch.randn(n)
    x = torch.randn(m, k) * torch.logspace(-3, 3, m).unsqueeze(1)
    x[0, 1] = float("nan")
    if m > 2:
        x[1] = 0.0
        x[2, 0], x[2, -1] = float("inf"), float("-inf")
    if m > 6:
        x[3] = torch.arange(k) % 255 - 127.0 + 0.5  # scale 1: every code a tie, rounded to even
        x[3, 0] = 127.0
        x[4] = torch.randn(k) * 1e-41  # denormal values and scale
        x[5] = torch.randn(k) * 1e38  # near float32's largest
        x[6] = float("nan")  # no finite value: scale 1, every code 0
    packed = _int8_gemv.pack(w)
    codes, scales, _ = torch.ops.eitp.quantize_int8_rows.default(x, None, None, True)
    for b in (bias, None):
        expected = _int8_gemv.product(codes, scales, packed, weight_scale, b)
        assert torch.equal(_int8_gemv.float_product(x, packed, weight_scale, b), expected)
    transposed = x.t().contiguous().t()  # not contiguous: the op takes its contiguous copy
    assert torch.equal(_int8_gemv.float_product(transposed, packed, weight_scale, bias),
                       _int8_gemv.product(codes, scales, packed, weight_scale, bias))


@needs_own
def test_own_float_product_bad_inputs_name_the_argument():
    w = torch.randint(-127, 128, (16, 8), dtype=torch.int8)
    packed, sums = _int8_gemv.pack(w)
    x, ws = torch.zeros(2, 8), torch.ones(16)
    op = torch.ops.eitp.int8_linear_float_rows
    with pytest.raises(TypeError, match="x must be float32"):
        op(x.double(), packed, sums, ws, None)
    with pytest.raises(ValueError, match="x must be 2-D"):
        op(x.reshape(-1), packed, sums, ws, None)
    with pytest.raises(ValueError, match="packed holds k_pad = 8 for x with k = 12"):
        op(torch.zeros(2, 12), packed, sums, ws, None)
    with pytest.raises(ValueError, match="bias must have shape"):
        op(x, packed, sums, ws, torch.ones(15))
    assert op(torch.zeros(0, 8), packed, sums, ws, None).shape == (0, 16)


def test_own_int8_product_probe(monkeypatch):
    probe = _int8_gemv.available.__wrapped__

    def missing(*args):
        raise NotImplementedError("no AVX-512 VNNI")

    monkeypatch.setattr(_int8_gemv, "product", missing)
    assert probe() is False
    monkeypatch.setattr(_int8_gemv, "product", lambda qx, sx, packed, ws, bias: torch.zeros(qx.shape[0], 70))
    assert probe() is False  # an inexact op is not used
    monkeypatch.undo()
    if _int8_gemv.available():  # the fused quantization must match quantize_int8_rows too
        monkeypatch.setattr(_int8_gemv, "float_product", lambda x, packed, ws, bias: torch.zeros(x.shape[0], 70))
        assert probe() is False
        monkeypatch.undo()
    monkeypatch.setattr(_int8_gemv, "GROUP", 2 * _int8_gemv.GROUP)  # as packed for an extension of another layout
    assert probe() is False


@needs_fbgemm
def test_fbgemm_gets_the_layers_own_codes_whatever_the_range():
    """The padding columns' range pins fbgemm's own quantization to scale 1 and
    zero point 128 + zero_point: rows that never reach the extreme codes,
    all-zero rows and every zero point, one after another on the kept buffers,
    still give the exact integer product times the scales."""
    generator = torch.Generator().manual_seed(1)
    w = torch.randint(-127, 128, (24, 40), dtype=torch.int8, generator=generator)
    scale = torch.rand(24, generator=generator) + 1e-3
    packed = _fbgemm_int8.PackedWeight()
    sums = w.sum(1, dtype=torch.int32)
    for qx in (torch.randint(-3, 4, (3, 40), dtype=torch.int8, generator=generator), torch.zeros(2, 40, dtype=torch.int8),
               torch.randint(-128, 128, (16, 40), dtype=torch.int8, generator=generator),
               torch.randint(-128, 128, (1, 40), dtype=torch.int8, generator=generator)):
        for zero_point in (0, 1, -128, 127, 37, 0):
            expected = (torch._int_mm(qx, w.t()) - zero_point * sums).float()
            assert torch.equal(_fbgemm_int8.product(qx, zero_point, packed.of(w)), expected)
            assert torch.equal(_fbgemm_int8.product(qx, zero_point, packed.of(w, scale)), expected * scale)
    w.neg_()  # in place: repacked
    assert torch.equal(_fbgemm_int8.product(qx, 0, packed.of(w, scale)), torch._int_mm(qx, w.t()).float() * scale)
    scale.mul_(2)  # the scales in place: repacked too
    assert torch.equal(_fbgemm_int8.product(qx, 0, packed.of(w, scale)), torch._int_mm(qx, w.t()).float() * scale)


@needs_fbgemm
def test_fbgemm_buffers_are_per_thread():
    """Threads multiplying at once each fill their own buffers."""
    import threading

    generator = torch.Generator().manual_seed(2)
    w = torch.randint(-127, 128, (64, 256), dtype=torch.int8, generator=generator)
    packed = _fbgemm_int8.PackedWeight()
    packed_weight = packed.of(w)
    inputs = [torch.randint(-127, 128, (4, 256), dtype=torch.int8, generator=generator) for _ in range(4)]
    expected = [torch._int_mm(qx, w.t()).float() for qx in inputs]
    failures = []

    def work(i):
        for _ in range(200):
            if not torch.equal(_fbgemm_int8.product(inputs[i], 0, packed_weight), expected[i]):
                failures.append(i)
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_onednn_rules_and_probe(monkeypatch):
    assert not _onednn_int8.applies(_onednn_int8.MAX_K + 1)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not _onednn_int8.applies(64)  # switched off after the probe: not used
    assert _onednn_int8.MAX_K * 255 * 128 <= 2**31 - 1
    _assert_probe_refuses_a_missing_or_inexact_product(monkeypatch, _onednn_int8, _onednn_int8.available.__wrapped__)


def _assert_probe_refuses_a_missing_or_inexact_product(monkeypatch, module, probe):
    def missing(*args):
        raise RuntimeError("no such op")

    monkeypatch.setattr(module, "product", missing)
    assert probe() is False
    monkeypatch.setattr(module, "product", lambda qx, zp, packed: torch.zeros(qx.shape[0], 16))
    assert probe() is False  # an inexact op is not used


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any("avx512_vnni" in line.split() or "avx_vnni" in line.split() for line in cpuinfo
                       if line.startswith("flags"))
    except OSError:
        return False


@pytest.mark.skipif(not (_has_vnni() and torch.backends.mkldnn.is_available()
                         and hasattr(torch.ops.onednn, "qlinear_pointwise")),
                    reason="not a VNNI CPU with oneDNN's qlinear op (the probe may rightly refuse elsewhere)")
def test_the_probe_accepts_onednn_on_a_vnni_cpu():
    """Where the op exists and the CPU has VNNI (the development and CI VMs),
    the probe must pass: a product that went wrong would otherwise only make
    the oneDNN tests skip."""
    assert _onednn_int8.available.__wrapped__() is True


def _small_mlp():
    return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def test_load_int8_decides_each_layers_paths_and_says_so():
    torch.manual_seed(0)
    model = enn.load_int8(enn.export_int8(enn.prepare_qat(_small_mlp())), _small_mlp)
    first, hidden, last = model[0], model[2], model[4]
    assert first._plans and hidden._plans  # decided at load
    assert last.plan() == ((1, enn.int8.DEQUANTIZED),)  # 10 outputs: never int8
    dequantized, int8 = enn.int8.DEQUANTIZED, enn.int8.INT8
    if not enn.int8._onednn_enabled():
        expected = {0: ((1, dequantized),), 2: ((1, dequantized),)}
    elif _int8_gemv.applies(512):  # our product's rule: 64 x 512 from 2^21 multiply-adds, 512^2 always
        expected = {0: ((1, dequantized), (64, int8)), 2: ((1, int8),)}
    else:
        expected = {0: ((1, dequantized),), 2: ((1, dequantized), (32, int8))}
    assert first.plan() == expected[0] and hidden.plan() == expected[2]
    summary = enn.int8_summary(model).splitlines()
    assert len(summary) == 3
    for index, plan in expected.items():
        layer = model[index]
        assert "path on cpu: " + enn.int8.describe_plan(plan) in repr(layer)
        assert summary[index // 2].startswith(f"{index}: Int8Linear {layer.in_features} -> {layer.out_features} "
                                              f"on cpu: {enn.int8.describe_plan(plan)}")
        if len(plan) < 2:
            continue
        switch = plan[1][0]  # the first int8 batch
        for m, path in ((1, dequantized), (switch - 1, dequantized), (switch, int8), (512, int8)):
            assert layer.path(torch.randn(m, layer.in_features)) == path, m
        with torch.no_grad():
            x1, x_int8 = torch.randn(1, layer.in_features), torch.randn(switch + 8, layer.in_features)
            y1 = layer(x1)
            assert layer._fast is not None and layer._fast[6] == (switch - 1) * layer.in_features  # the shortcut
            assert torch.equal(layer(x1), y1) and torch.equal(y1, _dequantized(layer, x1))
            assert not torch.equal(layer(x_int8), _dequantized(layer, x_int8))  # the int8 path
    hidden.matmul = "dequantize"
    assert hidden.plan() == ((1, dequantized),)  # another setting, another plan
    assert enn.int8_summary(nn.ReLU()) == "(no int8 layers)"


def test_large_layers_take_int8_at_every_batch_on_cpu():
    layer = enn.Int8Linear(1024, 1024)
    if enn.int8._onednn_enabled():
        assert layer.plan("cpu") == ((1, enn.int8.INT8),)
        assert enn.int8.describe_plan(((1, "dequantized"), (17, "int8"), (40, "dequantized"))) == \
            "dequantized for batch 1-16, int8 for batch 17-39, dequantized from 40"


def test_the_dequantized_weight_is_cached_until_codes_or_scales_change(monkeypatch):
    layer, qat_layer = _int8_layer(40, 24, matmul="dequantize")
    calls = []
    real = enn.int8._Int8Weight.weight
    monkeypatch.setattr(enn.int8._Int8Weight, "weight", lambda self: calls.append(1) or real(self))
    x = torch.randn(3, 40)
    with torch.no_grad():
        y = layer(x)
        assert torch.equal(layer(x), y) and len(calls) == 1  # computed once
        torch.testing.assert_close(y, qat_layer(x), rtol=0, atol=0)
        layer.weight_int8.neg_()  # codes written in place
        assert torch.equal(layer(x), nn.functional.linear(x, real(layer), layer.bias)) and len(calls) == 2
        layer.weight_scale.mul_(2)  # scales written in place
        layer(x)
        layer.weight_scale = layer.weight_scale / 2  # another tensor
        layer(x)
        layer.dtype = torch.float64
        assert layer.dequantized_weight().dtype == torch.float64 and len(calls) == 5
        layer.dtype = torch.float32
        other, other_qat = _int8_layer(40, 24, seed=4)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other_qat(x), rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()  # the cached weight takes no gradient; the input does
    assert xg.grad is not None and layer.bias.grad is not None


def test_int8_convolution_uses_the_cached_weight():
    torch.manual_seed(0)

    def make():
        return nn.Sequential(nn.Conv1d(3, 8, 3))
    qat = enn.prepare_qat(make())
    model = enn.load_int8(enn.export_int8(qat), make)
    x = torch.randn(2, 3, 9)
    with torch.no_grad():
        y = model(x)
        cached = model[0].dequantized_weight()
        assert cached is model[0].dequantized_weight()
        torch.testing.assert_close(y, qat(x), rtol=0, atol=0)
    assert "Int8Conv1d: dequantized" in enn.int8_summary(model)


# --------------------------------------------------------------------------
# Weight-only int8 (the GPU path for 1-16 rows; its Triton kernel runs here under the interpreter)
# --------------------------------------------------------------------------


def _weight_only_inputs(m, k, n, dtype, bias, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=generator).to(dtype)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    scale = torch.rand(n, generator=generator) / 50 + 1e-3
    b = torch.randn(n, generator=generator).to(dtype) if bias else None
    return x, w, scale, b


def _weight_only_expected(x, w, scale, b):
    """float64: x @ (w * scale)^T + b."""
    out = x.double() @ (w.double() * scale.double().unsqueeze(1)).t()
    return out if b is None else out + b.double()


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.triton_interpret)])
@pytest.mark.parametrize("m, k, n, dtype, bias", [
    (1, 1, 1, torch.float32, True), (1, 300, 37, torch.float32, False), (3, 64, 64, torch.float32, True),
    (8, 100, 24, torch.float16, True), (16, 256, 40, torch.bfloat16, True), (5, 1030, 9, torch.float32, True)])
def test_weight_only_linear_within_fp32_rounding_of_the_dequantized_product(backend, m, k, n, dtype, bias):
    from eitp_kernels import use_backend
    from eitp_kernels.ops.int8_linear import int8_weight_only_linear

    x, w, scale, b = _weight_only_inputs(m, k, n, dtype, bias)
    with use_backend(backend):
        y = int8_weight_only_linear(x, w, scale, b)
    expected = _weight_only_expected(x, w, scale, b)
    assert y.shape == (m, n) and y.dtype == dtype
    # fp32 accumulation: relative error ~ sqrt(k) * 2^-24 of the output's scale; then one rounding to dtype
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert float((y.double() - expected).abs().max()) <= tolerance * float(expected.abs().max()) + 1e-6


@pytest.mark.triton_interpret
@pytest.mark.parametrize("activations", [None, True, False])
def test_weight_only_layer_path_matches_the_dequantized_path(activations):
    layer, _ = _int8_layer(96, 40, activations=activations, matmul="weight_only")
    for m in (1, 7, 16, 17):
        x = torch.randn(m, 96)
        with torch.no_grad():
            expected_path = enn.int8.WEIGHT_ONLY if m <= 16 else enn.int8.DEQUANTIZED
            assert layer.path(x) == expected_path
            torch.testing.assert_close(layer(x), _dequantized(layer, x), rtol=1e-5, atol=1e-5)
    assert enn.int8.describe_plan(layer.plan()) == "weight-only int8 for batch 1-16, dequantized from 17"


@pytest.mark.triton_interpret
def test_opcheck_weight_only_triton_op():
    x, w, scale, b = _weight_only_inputs(3, 40, 24, torch.float32, True)
    torch.library.opcheck(torch.ops.eitp_triton.int8_weight_only_linear.default, (x, w, scale, b))
    torch.library.opcheck(torch.ops.eitp_triton.int8_weight_only_linear.default, (x, w, scale, None))


def test_weight_only_linear_bad_inputs_name_the_argument():
    from eitp_kernels.ops.int8_linear import int8_weight_only_linear

    x, w, scale, b = _weight_only_inputs(2, 16, 8, torch.float32, True)
    for args, error, match in [
        ((x.double(), w, scale, b), TypeError, "x must have dtype"),
        ((torch.randn(17, 16), w, scale, b), ValueError, "x must have 1 to 16 rows"),
        ((torch.randn(16), w, scale, b), ValueError, "x"),
        ((x, w.float(), scale, b), TypeError, "weight_int8 must have dtype"),
        ((x, w[:, :8], scale, b), ValueError, "weight_int8 must be"),
        ((x, w, scale[:4], b), ValueError, "weight_scale must have shape"),
        ((x, w, scale.double(), b), TypeError, "weight_scale must have dtype"),
        ((x, w, scale, b.half()), TypeError, "bias must have dtype"),
        ((x, w, scale, b[:3]), ValueError, "bias must have shape")]:
        with pytest.raises(error, match=match):
            int8_weight_only_linear(*args)


def test_weight_only_is_the_gpu_path_for_few_rows_only():
    assert not enn.weight_only_supported(1, "cpu")  # interpreted Triton is never chosen automatically
    assert not enn.weight_only_supported(17, "cuda") and not enn.weight_only_supported(0, "cuda")
    layer = enn.Int8Linear(64, 64, matmul="weight_only")
    if not enn.int8.int8_linear.triton_available("cpu"):
        assert layer.plan("cpu") == ((1, enn.int8.DEQUANTIZED),)  # no kernel to run: the dequantized path


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 16])
def test_cuda_weight_only_path(m):
    layer, _ = _int8_layer(256, 128)
    layer.cuda()
    x = torch.randn(m, 256, device="cuda")
    with torch.no_grad():
        assert layer.path(x) == enn.int8.WEIGHT_ONLY
        torch.testing.assert_close(layer(x), _dequantized(layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.triton_interpret)])
@pytest.mark.parametrize("m, n, dtype, per_row, affine, bias", [
    (1, 1, torch.float32, True, True, True), (40, 24, torch.float32, True, False, True),
    (33, 16, torch.bfloat16, False, True, False), (20, 1030, torch.float32, False, False, True)])
def test_rescale_is_the_int8_paths_epilogue(backend, m, n, dtype, per_row, affine, bias):
    from eitp_kernels import use_backend
    from eitp_kernels.ops.int8_linear import int8_linear_rescale

    generator = torch.Generator().manual_seed(m)
    acc = torch.randint(-2**20, 2**20, (m, n), dtype=torch.int32, generator=generator)
    row_scale = torch.rand(m if per_row else 1, generator=generator) + 0.01
    weight_scale = torch.rand(n, generator=generator) + 0.01
    b = torch.randn(n, generator=generator).to(dtype) if bias else None
    sums = torch.randint(-5000, 5000, (n,), dtype=torch.int32, generator=generator) if affine else None
    zp = torch.tensor([-37], dtype=torch.int32) if affine else None
    with use_backend(backend):
        y = int8_linear_rescale(acc, row_scale.unsqueeze(1) if per_row else row_scale, weight_scale, b, sums, zp, dtype)
    shifted = acc.double() - (zp.double() * sums.double() if affine else 0)
    expected = shifted * (row_scale.double().unsqueeze(1) if per_row else row_scale.double()) * weight_scale.double()
    expected = expected + (b.double() if bias else 0)
    assert y.dtype == dtype and y.shape == (m, n)
    tolerance = {torch.float32: 1e-6, torch.bfloat16: 8e-3}[dtype]
    assert bool(((y.double() - expected).abs() <= tolerance * expected.abs() + 1e-6).all())


def test_rescale_bad_inputs_name_the_argument():
    from eitp_kernels.ops.int8_linear import int8_linear_rescale

    acc, scale = torch.zeros(3, 4, dtype=torch.int32), torch.ones(4)
    with pytest.raises(TypeError, match="acc must have dtype"):
        int8_linear_rescale(acc.float(), torch.ones(3), scale)
    with pytest.raises(ValueError, match="row_scale must have 1 or 3 elements"):
        int8_linear_rescale(acc, torch.ones(2), scale)
    with pytest.raises(ValueError, match="weight_scale must have shape"):
        int8_linear_rescale(acc, torch.ones(3), torch.ones(5))
    with pytest.raises(ValueError, match="code_sums and zero_point go together"):
        int8_linear_rescale(acc, torch.ones(3), scale, None, torch.zeros(4, dtype=torch.int32), None)


@pytest.mark.triton_interpret
def test_opcheck_rescale_triton_op():
    acc = torch.randint(-100, 100, (20, 8), dtype=torch.int32)
    torch.library.opcheck(torch.ops.eitp_triton.int8_linear_rescale.default,
                          (acc, torch.rand(20), torch.rand(8), torch.randn(8), None, None, torch.float32))
    torch.library.opcheck(torch.ops.eitp_triton.int8_linear_rescale.default,
                          (acc, torch.rand(1), torch.rand(8), None, torch.zeros(8, dtype=torch.int32),
                           torch.ones(1, dtype=torch.int32), torch.bfloat16))


@needs_own
def test_own_product_shortcut_follows_the_layer(monkeypatch):
    """forward's shortcut to our product: taken again for a batch size that took it,
    left for the full path when the codes change, the rule is another or grad is wanted."""
    layer, _ = _int8_layer(64, 32, matmul="int8")
    x = torch.randn(3, 64)
    with torch.no_grad():
        y = layer(x)
        assert layer._own_fast is not None and layer._own_fast[6] == {3}
        assert torch.equal(layer(x), y)
        layer(torch.randn(5, 64))
        assert layer._own_fast[6] == {3, 5}
        layer.weight_int8.neg_()  # in place: the packed weight is rebuilt
        assert torch.equal(layer(x), _int_mm_output(layer, x, monkeypatch)) and not torch.equal(layer(x), y)
        assert layer._own_fast[6] == {3}
        monkeypatch.setattr(enn.int8, "cpu_int8_product", lambda m, k, n, epilogue=True: enn.int8.FBGEMM)
        layer._fbgemm_weight = None
        layer(x)  # another rule: the full path, which asks it
        assert layer._fbgemm_weight is not None or not _fbgemm_int8.available()
    xg = x.clone().requires_grad_()
    assert layer(xg).requires_grad  # the dequantized path, differentiable
