"""Device launches per call on the GPU paths (cuda and triton), counted on CPU
by eitp_kernels.bench.launches: Triton launches taken over by an observer,
aten ops counted with torch.profiler, the extension's CUDA launches from its
table. A gpu test checks the table against the CUDA profiler."""
import pytest
import torch

import eitp_kernels as ek
from eitp_kernels import _backends, _triton
from eitp_kernels.bench import launches
from eitp_kernels.bench.launches import count_launches

needs_extension = pytest.mark.skipif(not _backends._extension.load()[0], reason="extension not built")
needs_triton = pytest.mark.skipif(_triton.triton is None, reason="triton not installed")

# The calls whose budget the GPU paths meet, per backend (the others are
# printed by `python -m eitp_kernels.bench.launches`).
MET = {
    "cuda": ["histogram_entropy(x)", "histogram_entropy(codes)", "histogram_entropy(x, dim=1)",
             "histogram_entropy_many(fp32, fp64, fp16)", "finite_minmax(x)", "quantize_int8(x, tensor)",
             "fake_quant_int8(x, tensor)", "fake_quant_int8(x, channel)", "fake_quant_int8(x, channel) fwd+bwd",
             "dequantize_int8(q, channel)", "coherence_loss(x, y) Barlow Twins fwd+bwd"],
    "triton": ["histogram_entropy(x)", "histogram_entropy(codes)", "histogram_entropy(x, dim=1)",
               "histogram_entropy_many(fp32, fp64, fp16)", "finite_minmax(x)", "quantize_int8(x, tensor)",
               "fake_quant_int8(x, tensor)", "fake_quant_int8(x, channel)", "fake_quant_int8(x, channel) fwd+bwd",
               "dequantize_int8(q, channel)", "coherence_loss(x, y) Barlow Twins fwd+bwd"],
}


def _backend_marks(backend):
    return [needs_extension] if backend == "cuda" else [needs_triton]


@pytest.mark.parametrize("backend,call", [
    pytest.param(b, c, marks=_backend_marks(b)) for b, calls in MET.items() for c in calls])
def test_call_within_its_launch_budget(backend, call):
    fn, budget = launches.standard_calls()[call]
    counted = count_launches(fn, backend)
    assert counted.total <= budget, f"{backend} {call}: {counted} (budget {budget})"
    assert counted.syncs == (), f"{backend} {call} waits for the device: {counted.syncs}"


# ---------------------------------------------------------------- the counter itself


@pytest.mark.parametrize("backend", [pytest.param(b, marks=_backend_marks(b)) for b in launches.GPU_BACKENDS])
def test_counter_counts_aten_kernels_not_views_or_allocations(backend):
    x = torch.randn(8, 8)
    assert count_launches(lambda: x.view(64), backend).total == 0
    assert count_launches(lambda: torch.empty(5), backend).total == 0
    assert count_launches(lambda: torch.zeros(5), backend).kernels == ("aten::zero_",)
    assert count_launches(lambda: x.to(torch.float32), backend).total == 0  # same dtype: no copy
    assert count_launches(lambda: x.to(torch.float64), backend).kernels == ("aten::copy_",)
    assert count_launches(lambda: x.amax(dim=1), backend).kernels == ("aten::amax",)  # not its CPU fill
    assert count_launches(lambda: (x * 2).sum(), backend).kernels == ("aten::mul", "aten::sum")


@pytest.mark.parametrize("backend", [pytest.param(b, marks=_backend_marks(b)) for b in launches.GPU_BACKENDS])
def test_counter_reports_host_syncs(backend):
    x = torch.randn(8)
    assert count_launches(lambda: float(x.sum()), backend).syncs == ("aten::item",)


@needs_triton
def test_triton_launches_are_taken_over_and_counted():
    x = torch.randn(4, 100)
    counted = count_launches(lambda: ek.fake_quant_int8(x, granularity="channel"), "triton")
    assert counted.kernels == ("triton::_quant_rows_kernel",)
    long_rows = torch.randn(4, 1000)  # rows held in registers
    in_registers = count_launches(lambda: ek.fake_quant_int8(long_rows, granularity="channel"), "triton")
    assert in_registers.kernels == ("triton::_quant_row_tile_kernel",)
    assert _triton.launch_observers == []  # the observer is removed after the count


@needs_extension
def test_cuda_table_follows_the_launcher_branches():
    # quantize_int8_rows_cuda: short rows one warp kernel; a few long rows range + params + apply
    x_short, x_long, scale = torch.randn(3, 1000), torch.randn(3, 9000), torch.ones(3)
    short = count_launches(lambda: ek.quantize_int8(x_short, granularity="channel"), "cuda")
    long = count_launches(lambda: ek.quantize_int8(x_long, granularity="channel"), "cuda")
    static = count_launches(lambda: ek.quantize_int8(x_long, granularity="channel", scale=scale), "cuda")
    assert [k.split(":")[-1] for k in short.kernels] == ["quant_warp_rows_kernel"]
    assert [k.split(":")[-1] for k in long.kernels] == [
        "range_chunks_kernel", "params_from_workspace_kernel", "quant_static_kernel"]
    assert [k for k in static.kernels if k.startswith("eitp::")] == ["eitp::quantize_int8_rows:quant_static_kernel"]
    # finite_minmax_cuda: rows of one range block are done by the range pass; longer ones add the fold
    one_block, folded = torch.randn(5, 4096), torch.randn(2, 4097)
    assert [k.split(":")[-1] for k in count_launches(lambda: ek.finite_minmax(one_block, dim=1), "cuda").kernels] == [
        "range_partials_kernel"]
    assert [k.split(":")[-1] for k in count_launches(lambda: ek.finite_minmax(folded, dim=1), "cuda").kernels] == [
        "range_partials_kernel", "finite_minmax_fold_kernel"]
    # histogram_entropy over the automatic range: range pass, counting pass, entropy (no fill, zero or copy)
    # histogram_counts_many_cuda: the range pass with the automatic range only
    auto = count_launches(lambda: ek.histogram_entropy_many([x_short, x_long]), "cuda").kernels
    given = count_launches(lambda: ek.histogram_entropy_many([x_short, x_long], range=(-1.0, 1.0)), "cuda").kernels
    assert "eitp::histogram_counts_many:segments_range_kernel" in auto
    assert "eitp::histogram_counts_many:segments_range_kernel" not in given
    # a range given as numbers: the zero fill, the counting pass, the entropy
    given = count_launches(lambda: ek.histogram_entropy(x_long, range=(-1.0, 1.0)), "cuda").kernels
    assert [k.split(":")[-1] for k in given] == ["zero_", "hist_rows_kernel", "entropy_kernel"]
    x_half = x_long.half()
    assert [k.split(":")[-1] for k in count_launches(lambda: ek.histogram_entropy(x_half), "cuda").kernels] == [
        "range_partials_kernel", "hist_rows_kernel", "entropy_kernel"]


def test_forced_backend_is_restored_and_rejects_cpu_backends():
    resolve = _backends.resolve
    with pytest.raises(ValueError, match="backend must be one of"):
        with launches.forced_backend("cpp"):
            pass
    assert _backends.resolve is resolve


@needs_extension
def test_every_extension_op_has_a_cuda_table_entry():
    ops = {name for name in torch._C._dispatch_get_all_op_names() if name.startswith("eitp::")}
    assert "eitp::histogram_counts" in ops
    assert ops <= set(launches.CUDA_ONLY), sorted(ops - set(launches.CUDA_ONLY))


@pytest.mark.gpu
@pytest.mark.parametrize("call", list(launches.standard_calls()))
def test_counts_on_cpu_equal_cuda_kernels_on_a_gpu(call):
    """The CPU count of the cuda path against the CUDA profiler's kernels and memcpys/memsets."""
    from torch.profiler import ProfilerActivity, profile

    fn, _ = launches.standard_calls(device="cuda")[call]
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    on_gpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    cpu_fn, _ = launches.standard_calls()[call]
    assert len(on_gpu) == count_launches(cpu_fn, "cuda").total, [e.name for e in on_gpu]
