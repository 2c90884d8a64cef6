"""``pvtv2_fast.patch`` / ``unpatch`` on transformers (PvtV2, Segformer) and timm (pvt_v2) models: parity with the
unpatched model (fp32, 1e-5) for SRA and Linear SRA on odd sizes, the fused ops really called, class /
parameters / state_dict untouched, exact restore, fallbacks, gradients, timm helpers and a transformers pipeline."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import transformers
from conftest import randomize_
from PIL import Image

import pvtv2_fast
from pvtv2_fast import ops

ATOL = 1e-5
SIZES = [(61, 45), (97, 131)]
TINY = dict(hidden_sizes=[16, 32, 64, 128], num_attention_heads=[1, 2, 4, 8], depths=[2, 2, 2, 2], num_labels=5)


def _build(source: str) -> torch.nn.Module:
    """A model with random weights (LayerNorm affine included) in eval mode."""
    if source.startswith("timm:"):
        model = timm.create_model(source[5:], num_classes=5)
    elif source == "hf:sra":
        model = transformers.PvtV2ForImageClassification(transformers.PvtV2Config(**TINY))
    elif source == "hf:linear":
        model = transformers.PvtV2ForImageClassification(transformers.PvtV2Config(**TINY, linear_attention=True))
    elif source == "hf:backbone":
        model = transformers.PvtV2Backbone(transformers.PvtV2Config(**TINY, out_indices=[0, 1, 2, 3]))
    elif source == "hf:segformer":
        model = transformers.SegformerForSemanticSegmentation(
            transformers.SegformerConfig(
                hidden_sizes=[16, 32, 64, 128],
                num_attention_heads=[1, 2, 4, 8],
                depths=[1, 1, 1, 1],
                num_labels=5,
                decoder_hidden_size=32,
            )
        )
    else:
        raise ValueError(source)
    return randomize_(model, seed=3).eval()


SOURCES = ["timm:pvt_v2_b0", "timm:pvt_v2_b2_li", "hf:sra", "hf:linear", "hf:backbone", "hf:segformer"]


def _outputs(model, x):
    out = model(x)
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "feature_maps"):
        return list(out.feature_maps)
    return [out.logits]


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the fused ops (patch.py calls them through the ops module)."""
    calls = {"sra_attention": 0, "conv_ffn": 0, "linear_sra_pool": 0}
    for name in calls:
        real = getattr(ops, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(ops, name, counted)
    return calls


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("source", SOURCES)
def test_patch_parity_and_restore(source, size, spy):
    model = _build(source)
    cls, params = type(model), {n: p for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = _outputs(model, x)
        assert pvtv2_fast.patch(model) is model and pvtv2_fast.is_patched(model)
        patched = _outputs(model, x)
    blocks = sum(1 for m in model.modules() if type(m).__name__ in ("Block", "PvtV2BlockLayer", "SegformerLayer"))
    assert spy["sra_attention"] == spy["conv_ffn"] == blocks > 0
    assert spy["linear_sra_pool"] == (blocks if source in ("timm:pvt_v2_b2_li", "hf:linear") else 0)
    for a, b in zip(before, patched):
        assert a.shape == b.shape and (a - b).abs().max().item() <= ATOL
    # class, parameter objects and state_dict untouched
    assert type(model) is cls and dict(model.named_parameters()) == params
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    pvtv2_fast.unpatch(model)
    assert not pvtv2_fast.is_patched(model)
    assert not any("forward" in vars(m) for m in model.modules())
    with torch.no_grad():
        for a, b in zip(before, _outputs(model, x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("source", ["hf:sra", "hf:segformer"])
def test_patched_attention_maps_fall_back(source):
    """output_attentions needs the probabilities, which the fused attention never forms: the patched module
    runs its original forward for that call, so the maps are transformers' own."""
    model = _build(source)
    model.config._attn_implementation = "eager"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, output_attentions=True).attentions
        pvtv2_fast.patch(model)
        got = model(x, output_attentions=True).attentions
    flat = lambda t: [a for s in t for a in (s if isinstance(s, tuple) else (s,))]  # noqa: E731
    assert len(flat(got)) == len(flat(ref)) > 0
    # the maps are the original attention's; the fused FFNs between them round differently (fp32, ~1e-7)
    assert all((a - b).abs().max().item() <= ATOL for a, b in zip(flat(got), flat(ref)))


@pytest.mark.parametrize("source", ["timm:pvt_v2_b2_li", "hf:sra", "hf:segformer"])
def test_patched_gradients(source):
    """Training through the patched model gives the unpatched model's gradients (the ops' autograd). Segformer
    trains with drop-path and decode-head dropout: the same seed gives the same masks (the fused ops draw no
    random numbers)."""
    model = _build(source).train()
    patched = pvtv2_fast.patch(copy.deepcopy(model))
    x = torch.randn(2, 3, 61, 45, generator=torch.Generator().manual_seed(1))
    for m in (model, patched):
        torch.manual_seed(0)
        _outputs(m, x)[0].square().mean().backward()
    grads = dict(model.named_parameters())
    for name, p in patched.named_parameters():
        assert (p.grad - grads[name].grad).abs().max().item() <= ATOL, name


def test_patch_with_dropout_in_training_falls_back(spy):
    model = transformers.PvtV2ForImageClassification(
        transformers.PvtV2Config(**TINY, attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1)
    ).train()
    pvtv2_fast.patch(model)
    model(torch.randn(1, 3, 64, 64))
    assert spy["sra_attention"] == spy["conv_ffn"] == 0
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert spy["sra_attention"] == spy["conv_ffn"] == 8


def test_patch_non_gelu_ffn_falls_back(spy):
    model = transformers.PvtV2ForImageClassification(transformers.PvtV2Config(**TINY, hidden_act="relu")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).logits
        pvtv2_fast.patch(model)
        assert (model(x).logits - ref).abs().max().item() <= ATOL
    assert spy["conv_ffn"] == 0 and spy["sra_attention"] == 8


def test_patch_timm_helpers():
    """timm's forward_intermediates and a features_only model keep working, with the same maps."""
    model = _build("timm:pvt_v2_b0")
    features = timm.create_model("pvt_v2_b0", features_only=True).eval()
    features.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head")}, strict=False)
    x = torch.randn(1, 3, 61, 45)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        ref_features = features(x)
        pvtv2_fast.patch(model)
        pvtv2_fast.patch(features)
        got = model.forward_intermediates(x, intermediates_only=True)
        got_features = features(x)
    for a, b in zip(ref + ref_features, got + got_features):
        assert (a - b).abs().max().item() <= ATOL


def test_patch_rejects_other_models():
    with pytest.raises(TypeError, match="no transformers PvtV2"):
        pvtv2_fast.patch(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="backend"):
        pvtv2_fast.patch(_build("hf:sra"), backend="nope")


@pytest.mark.parametrize("source", ["hf:linear", "timm:pvt_v2_b2_li", "hf:segformer"])
def test_patch_twice_and_explicit_backends(source, spy):
    """Re-patching switches the backend; "torch" and "cpu" (C++ kernels, SDPA attention) both match."""
    model = _build(source)
    x = torch.randn(1, 3, 61, 45)
    with torch.no_grad():
        ref = _outputs(model, x)[0]
        for backend in ("auto", "torch", "cpu"):
            pvtv2_fast.patch(model, backend=backend)
            assert (_outputs(model, x)[0] - ref).abs().max().item() <= ATOL, backend
    assert spy["conv_ffn"] > 0
    pvtv2_fast.unpatch(model)
    assert not any("forward" in vars(m) for m in model.modules())


def test_pipeline_image_classification():
    """transformers.pipeline on a patched tiny model built locally (no hub): same labels and scores."""
    model = _build("hf:sra")
    processor = transformers.PvtImageProcessor(size={"height": 64, "width": 64})
    rgb = np.random.default_rng(0).integers(0, 256, (80, 70, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    classify = transformers.pipeline("image-classification", model=model, image_processor=processor, device="cpu")
    ref = classify(image, top_k=5)
    pvtv2_fast.patch(model)
    got = classify(image, top_k=5)
    assert [r["label"] for r in got] == [r["label"] for r in ref]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, ref)) <= ATOL
