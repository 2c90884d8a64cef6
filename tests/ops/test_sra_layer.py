"""``ops.sra_layer``, the whole SRA of a block in one op (q / kv projections, spatial reduction + LayerNorm,
attention, output projection + residual), on every fused backend this machine has (the C++ CPU layer), against its
PyTorch composition; and the attention module's use of it."""

import pytest
import torch
from op_cases import DTYPE_IDS, DTYPES, IMAGE, check_compile_and_export, close, fused_backends, randn, require

from pvtv2_fast import PvtV2Config, ops, preset_names
from pvtv2_fast.validation import stage_shapes

BACKENDS = fused_backends("sra_layer")


def _cases():
    """Every distinct (channels, heads, sr_ratio) of the presets' SRA stages at the odd, non-square IMAGE."""
    seen, cases = set(), []
    for preset in preset_names():
        for i, s in enumerate(stage_shapes(PvtV2Config.from_preset(preset), *IMAGE)):
            key = (s.channels, s.heads, s.sr_ratio)
            if not s.linear and key not in seen:
                seen.add(key)
                cases.append((f"{preset}-stage{i + 1}", s.channels, s.heads, s.sr_ratio, s.height, s.width))
    return cases


CASES = _cases()


def _layer(c, s, seed=0, dtype=torch.float32, device="cpu", bias=True):
    """Weights of a trained layer's scale (std 1 / sqrt(fan-in)), so activations stay of order one."""
    g = lambda *shape, k=1, sc=1.0: randn(*shape, seed=seed + k, scale=sc, device=device, dtype=dtype)  # noqa: E731
    w = dict(
        q_weight=g(c, c, k=1, sc=c**-0.5),
        q_bias=g(c, k=2) if bias else None,
        kv_weight=g(2 * c, c, k=3, sc=c**-0.5),
        kv_bias=g(2 * c, k=4) if bias else None,
        proj_weight=g(c, c, k=5, sc=c**-0.5),
        proj_bias=g(c, k=6),
    )
    if s > 1:
        w.update(
            sr_weight=g(c, c, s, s, k=7, sc=(s * s * c) ** -0.5),
            sr_bias=g(c, k=8),
            norm_weight=1 + g(c, k=9, sc=0.1),
            norm_bias=g(c, k=10, sc=0.1),
        )
    return w


def _call(x, w, h, heads, backend, residual=None, packed=None, eps=1e-6):
    wd = w.copy()
    head = [wd.pop(k) for k in ("q_weight", "q_bias", "kv_weight", "kv_bias", "proj_weight", "proj_bias")]
    return ops.sra_layer(
        x, *head, h, x.shape[1] // h, heads, residual=residual, packed=packed, eps=eps, backend=backend, **wd
    )


def _reference(x, w, h, heads, residual=None):
    """The composition on fp32 copies of the same (rounded) inputs."""
    f = {k: None if v is None else v.float() for k, v in w.items()}
    return _call(x.float(), f, h, heads, "torch", None if residual is None else residual.float())


def _check(backend, x, w, h, heads, residual=None, packed=None, what="sra_layer"):
    args = (x, *[w.get(k) for k in ("q_weight", "q_bias", "kv_weight", "kv_bias", "proj_weight", "proj_bias")])
    require("sra_layer", backend, args + (None,) * 11)
    out = _call(x, w, h, heads, backend, residual, packed)
    close(out, _reference(x, w, h, heads, residual), x.dtype, what)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_preset_stages(backend, device, case, batch, dtype):
    """Every preset's (channels, heads, sr_ratio) on its odd, non-square stage map (partial windows dropped), with a
    residual, with the packed weights passed and packed per call; fp32, and bf16 / fp16 through fp32 copies."""
    _, c, heads, s, h, w = case
    x = randn(batch, h * w, c, seed=c, device=device, dtype=dtype)
    residual = randn(batch, h * w, c, seed=c + 1, device=device, dtype=dtype)
    weights = _layer(c, s, dtype=dtype, device=device)
    _check(backend, x, weights, h, heads, residual, what=case[0])
    packed = ops.pack_layer_weights(weights["q_weight"], weights["kv_weight"], weights["proj_weight"],
                                    weights.get("sr_weight"))  # fmt: skip
    _check(backend, x, weights, h, heads, residual, packed, what=case[0] + " packed")


@pytest.mark.parametrize(
    "b,c,heads,h,w,s,bias,residual",
    [
        (1, 1, 1, 1, 1, 1, True, False),  # one token, one channel
        (3, 40, 5, 7, 9, 2, False, True),  # no q / kv bias (qkv_bias=False), heads of 8
        (2, 96, 3, 5, 11, 3, True, False),  # channels off the 64-column blocks (96 = 64 + 32: the half tile)
        (1, 70, 2, 6, 5, 1, True, True),  # no reduction: keys from x itself; 70 = 64 + 6 (scalar tail)
        (1, 64, 1, 56, 56, 8, True, True),  # a whole 224² stage-1 map (b2)
        (2, 32, 1, 4, 4, 4, True, True),  # one key per image
    ],
)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_odd_shapes(backend, device, b, c, heads, h, w, s, bias, residual):
    x = randn(b, h * w, c, seed=h * w, device=device)
    res = randn(b, h * w, c, seed=5, device=device) if residual else None
    _check(backend, x, _layer(c, s, device=device, bias=bias), h, heads, res)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_input_and_residual(backend, device):
    x = randn(2, 30, 24, seed=3, device=device)[:, :, 4:20]  # channel slices: row stride 24, not 16
    res = randn(2, 30, 24, seed=4, device=device)[:, :, 2:18]
    _check(backend, x, _layer(16, 2, device=device), 5, 2, res)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradients_are_the_references(backend, device):
    """The fused layer is forward-only: autograd recomputes the reference composition."""
    x = randn(2, 20, 16, seed=8, device=device).requires_grad_()
    residual = randn(2, 20, 16, seed=9, device=device).requires_grad_()
    w = {k: v.requires_grad_() for k, v in _layer(16, 2, device=device).items()}
    leaves = [x, residual, *w.values()]
    grad = randn(2, 20, 16, seed=11, device=device)
    got = torch.autograd.grad(_call(x, w, 4, 2, backend, residual), leaves, grad)
    expected = torch.autograd.grad(_call(x, w, 4, 2, "torch", residual), leaves, grad)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_and_export_keep_the_fused_node(backend, device):
    x, w = randn(1, 35, 16, seed=12, device=device), _layer(16, 2, device=device)
    packed = ops.pack_layer_weights(w["q_weight"], w["kv_weight"], w["proj_weight"], w["sr_weight"])
    call = lambda t: _call(t, w, 5, 2, backend, residual=t, packed=packed)  # noqa: E731
    check_compile_and_export(call, x, "pvtv2_fast_C.sra_layer")


def _bad(**change):
    """A call of a valid 4×5 layer (16 channels, 2 heads, sr 2) with ``change`` applied to its arguments."""
    x, w = randn(1, 20, 16, device="cpu"), _layer(16, 2)
    kwargs = {k: change.pop(k) for k in ("residual", "packed") if k in change}
    w.update(change)
    return lambda: _call(x, w, 4, 2, "cpu", **kwargs)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(q_weight=randn(16, 15, device="cpu")), r"q_weight must be \(16, 16\)"),
        (dict(kv_weight=randn(16, 16, device="cpu")), r"kv_weight must be \(32, 16\)"),
        (dict(sr_weight=None), "belong to the spatial reduction"),
        (dict(sr_weight=randn(16, 16, 5, 5, device="cpu")), "does not fit"),
        (dict(residual=randn(1, 20, 8, device="cpu")), r"residual must be \(1, 20, 16\)"),
        (dict(packed=[randn(1, 16, 64, device="cpu")]), "packed must hold 4 tensors"),
        (dict(packed=[randn(1, 16, 64, device="cpu")] * 4), r"packed\[1\] must be \(1, 16, 64\)|packed\[3\]"),
        (dict(norm_bias=randn(16, device="cpu", dtype=torch.float64)), "norm_bias must share x's dtype"),
    ],
    ids=[
        "q-shape",
        "kv-shape",
        "norm-without-sr",
        "sr-too-big",
        "residual-shape",
        "packed-count",
        "packed-shape",
        "dtype",
    ],  # fmt: skip
)
def test_bad_input_is_a_clear_error(change, match):
    with pytest.raises(ValueError, match=match):
        _bad(**change)()


def test_heads_must_divide_channels():
    x, w = randn(1, 20, 16, device="cpu"), _layer(16, 2)
    with pytest.raises(ValueError, match="16 channels are not divisible into 3 heads"):
        _call(x, w, 4, 3, "cpu")


def test_auto_takes_the_cpp_layer_for_fp32_only():
    from pvtv2_fast.ops.registry import OPS

    for dtype, chosen in ((torch.float32, "cpu"), (torch.bfloat16, "torch"), (torch.float16, "torch")):
        x = torch.zeros(1, 4, 64, dtype=dtype)
        args = (x,) + (None,) * 13 + (1, 0.125, 1e-6, None)
        assert OPS["sra_layer"].resolve("auto", args) == chosen, dtype
        assert OPS["sra_layer"].resolve("cpu", args) == "cpu"
    wide = (torch.zeros(1, 4, 256),) + (None,) * 13 + (1, 0.0625, 1e-6, None)  # 256-wide heads: SDPA's
    assert OPS["sra_layer"].resolve("auto", wide) == "torch"


@pytest.mark.parametrize("sr_ratio", [4, 1], ids=["sr4", "sr1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attention_module_runs_it_for_fp32_inference(sr_ratio, dtype, monkeypatch):
    """Fast mode's SRA runs as one ops.sra_layer for fp32 CPU inference, its packed weights cached (and re-packed
    after load_state_dict); bf16, output_attentions and autograd keep the per-op path. All within tolerance."""
    from pvtv2_fast.modules import SpatialReductionAttention

    torch.manual_seed(0)
    attn = SpatialReductionAttention(64, 2, sr_ratio=sr_ratio).eval().to(dtype)
    x, residual = torch.randn(2, 13 * 17, 64, dtype=dtype), torch.randn(2, 13 * 17, 64, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    with torch.no_grad():
        ref = attn(x, 13, 17, residual=residual)[0]
        attn.fast = True
        calls, real = [], ops.sra_layer
        monkeypatch.setattr(ops, "sra_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
        torch.testing.assert_close(attn(x, 13, 17, residual=residual)[0].float(), ref.float(), atol=tol, rtol=tol)
        assert len(calls) == (dtype == torch.float32)
        assert ("sra_layer_pack" in attn.__dict__.get("_inference_caches", {})) == (dtype == torch.float32)
        _, probs = attn(x, 13, 17, output_attentions=True)
        assert probs is not None and len(calls) == (dtype == torch.float32)
        other = SpatialReductionAttention(64, 2, sr_ratio=sr_ratio).eval().to(dtype)
        attn.load_state_dict(other.state_dict())
        torch.testing.assert_close(attn(x, 13, 17)[0].float(), other(x, 13, 17)[0].float(), atol=tol, rtol=tol)
    attn(x.requires_grad_(), 13, 17)[0].sum().backward()  # autograd: the per-op path
    assert len(calls) == 2 * (dtype == torch.float32)
