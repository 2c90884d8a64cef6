"""``ops.sr_conv``, the spatial-reduction conv (stride-s s×s conv of a token map), on every fused backend this
machine has (the C++ CPU kernel, fp32), against ``F.conv2d``; and the attention module's use of it."""

import sys

import pytest
import torch
from op_cases import DTYPE_IDS, DTYPES, IMAGE, check_compile_and_export, close, fused_backends, randn, require

from pvtv2_fast import PvtV2Config, _ext, ops, preset_names
from pvtv2_fast.validation import stage_shapes

BACKENDS = fused_backends("sr_conv")


def _cases():
    """Every distinct (channels, sr_ratio) of the presets' SRA stages at the odd, non-square IMAGE (25×33 → 4×5)."""
    seen, cases = set(), []
    for preset in preset_names():
        for i, s in enumerate(stage_shapes(PvtV2Config.from_preset(preset), *IMAGE)):
            if s.sr_ratio > 1 and not s.linear and (s.channels, s.sr_ratio) not in seen:
                seen.add((s.channels, s.sr_ratio))
                cases.append((f"{preset}-stage{i + 1}", s.channels, s.sr_ratio, s.height, s.width))
    return cases


CASES = _cases()
BF16_PAIRS = sys.modules["pvtv2_fast.ops.pvt_block"].BF16_PAIRS


def _check(backend, device, x, weight, bias, h, w, packed=None, what="sr_conv"):
    """Against the fp32 reference on the same (rounded) inputs, within the dtype's tolerance (op_cases.TOL)."""
    require("sr_conv", backend, (x, weight, bias, h, w, packed))
    out = ops.sr_conv(x, weight, bias, h, w, packed, backend=backend)
    ref = ops.sr_conv_reference(x.float(), weight.float(), None if bias is None else bias.float(), h, w)
    close(out, ref, x.dtype, what)


# Weights of a trained conv's scale (std 1 / sqrt(K)), so outputs are of order one: fp32 sums over K = s·s·Ci
# <= 4096 products, ~1e-6 apart by summation order.
def _weight(co, ci, s, seed=1, device="cpu"):
    return randn(co, ci, s, s, seed=seed, scale=(s * s * ci) ** -0.5, device=device)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_preset_stages(backend, device, case, batch, dtype):
    """Every preset's (channels, sr_ratio), on maps that are not multiples of s (the last partial window dropped);
    with the cached packed weight and without it (packed per call); fp32, and bf16 / fp16 through fp32 copies."""
    _, c, s, h, w = case
    x, weight = randn(batch, h * w, c, seed=c, device=device, dtype=dtype), _weight(c, c, s, device=device).to(dtype)
    bias = randn(c, device=device, dtype=dtype)
    _check(backend, device, x, weight, bias, h, w, what=case[0])
    _check(backend, device, x, weight, bias, h, w, ops.pack_weight(weight), what=case[0] + " packed")


@pytest.mark.parametrize(
    "b,ci,co,h,w,s",
    [(1, 1, 1, 1, 1, 1), (3, 5, 37, 9, 10, 3), (2, 7, 33, 13, 6, 2), (1, 64, 64, 56, 56, 8), (1, 3, 100, 4, 4, 4)],
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_odd_shapes(backend, device, b, ci, co, h, w, s, bias):
    """Channel counts off the 64-channel blocks (masked tails), pixel counts off the register tiles, s = 1 (a
    1×1 conv), one output pixel, a whole 224² stage-1 map; with and without bias."""
    x = randn(b, h * w, ci, seed=h * w, device=device)
    _check(backend, device, x, _weight(co, ci, s, device=device), randn(co, device=device) if bias else None, h, w)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows", [1, 7, 49, 97, 196])
@pytest.mark.parametrize("ci,co", [(1280, 320), (320, 1280), (64, 160)], ids=["1280-320", "320-1280", "64-160"])
@pytest.mark.parametrize("backend,device", [b for b in BACKENDS if b.values[0] == "cpu"])
def test_gemm_splits(backend, device, ci, co, rows, threads):
    """s = 1: the packed-weight GEMM itself, over every way split_gemm shares it among threads: by row tiles, by
    whole column blocks (few rows under a large weight), and by (block, row tile) units where the blocks do not
    divide among the threads (5 blocks of C = 320 over 2 or 3 threads, 20 over 3), whose pieces split a block's
    rows between two threads; rows off the 6-row tiles, and chunks of unequal tiles (97, 196)."""
    # Inputs differ per case, so that an output the kernel failed to write cannot hold a previous case's right answer.
    seed = 10 * rows + threads
    x, weight = randn(1, rows, ci, seed=seed, device=device), _weight(co, ci, 1, seed=seed, device=device)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check(backend, device, x, weight, randn(co, seed=seed, device=device), rows, 1)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize(
    "rows,ci,co",
    [(49, 320, 1280), (196, 1280, 320), (784, 64, 512)],
    ids=["whole-blocks", "block-tile-units", "row-tiles"],
)
def test_gemm_splits_compute_the_one_thread_bits(rows, ci, co):
    """Threads claim split_gemm's pieces as they free up (whole column blocks, (block, row tile) units, row tiles):
    whichever thread runs a piece, every output holds the bits one thread computes, call after call."""
    if not _ext.available():
        pytest.skip("the C++ extension is not built")
    x, weight = randn(1, rows, ci, seed=rows, device="cpu"), _weight(co, ci, 1, seed=rows)
    bias, packed = randn(co, seed=rows + 1, device="cpu"), ops.pack_weight(weight)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = ops.sr_conv(x, weight, bias, rows, 1, packed, backend="cpu")
        for threads in (2, 3):
            torch.set_num_threads(threads)
            for _ in range(5):
                assert torch.equal(ops.sr_conv(x, weight, bias, rows, 1, packed, backend="cpu"), expected)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.skipif(not BF16_PAIRS, reason="the bf16 GEMM needs a CPU with AVX512-BF16 (and the AVX-512 kernels)")
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "b,ci,co,h,w,s",
    [
        (1, 1280, 320, 1, 97, 1),  # fc2 at b2's 14² stage over 97 rows: (block, row tile) units, unequal chunks
        (1, 320, 1280, 7, 7, 1),  # fc1 at 49 tokens: column split of a 0.8 MB weight
        (1, 64, 160, 14, 14, 1),  # 2.5 blocks: a half tile (NV = 2) last
        (2, 512, 1024, 14, 14, 1),  # two images, 392 rows
        (2, 40, 37, 9, 10, 3),  # columns off the 16-lane vectors; windows of 3 rows of 120 values
        (3, 64, 100, 13, 6, 2),  # the sr conv: segments, maps off the stride
        (1, 64, 64, 56, 56, 8),  # b2's 224² stage-1 reduction
        (1, 2, 1, 1, 1, 1),  # one pair, one column
    ],
)
def test_bf16_pairs_gemm(b, ci, co, h, w, s, threads):
    """A bf16 weight packed in pairs (ops.pack_weight_pairs) runs the C++ bf16 GEMM (AVX512-BF16 pair dot products,
    fp32 sums, one rounding): within bf16's one-rounding tolerance of the fp32 reference on the same bf16 values,
    over 1-3 threads and every way split_gemm shares the GEMM."""
    seed = 100 * b + 7 * h + threads
    x = randn(b, h * w, ci, seed=seed, device="cpu", dtype=torch.bfloat16)
    weight = _weight(co, ci, s, seed=seed + 1).to(torch.bfloat16)
    bias = randn(co, seed=seed + 2, device="cpu", dtype=torch.bfloat16)
    packed = ops.pack_weight_pairs(weight)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check("cpu", "cpu", x, weight, bias, h, w, packed, what="pairs")
    finally:
        torch.set_num_threads(saved)
    with pytest.raises(ValueError, match="packed in pairs is for bf16 inputs"):
        ops.sr_conv(x.float(), weight.float(), None, h, w, packed.float(), backend="cpu")


def test_pack_pairs_layout():
    """(ceil(N / 64), K / 2, 64, 2): block b, pair p, lane o holds weight[64·b + o, 2p : 2p + 2] (K in pack_weight's
    order); zero past N; bf16 with an even K only."""
    weight = torch.randn(70, 3, 2, 2).bfloat16()
    packed = ops.pack_weight_pairs(weight)
    flat = weight.permute(0, 2, 3, 1).reshape(70, 12)
    assert packed.shape == (2, 6, 64, 2) and packed.is_contiguous()
    for o, p in ((0, 0), (65, 3), (69, 5), (63, 2)):
        assert torch.equal(packed[o // 64, p, o % 64], flat[o, 2 * p : 2 * p + 2])
    assert not packed[1, :, 6:].any()
    with pytest.raises(ValueError, match="bf16 weight with an even K"):
        ops.pack_weight_pairs(torch.randn(4, 6))
    with pytest.raises(ValueError, match="bf16 weight with an even K"):
        ops.pack_weight_pairs(torch.randn(4, 5).bfloat16())


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_input(backend, device):
    x = randn(2, 30, 24, seed=3, device=device)[:, :, 4:20]  # a channel slice: row stride 24, not 16
    _check(backend, device, x, _weight(16, 16, 2, device=device), None, 5, 6)


def test_pack_layout():
    """(ceil(Co / 64), s·s·Ci, 64): block b, row (kh·s + kw)·Ci + ci, lane o holds weight[64·b + o, ci, kh, kw]; a
    linear weight (N, K) is the 1×1 case."""
    weight = torch.randn(70, 3, 2, 2)
    packed = ops.pack_weight(weight)
    assert packed.shape == (2, 12, 64) and packed.is_contiguous() and not packed.requires_grad
    for o, ci, kh, kw in ((0, 0, 0, 0), (65, 2, 1, 0), (69, 1, 0, 1), (63, 2, 1, 1)):
        assert packed[o // 64, (kh * 2 + kw) * 3 + ci, o % 64] == weight[o, ci, kh, kw]
    assert not packed[1, :, 6:].any()  # zero past Co
    linear = torch.randn(70, 12, requires_grad=True)
    torch.testing.assert_close(ops.pack_weight(linear), ops.pack_weight(linear.detach()[:, :, None, None]))
    with pytest.raises(ValueError, match=r"pack_weight: expected a \(N, K\) or \(Co, Ci, s, s\) weight"):
        ops.pack_weight(torch.randn(3, 4, 5))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradients_are_the_references(backend, device):
    x = randn(2, 20, 6, seed=8, device=device).requires_grad_()
    weight, bias = _weight(10, 6, 2, device=device).requires_grad_(), randn(10, device=device).requires_grad_()
    grad = randn(2, 4, 10, seed=11, device=device)
    got = torch.autograd.grad(ops.sr_conv(x, weight, bias, 4, 5, backend=backend), [x, weight, bias], grad)
    expected = torch.autograd.grad(ops.sr_conv_reference(x, weight, bias, 4, 5), [x, weight, bias], grad)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_and_export_keep_the_fused_node(backend, device):
    x, weight, bias = randn(1, 35, 16, seed=12, device=device), _weight(24, 16, 2, device=device), None
    call = lambda t: ops.sr_conv(t, weight, bias, 5, 7, ops.pack_weight(weight), backend=backend)  # noqa: E731
    check_compile_and_export(call, x, "pvtv2_fast_C.sr_conv")


@pytest.mark.parametrize(
    "side,backend,runs", [(56, "auto", True), (128, "auto", False), (128, "cpu", True)], ids=["224", "512", "512-cpu"]
)
def test_attention_takes_it_where_it_measured_faster(side, backend, runs, monkeypatch):
    """b2's stage-1 reduction (C = 64, sr 8): a 224² map's (25.7 MFLOP) through ops.sr_conv, a 512² map's (134
    MFLOP) through oneDNN's prepacked convolution, unless the "cpu" backend is forced; same result either way."""
    from pvtv2_fast.modules import SpatialReductionAttention

    torch.manual_seed(0)
    attn = SpatialReductionAttention(64, 1, sr_ratio=8).eval()
    x = torch.randn(1, side * side, 64)
    with torch.no_grad():
        ref = attn.reduce(x, side, side)
        attn.backend = backend
        calls, real = [], ops.sr_conv
        monkeypatch.setattr(ops, "sr_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
        torch.testing.assert_close(attn.reduce(x, side, side), ref, atol=1e-5, rtol=1e-5)
    assert bool(calls) == runs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attention_runs_it_for_fp32_on_cpu_and_caches_the_packing(dtype, monkeypatch):
    """Fast mode's per-op SRA (here: attention maps requested; plain fp32 inference runs the one-call sra_layer)
    reduces fp32 CPU maps through ops.sr_conv with the packed weight cached (re-packed after load_state_dict); bf16
    keeps oneDNN's convolution. Either way within the reference's tolerance."""
    from pvtv2_fast.modules import SpatialReductionAttention

    torch.manual_seed(0)
    attn = SpatialReductionAttention(64, 2, sr_ratio=4).eval().to(dtype)
    x = torch.randn(2, 13 * 17, 64, dtype=dtype)
    with torch.no_grad():
        ref = attn(x, 13, 17)[0]
        attn.fast = True
        calls, real = [], ops.sr_conv
        monkeypatch.setattr(ops, "sr_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
        out = attn(x, 13, 17, output_attentions=True)[0]
        assert bool(calls) == (dtype == torch.float32)
        assert ("sr_conv_pack" in attn.__dict__.get("_inference_caches", {})) == (dtype == torch.float32)
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
        other = SpatialReductionAttention(64, 2, sr_ratio=4).eval().to(dtype)
        attn.load_state_dict(other.state_dict())
        torch.testing.assert_close(
            attn(x, 13, 17, output_attentions=True)[0].float(), other(x, 13, 17)[0].float(), atol=tol, rtol=tol
        )
