"""Segformer checkpoints (transformers, hub v4 and v5 key names), the decode head, whole-image and sliding-window
inference, and the ``segment`` CLI."""

import functools
import re
import warnings

import numpy as np
import pytest
import torch
import transformers
from conftest import block_cache_delta, randomize_
from PIL import Image

from pvtv2_fast import PvtV2Backbone, PvtV2Config, PvtV2ForSemanticSegmentation
from pvtv2_fast.__main__ import main
from pvtv2_fast.checkpoint import CheckpointMismatchError
from pvtv2_fast.segmentation import segment, segment_reference, tile_origins

ATOL = 1e-5
# MiT-b0 widths with a small decoder; odd, non-square inputs.
SEGFORMER = dict(num_labels=5, hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=64)

# transformers v5 → hub (v4) names, the inverse of transformers' conversion mapping for Segformer.
_TO_V4 = [
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"stages\.(\d+)\.layer_norm", r"encoder.layer_norm.\1"),
    (r"attention\.q_proj", "attention.self.query"),
    (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"mlp\.fc1", "mlp.dense1"),
    (r"mlp\.fc2", "mlp.dense2"),
    (r"layernorm_before", "layer_norm_1"),
    (r"layernorm_after", "layer_norm_2"),
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
@pytest.mark.parametrize(
    "size,tile,stride,expected",
    [(100, 64, 48, [0, 36]), (64, 64, 48, [0]), (50, 64, 48, [0]), (200, 64, 64, [0, 64, 128, 136])],
)
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
            canvas[..., y0 : y0 + 64, x0 : x0 + 64] += segment(seg_model, x[..., y0 : y0 + 64, x0 : x0 + 64])
            count[..., y0 : y0 + 64, x0 : x0 + 64] += 1
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
    assert (
        main(
            [
                "segment",
                str(images),
                "--weights",
                str(weights),
                "--out",
                str(tmp_path / "out"),
                "--tile",
                "64",
                "--stride",
                "48",
            ]
        )
        == 0
    )
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


# ---------------------------------------------------------------------------------------------- streamed inference
# A b0-width encoder with one block per stage keeps the high-resolution exactness tests fast on 2 cores.
TINY = dict(num_labels=11, hidden_sizes=[32, 64, 160, 256], depths=[1, 1, 1, 1], decoder_hidden_size=64)
ODD = (389, 517)


@functools.lru_cache(maxsize=None)
def tiny_model(fast=False, num_labels=11):
    model = PvtV2ForSemanticSegmentation(PvtV2Config(**{**TINY, "num_labels": num_labels}))
    model = _randomize_batchnorm(randomize_(model, seed=21)).eval()
    return model.set_fast(fast, backend="cpu") if fast else model


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("size", [(97, 131), (45, 77), (64, 64)])
def test_folded_head_matches_unfolded(size, fast):
    model = tiny_model(fast)
    x = _x(2, 3, *size, seed=8)
    with torch.no_grad():
        maps = model.pvt_v2(x, output_hidden_states=True).hidden_states
        head = model.decode_head
        assert head.folds
        folded, unfolded = head(maps), head.forward_unfolded(maps)
    assert folded.shape == unfolded.shape == (2, 11, *maps[0].shape[2:])
    assert (folded - unfolded).abs().max() <= 1e-4
    assert unfolded.abs().max() > 0.1  # the comparison is not between near-zero maps


def test_folded_head_small_bands_and_gradients():
    """Band size changes nothing beyond rounding; gradients through the folded algebra are the reference's."""
    from pvtv2_fast.modules.decode_head import FoldedDecodeHead

    head = tiny_model().decode_head
    maps = [m.detach() for m in tiny_model().pvt_v2(_x(1, 3, 61, 93, seed=9), output_hidden_states=True).hidden_states]
    ref = head.forward_unfolded(maps)
    one_row = FoldedDecodeHead(head, maps, band_bytes=1)
    assert one_row.band == 1
    torch.testing.assert_close(one_row.logits(), ref, atol=1e-4, rtol=0)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    weights = [head.linear_fuse.weight, head.linear_projections[2].proj.weight, head.batch_norm.weight]
    expected = torch.autograd.grad((ref * grad).sum(), weights)
    got = torch.autograd.grad((head(maps) * grad).sum(), weights)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_training_mode_runs_the_reference_head():
    model = PvtV2ForSemanticSegmentation(PvtV2Config(**TINY)).train()
    maps = [torch.randn(2, c, 8 >> i, 12 >> i) for i, c in enumerate(TINY["hidden_sizes"])]
    assert not model.decode_head.folds
    torch.manual_seed(0)
    a = model.decode_head(maps)
    torch.manual_seed(0)
    assert torch.equal(a, model.decode_head.forward_unfolded(maps))
    with pytest.raises(ValueError, match="eval mode"):
        from pvtv2_fast.modules.decode_head import FoldedDecodeHead

        FoldedDecodeHead(model.decode_head, maps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(
    "src,dst",
    [
        ((97, 130), ODD),
        (ODD, (97, 130)),
        ((7, 9), (29, 37)),
        ((13, 11), (13, 40)),
        ((1, 3), (4, 1)),
        ((5, 5), (5, 5)),
        ((64, 64), (256, 256)),
        ((50, 70), (61, 39)),
    ],
)
def test_banded_bilinear_follows_f_interpolate(src, dst, dtype):
    """PyTorch's index/weight arithmetic (border clamping, fused multiply-add) by bands of any height."""
    from pvtv2_fast.streaming import LinearAxis, resample_band

    x = torch.randn(2, 5, *src, dtype=dtype, generator=torch.Generator().manual_seed(2))
    ref = torch.nn.functional.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    rows, cols = LinearAxis.build(src[0], dst[0], dtype=dtype), LinearAxis.build(src[1], dst[1], dtype=dtype)
    tokens = x.permute(0, 2, 3, 1)
    for band in (1, 7, dst[0]) if dst[0] < 100 else (13, 64, dst[0]):
        parts = []
        for a in range(0, dst[0], band):
            b = min(dst[0], a + band)
            lo, hi = rows.source_range(a, b)
            parts.append(resample_band(tokens[:, lo:hi], rows, cols, a, b, offset=lo))
        got = torch.cat(parts, 1).permute(0, 3, 1, 2)
        ulps = 4 * torch.finfo(dtype).eps * ref.abs().max()  # the same two products, summed in another order
        assert (got - ref).abs().max() <= ulps, band


def test_row_cache_computes_each_row_once_and_only_moves_forward():
    from pvtv2_fast.streaming import RowCache

    calls = []
    data = torch.arange(20.0).view(1, 20, 1)

    def produce(a, b):
        calls.append((a, b))
        return data[:, a:b].clone()

    cache = RowCache(produce, 20, chunk=6)
    for a, b in [(0, 2), (1, 4), (3, 9), (8, 9), (12, 14), (13, 20)]:
        assert torch.equal(cache.get(a, b), data[:, a:b])
    rows = [r for a, b in calls for r in range(a, b)]
    assert len(rows) == len(set(rows))
    with pytest.raises(IndexError, match="backwards"):
        cache.get(2, 5)
    with pytest.raises(IndexError, match="out of"):
        cache.get(19, 21)


def _assert_labels_match(labels, ref_logits):
    """≥ 99.99% of pixels equal the reference argmax; every other pixel is a near-tie (top-2 within 1e-4)."""
    expected = ref_logits.argmax(1)
    differ = labels.long() != expected
    assert differ.float().mean() <= 1e-4
    top2 = ref_logits.topk(2, dim=1).values
    assert ((top2[:, 0] - top2[:, 1])[differ] <= 1e-4).all()


# (input size, segment kwargs): both modes at an odd size; a dense grid (stride < tile/2: rows under 3-4 tile rows)
# on a smaller image to keep it fast.
CASES = {
    "whole": (ODD, dict(mode="whole")),
    "slide": (ODD, dict(mode="slide", tile=256, stride=160)),  # 2×3 tiles, overlaps of 96
    "slide-dense": ((161, 203), dict(mode="slide", tile=96, stride=40)),
}


@functools.lru_cache(maxsize=None)
def _reference(case, fast):
    size, kwargs = CASES[case]
    return segment_reference(tiny_model(fast), _x(1, 3, *size, seed=10), **kwargs)


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("case", list(CASES))
def test_streamed_labels_match_reference(case, fast):
    size, kwargs = CASES[case]
    kwargs = dict(kwargs, tile_batch=2) if kwargs["mode"] == "slide" else kwargs
    labels = segment(tiny_model(fast), _x(1, 3, *size, seed=10), output="labels", **kwargs)
    assert labels.shape == (1, *size) and labels.dtype == torch.uint8
    _assert_labels_match(labels, _reference(case, fast))


@pytest.mark.parametrize("kernels", ["triton", "torch"])
@pytest.mark.parametrize("case", ["whole", "slide-dense"])
def test_streamed_labels_through_the_other_backends(case, kernels):
    """The decode head's and labels' ops on the Triton kernels (interpreted here: a GPU's path; a smaller odd image,
    the interpreter is slow) and on the PyTorch reference (what a build without the extension falls back to, with a
    warning), reference encoder."""
    from pvtv2_fast import ops

    size, kwargs = CASES[case]
    size = (97, 131) if kernels == "triton" else size
    x = _x(1, 3, *size, seed=10)
    off = ["cpu"] if kernels == "triton" else ["cpu", "triton"]
    ops.reset_warnings()
    with ops.simulate(unavailable=off), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = segment(tiny_model(False), x, output="labels", **kwargs)
    fell_back = {str(w.message).split(":")[0] for w in caught if issubclass(w.category, ops.FallbackWarning)}
    fused = {"pvtv2_fast.ops.upsample_accumulate"} | ({"pvtv2_fast.ops.upsample_argmax"} if case == "whole" else set())
    assert fell_back == (fused if kernels == "torch" else set()), fell_back
    _assert_labels_match(labels, segment_reference(tiny_model(False), x, **kwargs))


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_logits_and_probs_match_reference(case):
    size, kwargs = CASES[case]
    model, x, ref = tiny_model(True), _x(1, 3, *size, seed=10), _reference(case, True)
    torch.testing.assert_close(segment(model, x, output="logits", band_bytes=1 << 20, **kwargs), ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(segment(model, x, output="probs", **kwargs), ref.softmax(1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tile_batch", [1, 2, 8])
def test_slide_tile_batch_and_bands_change_nothing(tile_batch):
    from pvtv2_fast.segmentation import iter_segment

    model, x = tiny_model(), _x(2, 3, 150, 97, seed=11)  # narrower than the tile: one column of tiles
    ref = segment_reference(model, x, mode="slide", tile=112, stride=64)
    bands = list(iter_segment(model, x, "slide", "logits", tile=112, stride=64, tile_batch=tile_batch, band_bytes=1))
    assert [r0 for r0, _ in bands] == list(range(150))  # one row per band at a 1-byte budget, in order
    torch.testing.assert_close(torch.cat([band for _, band in bands], dim=2), ref, atol=1e-4, rtol=0)


def test_labels_dtype_follows_the_label_count():
    from pvtv2_fast.segmentation import label_dtype

    assert [label_dtype(n) for n in (1, 256, 257, 32768, 40000)] == [
        torch.uint8,
        torch.uint8,
        torch.int16,
        torch.int16,
        torch.int32,
    ]
    model, x = tiny_model(num_labels=300), _x(1, 3, 64, 96, seed=12)
    labels = segment(model, x, output="labels")
    assert labels.dtype == torch.int16
    _assert_labels_match(labels, segment_reference(model, x))


def test_full_size_output_that_cannot_fit_is_refused(monkeypatch):
    from pvtv2_fast import segmentation

    monkeypatch.setattr(segmentation, "available_memory", lambda device: 1 << 16)
    x = _x(1, 3, 128, 128)
    with pytest.raises(MemoryError, match="output='labels'"):
        segment(tiny_model(), x, output="logits")
    assert segment(tiny_model(), x, output="labels").shape == (1, 128, 128)  # labels need no such check


def test_segment_serves_its_buffers_from_the_cpu_block_cache():
    """The whole segment() call runs in the CPU block cache's scope, not only its encoder: the returned logits
    (11 × 256² fp32, 2.9 MB) are pool pages, a warm call maps no fresh pages, and the memory check counts the
    pool's idle pages as available (they serve allocations first)."""
    from pvtv2_fast import _ext, cpu_cache_stats, segmentation

    if not _ext.available():
        pytest.skip("the C++ extension is not built")
    model, x = tiny_model(fast=True), _x(1, 3, 256, 256)
    segment(model, x)
    segment(model, x)
    out, delta = block_cache_delta(lambda: segment(model, x))
    assert delta["fresh"] == 0 and delta["reused"] > 0, delta
    assert delta["live_bytes"] >= out.numel() * out.element_size(), delta
    del out
    idle = cpu_cache_stats()["idle_bytes"]
    assert idle > 0 and segmentation.available_memory(x.device) >= idle


def test_segment_file_serves_each_image_from_the_cpu_block_cache(tmp_path):
    """segment_file (the CLI's path) runs each image in the CPU block cache's scope: a third image of the same size
    maps no fresh pages, and more of its blocks come from the pool than its encoder forward alone takes there (the
    preprocessed image, the decode head's bands)."""
    from pvtv2_fast import _ext
    from pvtv2_fast.segmentation import segment_file

    if not _ext.available():
        pytest.skip("the C++ extension is not built")
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    model = tiny_model(fast=True)
    segment_file(model, tmp_path / "a.png", tmp_path / "out", output="logits", progress=False)
    segment_file(model, tmp_path / "b.png", tmp_path / "out", output="logits", progress=False)
    _, delta = block_cache_delta(
        lambda: segment_file(model, tmp_path / "c.png", tmp_path / "out", output="logits", progress=False)
    )
    assert delta["fresh"] == 0, delta
    with torch.no_grad():
        _, encoder = block_cache_delta(lambda: model.pvt_v2(_x(1, 3, 256, 256), output_hidden_states=True))
    assert delta["reused"] > encoder["reused"] > 0, (delta, encoder)


def test_segment_rejects_bad_output_and_tile_batch():
    with pytest.raises(ValueError, match="output"):
        segment(tiny_model(), _x(1, 3, 64, 64), output="mask")
    with pytest.raises(ValueError, match="tile_batch"):
        segment(tiny_model(), _x(1, 3, 64, 64), mode="slide", tile=32, stride=32, tile_batch=0)


def test_cli_writes_streamed_probs_and_skips_finished_images(tmp_path):
    from pvtv2_fast.segmentation import segment_files

    weights = _saved_hf(tmp_path / "weights")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert (
        main(
            [
                "segment",
                str(tmp_path / "a.png"),
                "--weights",
                str(weights),
                "--out",
                str(tmp_path / "out"),
                "--tile",
                "64",
                "--stride",
                "40",
                "--tile-batch",
                "2",
                "--output",
                "probs",
                "--no-progress",
            ]
        )
        == 0
    )
    probs = np.load(tmp_path / "out" / "a_probs.npy")
    model = PvtV2ForSemanticSegmentation.from_pretrained(weights)
    from pvtv2_fast.preprocessing import PvtV2ImageProcessor

    x = PvtV2ImageProcessor(do_resize=False)(np.array(Image.open(tmp_path / "a.png")))["pixel_values"]
    ref = segment_reference(model, x, mode="slide", tile=64, stride=40).softmax(1)[0].numpy()
    assert probs.shape == ref.shape and np.abs(probs - ref).max() <= 1e-5
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary left behind
    written, errors = segment_files(
        model, [tmp_path / "a.png"], tmp_path / "out", output="probs", skip_existing=True, progress=False
    )
    assert written == [] and errors == []


# ---------------------------------------------------------------------------------------------- distributed
def _torchrun(*args, cwd):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(cwd) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            "-m",
            "pvtv2_fast.distributed",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_torchrun_two_workers_equal_one_process_and_rerun_skips(tmp_path):
    """Each image written once by one of 2 gloo workers, outputs equal to the single-process run; a bad image is
    reported without stopping the rest; a rerun segments nothing."""
    from pathlib import Path

    from pvtv2_fast.segmentation import collect_images, segment_files

    weights = _saved_hf(tmp_path / "weights")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(70, 90), (45, 61), (96, 64), (33, 120), (81, 81)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    (images / "broken.png").write_text("not an image")
    model = PvtV2ForSemanticSegmentation.from_pretrained(weights)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: identical arithmetic
    try:
        _, errors = segment_files(
            model, collect_images([images]), tmp_path / "single", mode="slide", tile=64, stride=48, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    assert len(errors) == 1
    root = Path(__file__).resolve().parent.parent
    args = (
        images,
        "--weights",
        weights,
        "--out",
        tmp_path / "multi",
        "--tile",
        "64",
        "--stride",
        "48",
        "--threads",
        "1",
    )
    first = _torchrun(*args, cwd=root)
    assert first.returncode == 1, first.stderr[-3000:]  # the broken image fails; the others are written
    assert "broken.png" in first.stderr and "cannot read image" in first.stderr
    assert re.search(r"rank 0: 3 images, 2 segmented .* 1 failed", first.stdout), first.stdout
    assert re.search(r"rank 1: 3 images, 3 segmented .* 0 failed", first.stdout), first.stdout
    single = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == single and len(single) == 10
    for name in single:
        assert np.array_equal(
            np.array(Image.open(tmp_path / "single" / name)), np.array(Image.open(tmp_path / "multi" / name))
        ), name
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "multi").iterdir()}
    again = _torchrun(*args, cwd=root)
    assert re.search(r"rank 1: 3 images, 0 segmented .* 3 skipped", again.stdout), again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "multi").iterdir()} == stamps


def test_segmentation_benchmark_report_round_trips(tmp_path):
    """bench.segmentation's points parser and report (Markdown, plot, JSON kept for --add)."""
    from bench.segmentation import load, parse_points, report

    assert parse_points(["b0:512,2048", "b2:4096"]) == [("b0", 512), ("b0", 2048), ("b2", 4096)]
    with pytest.raises(SystemExit, match="PRESET"):
        parse_points(["b9:512"])
    results = {
        ("b0", 512, "labels"): dict(peak=2**29, seconds=1.0),
        ("b0", 512, "transformers"): dict(peak=2**30, seconds=3.0),
    }
    text = report(results, tmp_path / "seg")
    assert "| b0 | 512² | labels | 0.5 | 1 | 3 |" in text
    assert load(tmp_path / "seg") == results and (tmp_path / "seg.png").stat().st_size > 0
