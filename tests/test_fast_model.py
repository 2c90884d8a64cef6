"""``fast=True``: same parameters, same state dict, same outputs as the reference, on every backend this machine has
(Triton interpreted on a CPU-only machine, compiled on a GPU; the C++ CPU kernels; the CUDA C++ kernels), through
``torch.compile`` and ``torch.export``, and in training."""

import sys
import warnings

import pytest
import torch
from conftest import randomize_
from op_cases import DEVICE

from pvtv2_fast import PvtV2Backbone, PvtV2Config, PvtV2ForImageClassification, PvtV2Model, ops
from pvtv2_fast.ops import FallbackWarning

SIZE = (61, 45)  # small, odd, non-square: stage maps 16×12, 8×6, 4×3, 2×2
# Model-wide backends and the device their kernels take: every op then runs its kernel or its stand-in.
MODEL_BACKENDS = [pytest.param("triton", DEVICE, id="triton"), pytest.param("cpu", "cpu", id="cpu")]
if DEVICE == "cuda":
    MODEL_BACKENDS.append(pytest.param("cuda", "cuda", id="cuda"))
# The op that shows a backend's kernels ran (an export graph node).
FUSED_NODE = {
    "triton": "pvtv2_fast.dwconv_gelu_triton",
    "cpu": "pvtv2_fast_C.conv_ffn",
    "cuda": "pvtv2_fast_C.dwconv_gelu",
}
PRESETS = [pytest.param("b0", {}, id="b0"), pytest.param("b2_linear", dict(depths=[1, 2, 1, 1]), id="b2_linear")]


def _model(preset, device, seed=0, **overrides):
    config = PvtV2Config.from_preset(preset, num_labels=5, **overrides)
    return randomize_(PvtV2ForImageClassification(config), seed=seed).eval().to(device)


@pytest.mark.parametrize("preset,overrides", PRESETS)
@pytest.mark.parametrize("backend,device", MODEL_BACKENDS)
def test_fast_matches_reference(backend, device, preset, overrides):
    model = _model(preset, device, **overrides)
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        ref = model(x, output_hidden_states=True)
        fast = model.set_fast(True, backend=backend)(x, output_hidden_states=True)
    torch.testing.assert_close(fast.logits, ref.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", MODEL_BACKENDS)
def test_fast_model_compiles_and_exports_with_the_fused_ops(backend, device):
    model = _model("b0", device).set_fast(True, backend=backend)
    x = torch.randn(1, 3, *SIZE).to(device)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = model(x).logits
        torch.testing.assert_close(compiled(x).logits, expected)
    exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any(FUSED_NODE[backend] in t for t in targets), sorted(targets)
    if backend == "triton":
        assert any("pvtv2_fast.sra_attention_triton" in t for t in targets)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x).logits, expected)


@pytest.mark.parametrize("backend,device", MODEL_BACKENDS)
def test_training_through_fast_model_matches_reference_gradients(backend, device):
    model = _model("b0", device, seed=3)
    x = torch.randn(2, 3, 33, 35).to(device)
    labels = torch.tensor([1, 4]).to(device)
    model(x, labels=labels).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_fast(True, backend=backend)
    model(x, labels=labels).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize(
    "overrides,fused",
    [
        (dict(drop_path_rate=0.3), False),
        (dict(hidden_dropout_prob=0.2), False),
        (dict(attention_probs_dropout_prob=0.2), True),
        ({}, True),
    ],
    ids=["drop-path", "proj-dropout", "attention-dropout", "no-dropout"],
)
def test_residual_joins_the_projection_only_when_nothing_sits_between(overrides, fused):
    """In fast mode the block hands the residual to the attention's output projection (added in its epilogue),
    except in training with drop-path or projection dropout active, which must apply before the add: the same
    random draws then give the reference's outputs."""
    model = _model("b0", "cpu", **overrides).train()
    x = torch.randn(2, 3, 33, 35, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ref = model(x).logits
    model.set_fast(True, backend="cpu")
    block = model.pvt_v2.encoder.layers[1].blocks[1]
    calls = []
    hook = block.attention.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs.get("residual") is not None), with_kwargs=True
    )
    torch.manual_seed(0)
    fast = model(x).logits
    hook.remove()
    assert calls == [fused]
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)


def test_fast_switch_keeps_parameters_and_state_dict():
    model = _model("b0", DEVICE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p.data_ptr() for p in model.parameters()]
    model.fast = True
    assert model.fast
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.data_ptr() for p in model.parameters()] == params
    model.fast = False
    assert not model.fast


def test_fast_flag_in_constructors_and_from_pretrained(tmp_path):
    config = PvtV2Config(num_labels=3)
    assert PvtV2Backbone(config, fast=True).fast
    PvtV2ForImageClassification(config).save_pretrained(tmp_path)
    assert PvtV2ForImageClassification.from_pretrained(tmp_path, fast=True).fast
    assert not PvtV2ForImageClassification.from_pretrained(tmp_path).fast


def test_attention_maps_still_available_in_fast_mode():
    model = _model("b0", DEVICE)
    x = torch.randn(1, 3, *SIZE).to(DEVICE)
    with torch.no_grad():
        ref = model(x, output_attentions=True).attentions
        fast = model.set_fast(True, backend="triton")(x, output_attentions=True).attentions
    for a, b in zip(ref, fast):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_cached_weights_follow_weight_updates(backend):
    """Fast mode caches derived weights for inference (cat([key, value]), channels-last patch-embedding and
    spatial-reduction conv weights): in-place updates and load_state_dict refresh them."""
    model = _model("b0", DEVICE).set_fast(True, backend=backend)
    x = torch.randn(1, 3, *SIZE).to(DEVICE)
    with torch.no_grad():
        model(x)
        other = _model("b0", DEVICE, seed=7)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x).logits, other(x).logits, atol=1e-5, rtol=1e-5)
        for name, p in model.named_parameters():
            p.mul_(0.5)
            other.get_parameter(name).mul_(0.5)
        torch.testing.assert_close(model(x).logits, other(x).logits, atol=1e-5, rtol=1e-5)


def test_a_model_built_under_inference_mode_runs_fast():
    """Parameters created under torch.inference_mode() have no version counter: fast mode derives its weights per
    call for them instead of caching (it used to raise "Inference tensors do not track version counter")."""
    reference = _model("b0", "cpu")
    with torch.inference_mode():
        model = _model("b0", "cpu").set_fast(True)
        x = torch.randn(1, 3, *SIZE)
        torch.testing.assert_close(model(x).logits, reference(x).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_models_with_cached_weights_deep_copy_and_pickle(dtype):
    """The inference cache may hold opaque oneDNN tensors (no storage): copies and pickles of a model that has run
    start with an empty cache and compute the same outputs (transformers' tests deep-copy models, users save them
    whole)."""
    import copy
    import io

    model = _model("b0", "cpu").to(dtype).set_fast(True)
    x = torch.randn(1, 3, *SIZE, dtype=dtype)
    with torch.no_grad():
        expected = model(x).logits
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        for clone in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
            torch.testing.assert_close(clone(x).logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("preset,overrides", PRESETS)
@pytest.mark.parametrize("min_bytes", [0, 1 << 40], ids=["onednn", "f_linear"])
def test_fp32_projections_on_either_side_of_the_onednn_rule(monkeypatch, preset, overrides, min_bytes):
    """fp32 projections run on prepacked oneDNN weights from ONEDNN_FP32_MIN_OUT_BYTES of output (large maps) or
    ONEDNN_FP32_MIN_WEIGHT_BYTES of weight up, ``F.linear`` below: both stay within 1e-5 of the reference, and the
    packed weights follow load_state_dict. (With the one-call C++ attention layer off: it takes fp32 SRA inference,
    and the rule serves the per-op path, e.g. with output_attentions.)"""
    from pvtv2_fast.modules import SpatialReductionAttention, fast_path

    monkeypatch.setattr(SpatialReductionAttention, "layer_runs", lambda self, *args, **kwargs: False)
    monkeypatch.setattr(fast_path, "ONEDNN_FP32_MIN_OUT_BYTES", min_bytes)
    monkeypatch.setattr(fast_path, "ONEDNN_FP32_MIN_WEIGHT_BYTES", min_bytes)
    model = _model(preset, "cpu", **overrides)
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).logits
        fast = model.set_fast(True, backend="cpu")
        torch.testing.assert_close(fast(x).logits, ref, atol=1e-5, rtol=1e-5)
        attention = fast.pvt_v2.encoder.layers[0].blocks[0].attention
        assert ("proj" in attention.__dict__.get("_inference_caches", {})) == (min_bytes == 0)
        other = _model(preset, "cpu", seed=7, **overrides)
        expected = other(x).logits
        fast.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x).logits, expected, atol=1e-5, rtol=1e-5)


def test_fp32_onednn_rule_by_output_or_weight_bytes():
    """fp32 linears go to oneDNN from 2 MB of output (large maps) or 1 MB of weight (the C = 512 stage, even over
    224²'s 49 tokens), else F.linear."""
    from pvtv2_fast.modules.fast_path import _onednn_linear, onednn_takes

    if not onednn_takes(torch.float32):
        pytest.skip("this torch build has no oneDNN")
    cases = [((1, 49, 512), 512, True), ((1, 49, 512), 1024, True), ((1, 49, 320), 640, False)]
    cases += [((1, 16384, 32), 32, True), ((1, 3136, 64), 64, False), ((1, 49, 0), 512, False)]
    for shape, out_features, expected in cases:
        assert _onednn_linear(torch.empty(shape), out_features) == expected, (shape, out_features)


def _bf16_no_less_accurate(model, x, exact, fast_backend="cpu"):
    """Runs ``model`` (fp32 weights) in bf16 as the reference and then in fast mode, and checks that fast mode's
    error on the encoder's last hidden state, against ``exact`` (the fp32 reference's), is no larger than the
    reference's own bf16 error: RMS within 10%, max within 2x. Why these statistics: every layer rounds to bf16's 8
    bits in both paths, at different places, so the two errors are different draws of the same noise. Over the
    10-20k values of that state the RMS ratio measured 0.98-1.003 (b0 / b2-linear, 4 seeds, AVX-512 without AMX),
    while the max over the 10 logits swung 0.5-1.4x from seed to seed and CPU to CPU (oneDNN's kernels differ by
    ISA); a bug confined to some pixels or channels shows in the max (errors ~1e-2 against states of order one)."""
    model.to(torch.bfloat16)
    ref = (model(x.bfloat16(), output_hidden_states=True).hidden_states[-1].float() - exact).flatten()
    model.set_fast(True, backend=fast_backend)
    fast = (model(x.bfloat16(), output_hidden_states=True).hidden_states[-1].float() - exact).flatten()
    ref_rms, fast_rms = ref.norm().item(), fast.norm().item()
    assert fast_rms <= 1.1 * ref_rms, ("rms", fast_rms, ref_rms)
    assert fast.abs().max() <= 2 * ref.abs().max(), ("max", fast.abs().max().item(), ref.abs().max().item())
    return model


@pytest.mark.parametrize("preset,overrides", PRESETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn_ffn", "conv_ffn"])
def test_both_cpu_ffn_schedules_match_the_reference(monkeypatch, preset, overrides, dtype, onednn):
    """CPU inference runs the FFN as oneDNN fc1 → dwconv_gelu → oneDNN fc2 (+ residual) or as conv_ffn, by a size
    rule (modules/ffn.py); forced either way on every stage, fp32 stays within 1e-5 of the reference and bf16 no
    less accurate than the reference run in bf16 (as in test_bf16_on_cpu); the linear variant's ReLU is covered."""
    from pvtv2_fast.modules import ffn
    from pvtv2_fast.modules.fast_path import onednn_takes

    big = 1 << 40
    for name, value in (("MIN_WEIGHT_BYTES_FP32", 0), ("MAX_HIDDEN_BYTES_FP32", big), ("MAX_HIDDEN_BYTES_BF16", big)):
        monkeypatch.setattr(ffn, f"ONEDNN_FFN_{name}", (value if onednn else -1) if "MAX" in name else value)
    monkeypatch.setattr(ffn, "CONV_FFN_PACKED_MAX_TOKENS", -1)  # forced: small maps too
    # The FFN module's schedules: bf16 blocks not as one C++ block (its own FFN), as on a CPU with AMX.
    monkeypatch.setattr(sys.modules["pvtv2_fast.ops.pvt_block"], "NATIVE_BF16_BLOCK", False)
    model = _model(preset, "cpu", **overrides)
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if dtype == torch.float32:
            exact = model(x).logits
            torch.testing.assert_close(model.set_fast(True)(x).logits, exact, atol=1e-5, rtol=1e-5)
        else:
            exact = model(x, output_hidden_states=True).hidden_states[-1]
            _bf16_no_less_accurate(model, x, exact, fast_backend="auto")
    mlps = [m for m in model.modules() if isinstance(m, ffn.ConvFeedForward)]
    taken = onednn and onednn_takes(dtype)  # bf16 needs a CPU where oneDNN runs it natively
    assert all(("fc1" in m.__dict__.get("_inference_caches", {})) == taken for m in mlps)


@pytest.mark.parametrize("preset,overrides", PRESETS)
def test_bf16_on_cpu(preset, overrides):
    """bf16 on CPU: the C++ kernels read and write bf16 (bf16 GEMMs with fp32 sums in the FFN) and the projections
    run on prepacked oneDNN weights. bf16 keeps 8 significant bits and every layer rounds, so neither path matches
    fp32 closely (here ~1e-2 of outputs of order one); the fast path must be no less accurate than the reference
    run in bf16 (_bf16_no_less_accurate). Its cached packed weights follow load_state_dict and in-place updates:
    outputs equal a freshly built fast model's with those weights, bit for bit."""
    model = _model(preset, "cpu", **overrides)
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model(x, output_hidden_states=True).hidden_states[-1]
        fast = _bf16_no_less_accurate(model, x, exact)
        other = _model(preset, "cpu", seed=7, **overrides).to(torch.bfloat16).set_fast(True, backend="cpu")
        fast.load_state_dict(other.state_dict())
        assert torch.equal(fast(x.bfloat16()).logits, other(x.bfloat16()).logits)
        for name, p in fast.named_parameters():
            p.mul_(0.5)
            other.get_parameter(name).mul_(0.5)
        fresh = _model(preset, "cpu", **overrides).to(torch.bfloat16).set_fast(True, backend="cpu")
        fresh.load_state_dict(other.state_dict())
        assert torch.equal(fast(x.bfloat16()).logits, fresh(x.bfloat16()).logits)


def test_cpu_without_kernels_falls_back_with_one_warning():
    """No C++ extension and compiled (non-interpreted) Triton, which needs CUDA tensors: the fast model warns once per
    op that loses its kernel (the FFN; attention on CPU is SDPA by design) and stays exact."""
    ops.reset_warnings()
    model = _model("b0", "cpu")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), ops.simulate(unavailable=["cpu"], triton_interpreted=False):
        ref = model(x).logits
        model.set_fast(True)
        with pytest.warns(FallbackWarning, match="cpu backend is switched off") as record:
            fast = model(x).logits
        assert [str(w.message).split(":")[0] for w in record] == ["pvtv2_fast.ops.conv_ffn"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(x)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    ops.reset_warnings()


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", ["b0", "b2", "b2_linear"])
def test_fast_backbone_matches_reference_on_gpu(preset):
    model = PvtV2Model(PvtV2Config.from_preset(preset)).eval().cuda()
    x = torch.randn(2, 3, 517, 389, device="cuda")
    with torch.no_grad():
        ref = model(x, output_hidden_states=True).hidden_states
        fast = model.set_fast(True)(x, output_hidden_states=True).hidden_states
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
