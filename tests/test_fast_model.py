"""``fast=True`` with the Triton kernels (interpreted on CPU, compiled on CUDA): same parameters, same state dict,
same outputs as the reference. The C++ backend's model tests are in test_ops_cpp.py."""

import warnings

import pytest
import torch

from pvtv2_fast import PvtV2Backbone, PvtV2Config, PvtV2ForImageClassification, ops
from pvtv2_fast import _ext
from pvtv2_fast.ops import FallbackWarning, _dispatch
from conftest import randomize_

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZE = (61, 45)  # small, odd, non-square: stage maps 16×12, 8×6, 4×3, 2×2


def _model(preset, seed=0, **overrides):
    config = PvtV2Config.from_preset(preset, num_labels=5, **overrides)
    return randomize_(PvtV2ForImageClassification(config), seed=seed).eval().to(DEVICE)


@pytest.mark.parametrize("preset,overrides", [("b0", {}), ("b2_linear", dict(depths=[1, 1, 1, 1]))],
                         ids=["b0", "b2_linear"])
def test_fast_matches_reference(preset, overrides):
    model = _model(preset, **overrides)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with torch.no_grad():
        ref = model(x, output_hidden_states=True)
        model.set_fast(True, backend="triton")
        fast = model(x, output_hidden_states=True)
        model.set_fast(False)
    torch.testing.assert_close(fast.logits, ref.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fast_switch_keeps_parameters_and_state_dict():
    model = _model("b0")
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
    model = _model("b0")
    x = torch.randn(1, 3, *SIZE).to(DEVICE)
    with torch.no_grad():
        ref = model(x, output_attentions=True).attentions
        model.set_fast(True, backend="triton")
        fast = model(x, output_attentions=True).attentions
    for a, b in zip(ref, fast):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v)


def test_cpu_without_kernels_falls_back_with_one_warning(monkeypatch):
    """No C++ extension and compiled (non-interpreted) Triton kernels, which need CUDA tensors: the fast model warns
    once per op that loses its kernel (dwconv; attention on CPU is SDPA by design) and stays exact."""
    monkeypatch.setattr(_dispatch, "_status", (True, False, ""))
    monkeypatch.setattr(_ext, "_loaded", False)
    ops.reset_warnings()
    model = _model("b0").cpu()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).logits
        model.set_fast(True)
        with pytest.warns(FallbackWarning, match=r"C\+\+ extension pvtv2_fast._C is not built") as record:
            fast = model(x).logits
        assert [str(w.message).split(":")[0] for w in record] == ["pvtv2_fast.ops.dwconv_gelu"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(x)
    # the fast modules' packed K/V GEMM sums in another order than two GEMMs: equal to fp32 rounding
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    ops.reset_warnings()


def test_fast_model_compiles_without_graph_breaks():
    model = _model("b0").set_fast(True, backend="triton")
    x = torch.randn(1, 3, *SIZE).to(DEVICE)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x).logits, model(x).logits)


def test_fast_model_exports():
    model = _model("b0").set_fast(True, backend="triton")
    x = torch.randn(1, 3, *SIZE).to(DEVICE)
    exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any("pvtv2_fast.sra_attention_triton" in t for t in targets)
    assert any("pvtv2_fast.dwconv_gelu_triton" in t for t in targets)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x).logits, model(x).logits)


def test_training_through_fast_model_matches_reference_gradients():
    model = _model("b0", seed=3)
    x = torch.randn(2, 3, 33, 35).to(DEVICE)
    labels = torch.tensor([1, 4]).to(DEVICE)
    model(x, labels=labels).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_fast(True, backend="triton")
    model(x, labels=labels).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")
