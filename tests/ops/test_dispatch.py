"""The backend rules of :mod:`pvtv2_fast.ops.registry`: "auto" order as data, stand-ins, one-time fallback warnings,
explicit backends that raise. ``ops.simulate`` plays other machines here: no extension, or a GPU machine's compiled
(not interpreted) Triton, so the dispatch a GPU run takes is exercised on the CPU too."""

import sys
import warnings

import pytest
import torch
from op_cases import DEVICE, close

from pvtv2_fast import ops
from pvtv2_fast.ops import AUTO_ORDER, OPS, FallbackWarning


@pytest.fixture(autouse=True)
def _fresh_warnings():
    ops.reset_warnings()
    yield
    ops.reset_warnings()


def _dw_args(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, 9, 4, generator=g).to(dtype),
        torch.randn(4, 1, 3, 3, generator=g).to(dtype),
        None,
        3,
        3,
        False,
    )


def test_auto_order_is_data_and_names_only_existing_backends():
    for device, table in AUTO_ORDER.items():
        for op_name, order in table.items():
            assert op_name == "default" or op_name in OPS, (device, op_name)
            assert set(order) <= set(ops.BACKENDS) - {"auto"}, (device, op_name, order)


def test_every_op_has_a_reference_and_only_known_backends():
    assert set(OPS) == {
        "sra_attention",
        "linear_sra_pool",
        "dwconv_gelu",
        "conv_ffn",
        "upsample_argmax",
        "upsample_accumulate",
        "layer_norm",
        "sr_conv",
        "token_conv",
        "sra_layer",
        "pvt_block",
    }
    for op in OPS.values():
        assert callable(op.reference)
        assert set(op.available()) <= set(ops.BACKENDS) - {"auto"}


def test_sr_conv_auto_takes_the_cpp_kernel_for_small_fp32_calls():
    """The C++ spatial-reduction conv where it measured faster: fp32 up to CPU_MAX_FLOPS (224²'s stages); bf16 /
    fp16 and larger calls stay with the reference (oneDNN's convolution)."""
    from pvtv2_fast.ops.sr_conv import CPU_MAX_FLOPS

    for dtype, chosen in ((torch.float32, "cpu"), (torch.bfloat16, "torch"), (torch.float16, "torch")):
        args = (torch.randn(1, 16, 4, dtype=dtype), torch.randn(8, 4, 2, 2, dtype=dtype), None, 4, 4, None)
        assert OPS["sr_conv"].resolve("auto", args) == chosen, dtype
    assert OPS["sr_conv"].resolve("triton", args) == "torch"  # cuDNN / oneDNN's conv stands in
    # b2's stage 1 at 224² (49 output pixels, 25.7 MFLOP) and at 512² (256 pixels, 134 MFLOP)
    weight = torch.empty(64, 64, 8, 8)
    for side, chosen in ((56, "cpu"), (128, "torch")):
        flops = 2 * (side // 8) ** 2 * 64 * 64 * 64
        assert (flops <= CPU_MAX_FLOPS) == (chosen == "cpu")
        args = (torch.empty(1, side * side, 64), weight, None, side, side, None)
        assert OPS["sr_conv"].resolve("auto", args) == chosen, side
        assert OPS["sr_conv"].resolve("cpu", args) == "cpu"  # asked for explicitly, it runs anyway


def test_token_conv_auto_takes_the_cpp_kernel_where_it_measured_faster():
    """The C++ token-map conv where it measured faster in the model: fp32 with 64 or more output channels up to
    CPU_MAX_FLOPS (CPU_MAX_FLOPS_ON_IMAGE for the first embedding, on the image's 3 channels); bf16 / fp16, 32 output
    channels (b0's first embedding) and larger calls (b2's at 512²) stay with the reference (oneDNN's convolution)."""
    from pvtv2_fast.ops.token_conv import CPU_MAX_FLOPS, CPU_MAX_FLOPS_ON_IMAGE

    for dtype, chosen in ((torch.float32, "cpu"), (torch.bfloat16, "torch"), (torch.float16, "torch")):
        args = (torch.randn(1, 16, 4, dtype=dtype), torch.randn(64, 4, 3, 3, dtype=dtype), None, 4, 4, 2, 1, None)
        assert OPS["token_conv"].resolve("auto", args) == chosen, dtype
    assert OPS["token_conv"].resolve("triton", args) == "torch"
    # The presets' largest embedding at 224² (a 14² map of 320 channels → 7² × 512: 144.5 MFLOP), b0's third at 512²
    # (a 64² map of 64 channels → 32² × 160: 189 MFLOP), b2's second at 512² (128² × 64 → 64² × 128: 604 MFLOP), b0's
    # first at 224² (the image → 56² × 32: 29.5 MFLOP, but 32 channels), b2's first at 224², batch 2 and batch 4 (the
    # image → 56² × 64: 118 and 236 MFLOP)
    for (b, ci, co, k, s, side), chosen in (
        ((1, 320, 512, 3, 2, 14), "cpu"),
        ((1, 64, 160, 3, 2, 64), "cpu"),
        ((1, 64, 128, 3, 2, 128), "torch"),
        ((1, 3, 32, 7, 4, 224), "torch"),
        ((2, 3, 64, 7, 4, 224), "cpu"),
        ((4, 3, 64, 7, 4, 224), "torch"),
    ):
        flops = 2 * b * (side // s) ** 2 * co * k * k * ci
        limit = CPU_MAX_FLOPS if ci >= 8 else CPU_MAX_FLOPS_ON_IMAGE
        assert (flops <= limit and co >= 64) == (chosen == "cpu")
        args = (torch.empty(b, side * side, ci), torch.empty(co, ci, k, k), None, side, side, s, k // 2, None)
        assert OPS["token_conv"].resolve("auto", args) == chosen, (ci, co, side)
        assert OPS["token_conv"].resolve("cpu", args) == "cpu"


def test_cpu_auto_takes_the_cpp_kernel_and_sdpa_for_attention():
    assert OPS["dwconv_gelu"].resolve("auto", _dw_args()) == "cpu"
    q = torch.randn(1, 5, 8)
    assert OPS["layer_norm"].resolve("auto", (q, None, None, 1e-6)) == "cpu"
    assert OPS["layer_norm"].resolve("triton", (q, None, None, 1e-6)) == "torch"  # PyTorch's kernel stands in


@pytest.mark.parametrize(
    "keys,dtype,chosen",
    [
        (64, torch.float32, "cpu"),
        (1024, torch.float16, "cpu"),
        (63, torch.float32, "cpu"),
        (49, torch.float32, "cpu"),  # 224²'s 49 keys: 1.3-1.55x SDPA once exp2 stopped making subnormals
        (1, torch.float32, "cpu"),
        (1024, torch.bfloat16, "cpu"),  # bf16 without AMX: 1.22-1.61x SDPA (AVX-512 EPYC)
        (1024, "bf16-amx", "torch"),  # bf16 with AMX: SDPA's AMX path measured 1.7-2x faster
        (1024, "d64", "cpu"),  # b2's 64-wide heads: 0.95-1.29x SDPA, 1.1 typical
        (1024, "d128", "torch"),  # wider heads: not measured, SDPA kept
    ],
)
def test_cpu_attention_auto_picks_by_the_measured_rule(monkeypatch, keys, dtype, chosen):
    monkeypatch.setattr(
        sys.modules["pvtv2_fast.ops.sra_attention"], "SDPA_FOR_BF16", dtype == "bf16-amx"
    )  # as on a CPU with (without) AMX
    c, heads = {"d64": (128, 2), "d128": (256, 2)}.get(dtype, (64, 2))
    dtype = {"bf16-amx": torch.bfloat16}.get(dtype, torch.float32) if isinstance(dtype, str) else dtype
    q, kv = torch.randn(1, 5, c, dtype=dtype), torch.randn(1, keys, 2 * c, dtype=dtype)
    args = (q, kv[..., :c], kv[..., c:], heads, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # passing over a slower backend is a choice, not a fallback
        assert OPS["sra_attention"].resolve("auto", args) == chosen
    assert OPS["sra_attention"].resolve("cpu", args) == "cpu"  # asked for explicitly, the C++ kernel runs anyway


def test_a_slower_rule_passes_over_silently_and_never_hides_a_failure():
    """`slower` only reorders what can run; a backend that cannot run still leads to the warned fallback."""
    op = ops.registry.Op("demo", lambda x: x)
    op.register("cpu", lambda x: x + 1, lambda args: None, slower=lambda args: args[0].numel() < 4)
    saved = ops.registry.CPU_ORDER.get("demo")
    ops.registry.CPU_ORDER["demo"] = ("cpu", "torch")
    try:
        assert op.resolve("auto", (torch.zeros(2),)) == "torch"
        assert op.resolve("auto", (torch.zeros(8),)) == "cpu"
        ops.registry.CPU_ORDER["demo"] = ("cpu",)  # nothing after it: "torch" by default, still silent
        with warnings.catch_warnings():
            warnings.simplefilter("error", FallbackWarning)
            assert op.resolve("auto", (torch.zeros(2),)) == "torch"
    finally:
        if saved is None:
            del ops.registry.CPU_ORDER["demo"]
        else:
            ops.registry.CPU_ORDER["demo"] = saved


def test_without_the_extension_auto_falls_back_once_per_op_and_reason():
    with ops.simulate(unavailable=["cpu"], triton_interpreted=False):
        with pytest.warns(FallbackWarning, match="cpu backend is switched off"):
            out = ops.dwconv_gelu(*_dw_args())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the second call does not warn again
            ops.dwconv_gelu(*_dw_args())
        with pytest.raises(NotImplementedError, match="switched off"):
            ops.dwconv_gelu(*_dw_args(), backend="cpu")
    close(out, ops.dwconv_gelu_reference(*_dw_args()), torch.float32)


def test_compiled_triton_on_cpu_tensors_is_refused_with_the_reason():
    """On a GPU machine Triton is compiled: CPU tensors then cannot take it, whatever this machine has."""
    with ops.simulate(triton_interpreted=False):
        with pytest.raises(NotImplementedError, match="need CUDA tensors"):
            ops.dwconv_gelu(*_dw_args(), backend="triton")
        assert OPS["linear_sra_pool"].why_not("triton", (torch.randn(1, 9, 4), 3, 3, 7)) is not None


def test_interpreted_triton_on_cuda_tensors_is_refused():
    meta = torch.empty(1, 9, 4, device="meta")
    assert "device 'meta'" in OPS["dwconv_gelu"].why_not("triton", (meta,))
    if torch.cuda.is_available():
        with ops.simulate(triton_interpreted=True):
            assert "TRITON_INTERPRET" in OPS["dwconv_gelu"].why_not("triton", (torch.empty(1, 9, 4, device="cuda"),))


def test_unsupported_dtype_falls_back_once_or_raises_when_explicit():
    args = _dw_args(torch.float64)
    with pytest.raises(NotImplementedError, match="float64"):
        ops.dwconv_gelu(*args, backend="triton")
    with pytest.raises(NotImplementedError, match="float64"):
        ops.dwconv_gelu(*args, backend="cpu")
    with pytest.warns(FallbackWarning, match="float64"):
        out = ops.dwconv_gelu(*args)
    close(out.float(), ops.dwconv_gelu_reference(*args).float(), torch.float32)


def test_head_dim_above_the_triton_limit():
    """Triton takes head dims up to 128: an explicit request raises (on the tensors Triton runs on here); "auto" on
    CPU tensors uses SDPA."""
    q, kv = torch.randn(1, 4, 256), torch.randn(1, 3, 512)
    with pytest.raises(NotImplementedError, match="head dim 256"):
        ops.sra_attention(q.to(DEVICE), kv[..., :256].to(DEVICE), kv[..., 256:].to(DEVICE), 1, backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        out = ops.sra_attention(q, kv[..., :256], kv[..., 256:], 1)
    close(out, ops.sra_attention_reference(q, kv[..., :256], kv[..., 256:], 1, 256**-0.5), torch.float32)


def test_conv_ffn_backends_follow_their_dwconv():
    x = torch.randn(1, 9, 4)
    args = (x, torch.randn(8, 4), None, torch.randn(8, 1, 3, 3), None, torch.randn(4, 8), None, 3, 3, False, None)
    with ops.simulate(triton_interpreted=False):
        assert "CUDA tensors" in OPS["conv_ffn"].why_not("triton", args)
    assert "cuda tensors" in OPS["conv_ffn"].why_not("cuda", args)
