"""``ops.token_conv``, a strided k×k conv with zero padding of a token map (the overlapping patch embeddings' conv), on
every fused backend this machine has (the C++ CPU kernel), against ``F.conv2d``; and the patch embedding's use of it."""

import sys

import pytest
import torch
from op_cases import DTYPE_IDS, DTYPES, IMAGE, check_compile_and_export, close, fused_backends, randn, require

from pvtv2_fast import PvtV2Config, ops, preset_names
from pvtv2_fast.ops.token_conv import output_size

BACKENDS = fused_backends("token_conv")
BF16_PAIRS = sys.modules["pvtv2_fast.ops.pvt_block"].BF16_PAIRS


def _cases():
    """Every distinct patch embedding (in channels, out channels, kernel, stride) of the presets, on the map it sees
    for the odd, non-square IMAGE (97×131: the first on the image itself, the later ones on 25×33, 13×17, 7×9)."""
    seen, cases = set(), []
    for preset in preset_names():
        cfg = PvtV2Config.from_preset(preset)
        h, w, ci = *IMAGE, cfg.num_channels
        for i, (co, k, s) in enumerate(zip(cfg.hidden_sizes, cfg.patch_sizes, cfg.strides)):
            if (ci, co, k, s) not in seen:
                seen.add((ci, co, k, s))
                cases.append((f"{preset}-embed{i + 1}", ci, co, k, s, h, w))
            h, w, ci = output_size(h, k, s, k // 2), output_size(w, k, s, k // 2), co
    return cases


CASES = _cases()


# Weights of a trained conv's scale (std 1 / sqrt(K)), so outputs are of order one.
def _weight(co, ci, k, seed=1, device="cpu", dtype=torch.float32):
    return randn(co, ci, k, k, seed=seed, scale=(k * k * ci) ** -0.5, device=device, dtype=dtype)


def _check(backend, x, weight, bias, h, w, stride, padding, packed=None, what="token_conv"):
    """Against the fp32 reference on the same (rounded) inputs, within the dtype's tolerance (op_cases.TOL)."""
    require("token_conv", backend, (x, weight, bias, h, w, stride, padding, packed))
    out = ops.token_conv(x, weight, bias, h, w, stride, padding, packed, backend=backend)
    f = lambda t: None if t is None else t.float()  # noqa: E731
    ref = ops.token_conv_reference(f(x), f(weight), f(bias), h, w, stride, padding)
    assert out.shape == ref.shape and out.dtype == x.dtype, what
    close(out, ref, x.dtype, what)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_preset_embeddings(backend, device, case, batch, dtype):
    """Every preset's embeddings (7×7 at stride 4 on 3 channels, 3×3 at stride 2 after), on odd maps (the padded
    border on every side); with the cached packed weight and without it (packed per call); fp32, and bf16 / fp16
    through fp32 copies; bf16 also packed in pairs (bf16 GEMMs) where the CPU has AVX512-BF16."""
    _, ci, co, k, s, h, w = case
    x = randn(batch, h * w, ci, seed=co, device=device, dtype=dtype)
    weight, bias = _weight(co, ci, k, device=device, dtype=dtype), randn(co, device=device, dtype=dtype)
    _check(backend, x, weight, bias, h, w, s, k // 2, what=case[0])
    _check(backend, x, weight, bias, h, w, s, k // 2, ops.pack_weight(weight), what=case[0] + " packed")
    if dtype == torch.bfloat16 and BF16_PAIRS and ci % 2 == 0 and backend == "cpu":
        _check(backend, x, weight, bias, h, w, s, k // 2, ops.pack_weight_pairs(weight), what=case[0] + " pairs")


@pytest.mark.parametrize(
    "b,ci,co,k,s,p,h,w",
    [
        (1, 1, 1, 1, 1, 0, 1, 1),  # a 1×1 conv of one pixel
        (1, 8, 16, 3, 2, 1, 1, 1),  # one pixel: the window is all border but its centre
        (3, 5, 37, 3, 2, 1, 9, 10),  # channel tails, odd in-channels, three images
        (2, 6, 70, 3, 1, 1, 6, 7),  # stride 1 (a "same" conv), 70 channels: two blocks, a short last one
        (1, 4, 8, 3, 2, 2, 5, 5),  # padding past the kernel's half: a border of two
        (2, 16, 24, 2, 2, 0, 8, 9),  # no padding, k = s: the spatial reduction's geometry
        (1, 3, 64, 7, 4, 3, 224, 224),  # b0-b5's first embedding at 224²
        (1, 64, 128, 3, 2, 1, 56, 56),  # b1-b5's second at 224²
    ],
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_odd_shapes(backend, device, b, ci, co, k, s, p, h, w, bias):
    x = randn(b, h * w, ci, seed=h * w + ci, device=device)
    _check(backend, x, _weight(co, ci, k, device=device), randn(co, device=device) if bias else None, h, w, s, p)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("backend,device", [b for b in BACKENDS if b.values[0] == "cpu"])
def test_thread_splits(backend, device, threads):
    """Output pixels shared among 1-3 threads, across two images (a share spans both): b2's last embedding shape."""
    x, weight = randn(2, 13 * 17, 32, seed=threads, device=device), _weight(72, 32, 3, seed=threads, device=device)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check(backend, x, weight, randn(72, seed=threads, device=device), 13, 17, 2, 1)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fp32_sums_are_onednns(backend, device):
    """The C++ kernel sums over K in (kh, kw, ci) order as oneDNN's direct convolution does on CPU: the same bits
    (checked on b2's second embedding over a 25×33 map)."""
    if backend != "cpu":
        pytest.skip("only the C++ kernel promises oneDNN's order")
    x, weight, bias = randn(1, 25 * 33, 64, seed=5), _weight(128, 64, 3, seed=6), randn(128, seed=7)
    out = ops.token_conv(x, weight, bias, 25, 33, 2, 1, backend=backend)
    assert torch.equal(out, ops.token_conv_reference(x, weight, bias, 25, 33, 2, 1))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_input(backend, device):
    x = randn(2, 30, 24, seed=3, device=device)[:, :, 4:20]  # a channel slice: row stride 24, not 16
    _check(backend, x, _weight(16, 16, 3, device=device), None, 5, 6, 2, 1)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradients_are_the_references(backend, device):
    x = randn(2, 20, 6, seed=8, device=device).requires_grad_()
    weight, bias = _weight(10, 6, 3, device=device).requires_grad_(), randn(10, device=device).requires_grad_()
    grad = randn(2, 6, 10, seed=11, device=device)
    got = torch.autograd.grad(ops.token_conv(x, weight, bias, 4, 5, 2, 1, backend=backend), [x, weight, bias], grad)
    expected = torch.autograd.grad(ops.token_conv_reference(x, weight, bias, 4, 5, 2, 1), [x, weight, bias], grad)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_and_export_keep_the_fused_node(backend, device):
    x, weight, bias = randn(1, 35, 16, seed=12, device=device), _weight(24, 16, 3, device=device), None
    call = lambda t: ops.token_conv(t, weight, bias, 5, 7, 2, 1, ops.pack_weight(weight), backend=backend)  # noqa: E731
    check_compile_and_export(call, x, "pvtv2_fast_C.token_conv")


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(x=torch.randn(35, 16)), ValueError, "x must be (B, N, C) tokens"),
        (dict(width=6), ValueError, "35 tokens are not a 5×6 map"),
        (dict(weight=torch.randn(24, 16, 3, 2)), ValueError, "weight must be (Co, Ci, k, k)"),
        (dict(weight=torch.randn(24, 15, 3, 3)), ValueError, "weight must be (24, 16, 3, 3)"),
        (dict(x=torch.randn(1, 35, 0), weight=torch.randn(24, 0, 3, 3)), ValueError, "x has no channels"),
        (dict(stride=0), ValueError, "stride must be an int >= 1 and padding an int >= 0"),
        (dict(padding=-1), ValueError, "stride must be an int >= 1 and padding an int >= 0"),
        (dict(stride=2.0), ValueError, "stride must be an int >= 1"),
        (dict(padding=0, weight=torch.randn(24, 16, 6, 6)), ValueError, "a 6×6 kernel does not fit in a 5×7 map"),
        (dict(bias=torch.randn(23)), ValueError, "bias must be (24,)"),
        (dict(bias=torch.randn(24).double()), ValueError, "bias"),
        (dict(packed=torch.randn(1, 144, 32)), ValueError, "packed must be (1, 144, 64)"),
        (dict(packed=torch.randn(1, 72, 64, 2)), ValueError, "a weight packed in pairs is for bf16 inputs"),
    ],
)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_bad_input_is_a_clear_error(change, error, match, backend):
    args = dict(x=torch.randn(1, 35, 16), weight=torch.randn(24, 16, 3, 3), bias=None, height=5, width=7)
    args.update(stride=2, padding=1, packed=None)
    args.update(change)
    with pytest.raises(error, match=match.replace("(", r"\(").replace(")", r"\)")):
        ops.token_conv(**args, backend=backend)


@pytest.mark.parametrize(
    "preset,side,backend,runs",
    [("b0", 224, "auto", 3), ("b2", 224, "auto", 4), ("b2", 512, "auto", 0), ("b2", 512, "cpu", 4)],
)
def test_patch_embedding_takes_it_where_it_measured_faster(preset, side, backend, runs, monkeypatch):
    """A model's fp32 patch embeddings run ops.token_conv where it measured faster (all but b0's first, of 32
    channels, at 224²: 29-145 MFLOP each) and oneDNN's prepacked convolution elsewhere (b2's at 512²: 308-755 MFLOP),
    unless the "cpu" backend is forced; the encoder's output is the reference's either way, the packed weights
    cached (re-packed after load_state_dict)."""
    from pvtv2_fast import PvtV2Model

    torch.manual_seed(0)
    model = PvtV2Model(PvtV2Config.from_preset(preset)).eval()
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    calls, real = [], ops.token_conv
    monkeypatch.setattr(ops, "token_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        ref = model(x).last_hidden_state
        model.set_fast(True, backend)
        torch.testing.assert_close(model(x).last_hidden_state, ref, atol=1e-4, rtol=1e-4)
    assert len(calls) == runs
    embed = model.encoder.layers[1].patch_embedding
    assert ("proj_packed_tokens" in embed.__dict__.get("_inference_caches", {})) == bool(runs)
    if runs:  # the packing follows new weights
        other = PvtV2Model(PvtV2Config.from_preset(preset)).eval()
        model.load_state_dict(other.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(model(x).last_hidden_state, other(x).last_hidden_state, atol=1e-4, rtol=1e-4)
