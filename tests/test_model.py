"""Model behaviour: input validation, any input size, outputs, training vs eval, backbone selection, losses."""

from types import SimpleNamespace

import pytest
import torch

from pvtv2_fast import PvtV2Backbone, PvtV2Config, PvtV2ForImageClassification, PvtV2Model, min_input_size, stage_sizes


@pytest.fixture(scope="module")
def b0():
    return PvtV2ForImageClassification(PvtV2Config(num_labels=4)).eval()


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (torch.randn(3, 64, 64), ValueError, r"\(B, 3, H, W\).*rank 3.*unsqueeze"),
        (torch.randn(1, 1, 3, 64, 64), ValueError, "rank 5"),
        (torch.randn(1, 4, 64, 64), ValueError, "4 channels"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "float.*uint8"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.int64), TypeError, "int64"),
        (torch.randn(0, 3, 64, 64), ValueError, "batch size 0"),
        ([[1.0]], TypeError, "list"),
    ],
)
def test_bad_input_is_rejected(b0, bad, error, match):
    with pytest.raises(error, match=match):
        b0(bad)


def test_too_small_image_names_the_minimum(b0):
    assert min_input_size(b0.config) == 29
    with pytest.raises(ValueError, match="at least 29×29"):
        b0(torch.randn(1, 3, 28, 64))
    b0(torch.randn(1, 3, 29, 29))  # the minimum itself works


def test_linear_attention_has_no_sr_minimum():
    model = PvtV2Model(PvtV2Config.from_preset("b2_linear", depths=[1, 1, 1, 1])).eval()
    assert min_input_size(model.config) == 1
    assert model(torch.randn(1, 3, 5, 3)).last_hidden_state.shape == (1, 512, 1, 1)


@pytest.mark.parametrize("size", [(97, 131), (224, 160), (33, 257), (64, 64)])
def test_any_input_size(b0, size):
    h, w = size
    with torch.no_grad():
        out = b0(torch.randn(2, 3, h, w), output_hidden_states=True)
    expected = stage_sizes(b0.config, h, w)
    assert [tuple(s.shape[2:]) for s in out.hidden_states] == expected
    assert [s.shape[1] for s in out.hidden_states] == b0.config.hidden_sizes
    assert out.logits.shape == (2, 4)


def test_eval_is_deterministic_and_batch_independent(b0):
    x = torch.randn(3, 3, 97, 131)
    with torch.no_grad():
        a, b = b0(x).logits, b0(x).logits
        single = b0(x[1:2]).logits
    assert torch.equal(a, b)
    torch.testing.assert_close(single[0], a[1], atol=1e-5, rtol=1e-5)


def test_training_mode_applies_drop_path_and_dropout():
    config = PvtV2Config(num_labels=3, drop_path_rate=0.3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    model = PvtV2ForImageClassification(config).train()
    rates = [
        b.drop_path.drop_prob
        for s in model.pvt_v2.encoder.layers
        for b in s.blocks
        if hasattr(b.drop_path, "drop_prob")
    ]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 8).tolist()[1:])  # linear decay, first block 0
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    a = model(x).logits
    b = model(x).logits
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)


def test_return_dict_false_and_indexing(b0):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = b0(x, return_dict=True)
        tup = b0(x, return_dict=False)
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.logits) and torch.equal(out[0], out.logits)


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(), ["stage4"]),
        (dict(out_indices=[0, 1, 2, 3]), ["stage1", "stage2", "stage3", "stage4"]),
        (dict(out_features=["stage2", "stage3"]), ["stage2", "stage3"]),
        (dict(out_indices=[-1]), ["stage4"]),
    ],
)
def test_backbone_feature_selection(kwargs, expected):
    config = PvtV2Config(**kwargs)
    bb = PvtV2Backbone(config).eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        maps = bb(x).feature_maps
        all_maps = bb(x, output_hidden_states=True).hidden_states
    assert config.out_features == expected
    assert len(maps) == len(expected)
    for m, i in zip(maps, config.out_indices):
        assert m.shape == (2, config.hidden_sizes[i], *stage_sizes(config, 97, 131)[i])
        assert torch.equal(m, all_maps[i])
    assert bb.channels == [config.hidden_sizes[i] for i in config.out_indices]


def test_losses():
    x = torch.randn(3, 3, 64, 64)
    model = PvtV2ForImageClassification(PvtV2Config(num_labels=4)).eval()
    out = model(x, labels=torch.tensor([0, 3, 1]))
    assert out.loss.ndim == 0 and torch.isclose(
        out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 3, 1]))
    )
    multi = model(x, labels=torch.tensor([[0, 1, 1, 0]] * 3, dtype=torch.float))
    assert torch.isclose(
        multi.loss,
        torch.nn.functional.binary_cross_entropy_with_logits(multi.logits, torch.tensor([[0.0, 1, 1, 0]] * 3)),
    )
    reg = PvtV2ForImageClassification(PvtV2Config(num_labels=1)).eval()
    out = reg(x, labels=torch.tensor([0.5, 1.0, -1.0]))
    assert torch.isclose(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), torch.tensor([0.5, 1.0, -1.0])))
    out.loss.backward()
    assert reg.pvt_v2.encoder.layers[0].patch_embedding.proj.weight.grad is not None


def test_num_labels_zero_gives_pooled_features():
    model = PvtV2ForImageClassification(PvtV2Config(num_labels=0)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).logits.shape == (2, 256)


def test_half_precision_runs():
    model = PvtV2Model(PvtV2Config()).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)).last_hidden_state
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("preset", ["b0", "b2_linear"])
@pytest.mark.parametrize("budget", [1, 50_000, 400_000])
def test_memory_lean_ffn_bands_are_exact(preset, budget):
    """Row bands with a one-row halo compute the same FFN: bit-identical in the reference (budget 1 → one-row
    bands; larger budgets → bands that straddle the maps unevenly)."""
    config = PvtV2Config.from_preset(preset, depths=[1, 1, 1, 1])
    model = PvtV2Model(config).eval()
    x = torch.randn(2, 3, 131, 97)
    with torch.no_grad():
        ref = model(x, output_hidden_states=True).hidden_states
        model.set_memory_lean(True, max_hidden_bytes=budget)
        lean = model(x, output_hidden_states=True).hidden_states
    for a, b in zip(ref, lean):
        assert torch.equal(a, b)


def test_fast_mode_turns_memory_lean_on_and_off():
    model = PvtV2Model(PvtV2Config())
    ffns = [b.mlp for s in model.encoder.layers for b in s.blocks]
    assert all(f.max_hidden_bytes is None for f in ffns)
    model.set_fast(True)
    assert all(f.max_hidden_bytes == model.DEFAULT_MAX_HIDDEN_BYTES for f in ffns)
    model.set_fast(False)
    assert all(f.max_hidden_bytes is None for f in ffns)


def test_memory_lean_budget_is_by_device_unless_given():
    """The default budget is 64 MB on CPU (and devices without their own), 1 GB on CUDA; a given one holds for all."""
    model = PvtV2Model(PvtV2Config()).set_memory_lean()
    ffn = model.encoder.layers[0].blocks[0].mlp
    on = {d: SimpleNamespace(device=torch.device(d)) for d in ("cpu", "cuda", "meta")}
    assert [ffn.hidden_budget(on[d]) for d in ("cpu", "cuda", "meta")] == [64 << 20, 1 << 30, 64 << 20]
    model.set_memory_lean(True, max_hidden_bytes=4096)
    assert [ffn.hidden_budget(on[d]) for d in ("cpu", "cuda")] == [4096, 4096]
    model.set_memory_lean(True, max_hidden_bytes={"cuda": 8192})  # the devices it does not name keep the defaults
    assert [ffn.hidden_budget(on[d]) for d in ("cpu", "cuda", "meta")] == [64 << 20, 8192, 64 << 20]
    assert model.set_memory_lean(False).encoder.layers[0].blocks[0].mlp.hidden_budget(on["cuda"]) is None
