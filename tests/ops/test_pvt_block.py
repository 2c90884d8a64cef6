"""``ops.pvt_block``, a whole PVTv2 block in one op (LN → SRA + residual → LN → conv FFN + residual), on every fused
backend this machine has (the C++ CPU block, forward-only), against its PyTorch composition; and the block module's
use of it."""

import sys

import pytest
import torch
from op_cases import DTYPE_IDS, DTYPES, IMAGE, check_compile_and_export, close, fused_backends, randn, require

from pvtv2_fast import PvtV2Config, ops, preset_names
from pvtv2_fast.validation import stage_shapes

BF16_PAIRS = sys.modules["pvtv2_fast.ops.pvt_block"].BF16_PAIRS

BACKENDS = fused_backends("pvt_block")


def _cases():
    """Every distinct (channels, heads, sr_ratio, FFN width) of the presets' SRA stages at the odd, non-square IMAGE."""
    seen, cases = set(), []
    for preset in preset_names():
        for i, s in enumerate(stage_shapes(PvtV2Config.from_preset(preset), *IMAGE)):
            key = (s.channels, s.heads, s.sr_ratio, s.ffn_hidden)
            if not s.linear and key not in seen:
                seen.add(key)
                cases.append((f"{preset}-stage{i + 1}", s.channels, s.heads, s.sr_ratio, s.ffn_hidden, s.height,
                              s.width))  # fmt: skip
    return cases


CASES = _cases()


def _block(c, s, hidden, dtype=torch.float32, device="cpu", seed=0):
    """(norm1, attention, norm2, ffn) of trained scale: activations of order one."""
    g = lambda *shape, k, sc=1.0: randn(*shape, seed=seed + k, scale=sc, device=device, dtype=dtype)  # noqa: E731
    norm1 = (1 + g(c, k=1, sc=0.1), g(c, k=2, sc=0.1))
    norm2 = (1 + g(c, k=3, sc=0.1), g(c, k=4, sc=0.1))
    attention = [g(c, c, k=5, sc=c**-0.5), g(c, k=6), g(2 * c, c, k=7, sc=c**-0.5), g(2 * c, k=8),
                 g(c, c, k=9, sc=c**-0.5), g(c, k=10)]  # fmt: skip
    if s > 1:
        attention += [g(c, c, s, s, k=11, sc=(s * s * c) ** -0.5), g(c, k=12), 1 + g(c, k=13, sc=0.1), g(c, k=14)]
    else:
        attention += [None] * 4
    ffn = [g(hidden, c, k=15, sc=c**-0.5), g(hidden, k=16), g(hidden, 1, 3, 3, k=17, sc=1 / 3), g(hidden, k=18),
           g(c, hidden, k=19, sc=hidden**-0.5), g(c, k=20)]  # fmt: skip
    return norm1, attention, norm2, ffn


def _call(x, parts, h, heads, backend, **kw):
    return ops.pvt_block(x, h, x.shape[1] // h, heads, *parts, backend=backend, **kw)


def _check(backend, x, parts, h, heads, what, **kw):
    require("pvt_block", backend, (x, None, None, [], None, None, [], h, 1, heads, 1.0, [], False, None))
    out = _call(x, parts, h, heads, backend, **kw)
    f = lambda t: None if t is None else t.float()  # noqa: E731
    ref_kw = {k: v for k, v in kw.items() if k != "packed"}  # packed in x's dtype; the reference takes fp32 copies
    ref = _call(x.float(), [[f(t) for t in p] for p in parts], h, heads, "torch", **ref_kw)
    assert ref.shape == x.shape, what
    close(out, ref, x.dtype, what)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_preset_stages(backend, device, case, batch, dtype):
    """Every preset's stage geometry on its odd, non-square map, with the packed weights passed and packed per
    call; fp32, and bf16 / fp16 through fp32 copies."""
    _, c, heads, s, hidden, h, w = case
    x = randn(batch, h * w, c, seed=c, device=device, dtype=dtype)
    parts = _block(c, s, hidden, dtype=dtype, device=device)
    if dtype == torch.bfloat16 and BF16_PAIRS:  # packed in pairs by default: bf16 GEMMs (test_bf16_pairs_*)
        _check_bf16_pairs(x, parts, h, heads, case[0])
    else:
        _check(backend, x, parts, h, heads, case[0])
    packed = ops.pack_block_weights(parts[1], parts[3], pairs=False)
    _check(backend, x, parts, h, heads, case[0] + " packed", packed=packed)


def _check_bf16_pairs(x, parts, h, heads, what, **kw):
    """The bf16 block with its weights packed in pairs (every GEMM bf16 × bf16 → fp32 on AVX512-BF16, only the GEMMs'
    inputs and the output rounded), packed by the op (the default here) and passed: against a float64 reference, its
    RMS error is at most the bf16 composition's (measured about 0.65x of it on the presets' stages) and its max
    error, a few bf16 ulps where intermediate values round, within 1.25x the composition's."""
    d = lambda t: None if t is None else t.double()  # noqa: E731
    exact = _call(x.double(), [[d(t) for t in p] for p in parts], h, heads, "torch", **kw)
    ref = _call(x, parts, h, heads, "torch", **kw).double() - exact
    packed = ops.pack_block_weights(parts[1], parts[3], pairs=True)
    for out in (_call(x, parts, h, heads, "cpu", **kw), _call(x, parts, h, heads, "cpu", packed=packed, **kw)):
        assert out.dtype == torch.bfloat16 and out.shape == x.shape, what
        err = out.double() - exact
        assert err.norm() <= ref.norm(), (what, err.norm().item(), ref.norm().item())
        assert err.abs().max() <= 1.25 * ref.abs().max(), (what, err.abs().max().item(), ref.abs().max().item())


@pytest.mark.parametrize(
    "b,c,heads,hidden,h,w,s,relu",
    [
        (1, 1, 1, 4, 1, 1, 1, False),  # one token, one channel
        (3, 40, 5, 72, 7, 9, 2, True),  # the linear variant's ReLU after fc1; heads of 8
        (2, 96, 3, 100, 5, 11, 3, False),  # half tiles; hidden off the vector widths
        (1, 64, 1, 512, 56, 56, 8, False),  # a whole 224² stage-1 block of b2 (conv_ffn's bands)
        (1, 320, 5, 1280, 15, 17, 2, False),  # 255 tokens, 3.3 MB of FFN weights: fp32 whole-map GEMMs on the BLAS
        (1, 130, 1, 64, 5, 7, 2, False),  # a 130-wide head: the bf16 block's fp32 attention
        (2, 6, 2, 8, 4, 5, 2, False),  # 3-wide heads (odd): likewise
        (2, 64, 2, 128, 23, 29, 1, False),  # no reduction: 667 keys, chunks of keys and a masked tail
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_odd_shapes(backend, device, b, c, heads, hidden, h, w, s, relu, dtype):
    """Also bf16 through fp32 copies and, where the CPU has AVX512-BF16, packed in pairs (even channel counts: the
    40- and 96-channel cases cut tiles of 64 columns short)."""
    x = randn(b, h * w, c, seed=h * w, device=device, dtype=dtype)
    parts = _block(c, s, hidden, device=device, dtype=dtype)
    kw = dict(relu_input=relu, eps=(1e-5, 1e-6, 1e-5))
    _check(backend, x, parts, h, heads, "odd", packed=ops.pack_block_weights(parts[1], parts[3], pairs=False), **kw)
    if dtype == torch.bfloat16 and BF16_PAIRS and c % 2 == 0:
        _check_bf16_pairs(x, parts, h, heads, "odd", **kw)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_no_norm_affine_and_strided_input(backend, device):
    x = randn(2, 30, 24, seed=3, device=device)[:, :, 4:20]  # channel slices: row stride 24, not 16
    norm1, attention, norm2, ffn = _block(16, 2, 32, device=device)
    _check(backend, x, ((None, None), attention, (None, norm2[1]), ffn), 5, 2, "strided")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_calls_that_need_gradients_run_the_reference(backend, device):
    """The C++ block is forward-only: "auto" sends a call that needs gradients to the composition (the reference's
    gradients), and the explicit backend refuses it."""
    x = randn(2, 20, 16, seed=8, device=device).requires_grad_()
    parts = _block(16, 2, 32, device=device)
    leaves = [x, *[t for p in parts for t in p if t is not None]]
    for t in leaves[1:]:
        t.requires_grad_()
    grad = randn(2, 20, 16, seed=11, device=device)
    with pytest.raises(NotImplementedError, match="forward-only"):
        _call(x, parts, 4, 2, backend)
    got = torch.autograd.grad(_call(x, parts, 4, 2, "auto"), leaves, grad)
    expected = torch.autograd.grad(_call(x, parts, 4, 2, "torch"), leaves, grad)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_and_export_keep_the_fused_node(backend, device, dtype):
    """Also bf16, whose weights are packed in pairs where the CPU has AVX512-BF16 (the fake kernel checks them)."""
    x, parts = randn(1, 35, 16, seed=12, device=device, dtype=dtype), _block(16, 2, 32, device=device, dtype=dtype)
    packed = ops.pack_block_weights(parts[1], parts[3])
    with torch.no_grad():
        check_compile_and_export(lambda t: _call(t, parts, 5, 2, backend, packed=packed), x, "pvtv2_fast_C.pvt_block")


def _bad(change):
    x, (norm1, attention, norm2, ffn) = randn(1, 20, 16, device="cpu"), _block(16, 2, 32)
    kw = {}
    for k, v in change.items():
        if k.startswith("attention"):
            attention[int(k[9:])] = v
        elif k.startswith("ffn"):
            ffn[int(k[3:])] = v
        else:
            kw[k] = v
    return lambda backend: _call(x, (norm1, attention, norm2, ffn), 4, 2, backend, **kw)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(attention0=randn(16, 15, device="cpu")), r"q_weight must be \(16, 16\)"),
        (dict(attention6=None), "belong to the spatial reduction"),
        (dict(ffn4=randn(8, 32, device="cpu")), r"fc2_weight (\(ffn\[4\]\) )?must map back to the 16 channels"),
        (dict(ffn2=randn(32, 1, 3, 2, device="cpu")), r"dw_weight must be \(32, 1, 3, 3\)"),
        (dict(packed=[randn(1, 16, 64, device="cpu")] * 3), "packed must hold 6 tensors"),
        (dict(eps=(1e-6, 1e-6)), "3 eps"),
        (dict(packed=[randn(1, 8, 64, 2, device="cpu")] * 6), "packed in pairs are for bf16 inputs"),
    ],
    ids=["q-shape", "norm-without-sr", "fc2-out", "dw-shape", "packed-count", "eps-count", "pairs-for-fp32"],
)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_bad_input_is_a_clear_error(change, match, backend):
    """Checked in Python for the composition and in C++ for the C++ block: both name what is wrong."""
    require("pvt_block", "cpu", (torch.zeros(1, 1, 1), None, None, [], None, None, []) + (None,) * 7)
    with pytest.raises((ValueError, RuntimeError), match=match):
        _bad(change)(backend)


@pytest.mark.parametrize("preset", ["b0", "b2"])
def test_block_module_runs_it_for_fp32_inference(preset, monkeypatch):
    """Fast mode runs each SRA block as one ops.pvt_block for fp32 CPU inference (the model's output within 1e-5 of
    the reference), bound once per block (ops.bind_pvt_block) and again only when its weights change;
    output_attentions and autograd run the per-module path; weights follow load_state_dict and in-place updates."""
    from bench.candidates import reference_model

    model = reference_model(preset)
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(0))
    binds, calls, real = [], [], ops.bind_pvt_block

    def counted(*a, **k):
        binds.append(1)
        block = real(*a, **k)
        return lambda *b: calls.append(1) or block(*b)

    monkeypatch.setattr(ops, "bind_pvt_block", counted)
    depth = sum(model.config.depths)
    with torch.no_grad():
        ref = model(x).last_hidden_state
        fast = model.set_fast(True).eval()
        torch.testing.assert_close(fast(x).last_hidden_state, ref, atol=1e-5, rtol=1e-5)
        assert (len(binds), len(calls)) == (depth, depth)
        fast(x)
        assert (len(binds), len(calls)) == (depth, 2 * depth)  # bound once, run twice
        fast(x, output_attentions=True)
        assert len(calls) == 2 * depth
        other = reference_model(preset)
        for p in other.parameters():
            p.data.mul_(0.9)
        expected = other(x).last_hidden_state
        fast.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x).last_hidden_state, expected, atol=1e-5, rtol=1e-5)
        assert (len(binds), len(calls)) == (2 * depth, 3 * depth)
        fast.encoder.layers[0].blocks[0].mlp.dense2.bias.add_(1.0)  # in place: that block binds again
        other.encoder.layers[0].blocks[0].mlp.dense2.bias.add_(1.0)
        torch.testing.assert_close(fast(x).last_hidden_state, other(x).last_hidden_state, atol=1e-5, rtol=1e-5)
        assert (len(binds), len(calls)) == (2 * depth + 1, 4 * depth)
    fast(x).last_hidden_state.sum().backward()
    assert len(calls) == 4 * depth


@pytest.mark.skipif(not BF16_PAIRS, reason="the bf16 block needs a CPU with AVX512-BF16 (and the AVX-512 kernels)")
@pytest.mark.parametrize("amx", [False, True], ids=["no-amx", "amx"])
def test_block_module_runs_it_for_bf16_inference_without_amx(monkeypatch, amx):
    """bf16 CPU inference in fast mode ("auto") runs each SRA block as one ops.pvt_block with its weights packed in
    pairs where the CPU has AVX512-BF16 and no AMX, bound once per block, and is no less accurate than the model run
    in bf16 (RMS of the last hidden state against fp32's); with AMX the per-op path (oneDNN's AMX kernels) stays."""
    from bench.candidates import reference_model

    monkeypatch.setattr(sys.modules["pvtv2_fast.ops.pvt_block"], "NATIVE_BF16_BLOCK", not amx)
    model = reference_model("b0")
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(0))
    binds, real = [], ops.bind_pvt_block

    def counted(*a, **k):
        binds.append(k["packed"])
        return real(*a, **k)

    monkeypatch.setattr(ops, "bind_pvt_block", counted)
    with torch.no_grad():
        exact = model(x).last_hidden_state
        model.to(torch.bfloat16)
        ref = (model(x.bfloat16()).last_hidden_state.float() - exact).norm()
        fast = model.set_fast(True)
        for _ in range(2):
            err = (fast(x.bfloat16()).last_hidden_state.float() - exact).norm()
            assert err <= ref, (err.item(), ref.item())
    assert len(binds) == (0 if amx else sum(model.config.depths))
    assert all(packed[0].ndim == 4 and packed[0].dtype == torch.bfloat16 for packed in binds)


def test_bound_blocks_follow_new_modules_and_dispatch(monkeypatch):
    """A bound block is reused only while nothing it was bound for changed: a submodule assigned anew (its
    parameters are other objects: the block gathers them again, see registration_generation), and what dispatch may
    choose (ops.simulate switching the C++ kernels off: the per-module path runs, not the bound C++ block)."""
    from bench.candidates import reference_model

    fast, ref = reference_model("b0").set_fast(True).eval(), reference_model("b0").eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    calls, real = [], ops.bind_pvt_block
    monkeypatch.setattr(
        ops, "bind_pvt_block", lambda *a, **k: (lambda b: lambda *c: calls.append(1) or b(*c))(real(*a, **k))
    )
    with torch.no_grad():
        fast(x)
        new = torch.nn.Linear(32, 256)
        fast.encoder.layers[0].blocks[1].mlp.dense1 = new
        ref.encoder.layers[0].blocks[1].mlp.dense1 = new
        torch.testing.assert_close(fast(x).last_hidden_state, ref(x).last_hidden_state, atol=1e-5, rtol=1e-5)
        ran = len(calls)
        with ops.simulate(unavailable=["cpu"], triton_interpreted=False), pytest.warns(ops.FallbackWarning):
            torch.testing.assert_close(fast(x).last_hidden_state, ref(x).last_hidden_state, atol=1e-5, rtol=1e-5)
        assert len(calls) == ran
        fast(x)
        assert len(calls) == ran + sum(fast.config.depths)
    ops.reset_warnings()


def test_bound_blocks_are_capped(monkeypatch):
    """A block keeps bound C++ blocks for at most MAX_BOUND_KINDS kinds of input (a server fed ever new sizes does
    not grow it without end); past that it starts over, with the same outputs."""
    from bench.candidates import reference_model
    from pvtv2_fast.modules import block as block_module
    from pvtv2_fast.modules.fast_path import derived_cache

    monkeypatch.setattr(block_module, "MAX_BOUND_KINDS", 2)
    fast, ref = reference_model("b0").set_fast(True).eval(), reference_model("b0").eval()
    first = fast.encoder.layers[0].blocks[0]
    with torch.no_grad():
        for size in (32, 40, 48, 56, 32):
            x = torch.randn(1, 3, size, size + 8, generator=torch.Generator().manual_seed(size))
            torch.testing.assert_close(fast(x).last_hidden_state, ref(x).last_hidden_state, atol=1e-5, rtol=1e-5)
            kinds = derived_cache(first)["pvt_block"][1]
            assert 1 <= len(kinds) <= 2
