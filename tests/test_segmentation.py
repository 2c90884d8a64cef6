"""Segformer checkpoints (transformers, hub v4 and v5 key names), the decode head, whole-image and sliding-window
inference, and the ``segment`` CLI."""

import functools
import re

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from pvtv2_fast import PvtV2Backbone, PvtV2Config, PvtV2ForSemanticSegmentation
from pvtv2_fast.__main__ import main
from pvtv2_fast.checkpoint import CheckpointMismatchError
from pvtv2_fast.segmentation import segment, tile_origins
from conftest import randomize_

ATOL = 1e-5
# MiT-b0 widths with a small decoder; odd, non-square inputs.
SEGFORMER = dict(num_labels=5, hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=64)

# transformers v5 → hub (v4) names, the inverse of transformers' conversion mapping for Segformer.
_TO_V4 = [
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"stages\.(\d+)\.layer_norm", r"encoder.layer_norm.\1"),
    (r"attention\.q_proj", "attention.self.query"), (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"attention\.o_proj", "attention.output.dense"), (r"mlp\.fc1", "mlp.dense1"), (r"mlp\.fc2", "mlp.dense2"),
    (r"layernorm_before", "layer_norm_1"), (r"layernorm_after", "layer_norm_2"),
    (r"decode_head\.linear_projections", "decode_head.linear_c"),
]


@torch.no_grad()
def _randomize_batchnorm(model):
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn(buf.shape, generator=torch.Generator().manual_seed(5)))
        elif name.endswith("running_var"):
            buf.copy_(0.5 + torch.rand(buf.shape, generator=torch.Generator().manual_seed(6)))
    return model


@functools.lru_cache(maxsize=None)
def hf_segformer():
    model = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(**SEGFORMER))
    return _randomize_batchnorm(randomize_(model, seed=11)).eval()


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (45, 77)])
def test_matches_transformers_segformer(tmp_path, size):
    theirs = hf_segformer()
    theirs.save_pretrained(tmp_path)
    ours = PvtV2ForSemanticSegmentation.from_pretrained(tmp_path)
    assert ours.config.layer_norm_eps == 1e-5 and ours.config.mlp_ratios == [4, 4, 4, 4]
    x = _x(2, 3, *size)
    with torch.no_grad():
        a, b = theirs(x, output_hidden_states=True), ours(x, output_hidden_states=True)
    assert a.logits.shape == b.logits.shape
    assert (a.logits - b.logits).abs().max() <= ATOL
    for u, v in zip(a.hidden_states, b.hidden_states):
        assert (u - v).abs().max() <= ATOL


def test_hub_v4_key_names_load(tmp_path):
    theirs = hf_segformer()
    sd = {}
    for k, v in theirs.state_dict().items():
        for pattern, repl in _TO_V4:
            k = re.sub(pattern, repl, k)
        sd[k] = v
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in sd
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ours = PvtV2ForSemanticSegmentation.from_pretrained(tmp_path / "pytorch_model.bin")  # config from the weights
    assert ours.config.decoder_hidden_size == 64 and ours.config.num_labels == 5
    x = _x(1, 3, 97, 131, seed=1)
    with torch.no_grad():
        assert (theirs(x).logits - ours(x).logits).abs().max() <= ATOL


def test_segformer_encoder_checkpoint_into_backbone(tmp_path):
    encoder = randomize_(transformers.SegformerModel(transformers.SegformerConfig(**SEGFORMER)), seed=12).eval()
    encoder.save_pretrained(tmp_path)
    backbone = PvtV2Backbone.from_pretrained(tmp_path, out_indices=[0, 1, 2, 3])
    x = _x(1, 3, 97, 131, seed=2)
    with torch.no_grad():
        ref = encoder(x, output_hidden_states=True).hidden_states
        for u, v in zip(backbone(x).feature_maps, ref):
            assert (u - v).abs().max() <= ATOL


def test_save_pretrained_round_trip(tmp_path):
    ours = PvtV2ForSemanticSegmentation.from_pretrained(_saved_hf(tmp_path / "hf"))
    ours.save_pretrained(tmp_path / "ours")
    again = PvtV2ForSemanticSegmentation.from_pretrained(tmp_path / "ours")
    x = _x(1, 3, 61, 45, seed=3)
    with torch.no_grad():
        assert torch.equal(ours(x).logits, again(x).logits)


def _saved_hf(path):
    hf_segformer().save_pretrained(path)
    return path


def test_fast_segmentation_matches_reference(tmp_path):
    ours = PvtV2ForSemanticSegmentation.from_pretrained(_saved_hf(tmp_path))
    x = _x(2, 3, 97, 131, seed=4)
    with torch.no_grad():
        ref = ours(x).logits
        fast = ours.set_fast(True, backend="cpu")(x).logits
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=1e-5)


def test_loss_ignores_the_ignore_index():
    model = PvtV2ForSemanticSegmentation(PvtV2Config(num_labels=4)).eval()
    x = _x(2, 3, 64, 64, seed=5)
    labels = torch.randint(0, 4, (2, 64, 64))
    labels[:, :8] = 255
    out = model(x, labels=labels)
    up = torch.nn.functional.interpolate(out.logits, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.isclose(out.loss, torch.nn.functional.cross_entropy(up, labels, ignore_index=255))


def test_classification_checkpoint_is_not_a_segmentation_model(tmp_path):
    from pvtv2_fast import PvtV2ForImageClassification

    PvtV2ForImageClassification(PvtV2Config(num_labels=3)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="decode_head"):
        PvtV2ForSemanticSegmentation.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------- inference modes
@pytest.mark.parametrize("size,tile,stride,expected", [(100, 64, 48, [0, 36]), (64, 64, 48, [0]), (50, 64, 48, [0]),
                                                       (200, 64, 64, [0, 64, 128, 136])])
def test_tile_origins(size, tile, stride, expected):
    assert tile_origins(size, tile, stride) == expected


@pytest.fixture(scope="module")
def seg_model():
    return _randomize_batchnorm(randomize_(PvtV2ForSemanticSegmentation(PvtV2Config(num_labels=6)), seed=13)).eval()


def test_slide_equals_whole_when_one_tile_covers_the_image(seg_model):
    x = _x(1, 3, 97, 131, seed=6)
    whole = segment(seg_model, x, mode="whole")
    slide = segment(seg_model, x, mode="slide", tile=256, stride=192)
    assert whole.shape == (1, 6, 97, 131)
    assert torch.equal(whole, slide)


def test_slide_averages_overlapping_tiles(seg_model):
    """Every pixel is the mean of the tiles covering it: rebuild the canvas by hand from whole-tile inference."""
    x = _x(1, 3, 96, 140, seed=7)
    out = segment(seg_model, x, mode="slide", tile=64, stride=48)
    canvas, count = torch.zeros_like(out), torch.zeros(1, 1, 96, 140)
    for y0 in tile_origins(96, 64, 48):
        for x0 in tile_origins(140, 64, 48):
            canvas[..., y0: y0 + 64, x0: x0 + 64] += segment(seg_model, x[..., y0: y0 + 64, x0: x0 + 64])
            count[..., y0: y0 + 64, x0: x0 + 64] += 1
    assert count.min() >= 1
    torch.testing.assert_close(out, canvas / count)


def test_segment_rejects_bad_arguments(seg_model):
    with pytest.raises(ValueError, match="mode"):
        segment(seg_model, _x(1, 3, 64, 64), mode="tiles")
    with pytest.raises(ValueError, match="stride"):
        segment(seg_model, _x(1, 3, 64, 64), mode="slide", tile=32, stride=48)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_writes_label_and_overlay_pngs(tmp_path, capsys):
    weights = _saved_hf(tmp_path / "weights")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)).save(images / "b.jpg")
    assert main(["segment", str(images), "--weights", str(weights), "--out", str(tmp_path / "out"),
                 "--tile", "64", "--stride", "48"]) == 0
    labels = Image.open(tmp_path / "out" / "a_labels.png")
    assert labels.mode == "P" and labels.size == (120, 90)
    assert np.array(labels).max() < 5
    assert Image.open(tmp_path / "out" / "b_overlay.png").size == (50, 70)
    model = PvtV2ForSemanticSegmentation.from_pretrained(weights)
    from pvtv2_fast.preprocessing import PvtV2ImageProcessor

    x = PvtV2ImageProcessor(do_resize=False)(np.array(Image.open(images / "a.png")))["pixel_values"]
    expected = segment(model, x, mode="slide", tile=64, stride=48).argmax(1)[0].numpy()
    assert np.array_equal(np.array(labels), expected)


def test_cli_errors(tmp_path, capsys):
    weights = _saved_hf(tmp_path / "weights")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["segment", str(bad), "--weights", str(weights), "--out", str(tmp_path / "o")]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert main(["segment", str(bad), "--weights", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
    from pvtv2_fast import PvtV2ForImageClassification

    PvtV2ForImageClassification(PvtV2Config(num_labels=3)).save_pretrained(tmp_path / "cls")
    assert main(["segment", str(bad), "--weights", str(tmp_path / "cls"), "--out", str(tmp_path / "o")]) == 2
    assert "not a semantic-segmentation checkpoint" in capsys.readouterr().err
