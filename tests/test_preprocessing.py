"""PvtV2ImageProcessor against transformers' PvtImageProcessor (the hub checkpoints' bilinear settings)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import PvtImageProcessor

from pvtv2_fast.preprocessing import IMAGENET_DEFAULT_STD, PvtV2ImageProcessor

# uint8 resizing rounds to whole grey levels, so an implementation may differ by one level at a pixel.
ONE_LEVEL = 1.0 / 255 / min(IMAGENET_DEFAULT_STD) + 1e-6


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(300, 417), (224, 224), (97, 131), (640, 480)])
def test_matches_transformers(size):
    array = _image(*size)
    theirs = PvtImageProcessor(resample=2)(Image.fromarray(array), return_tensors="pt")["pixel_values"]
    ours = PvtV2ImageProcessor()(Image.fromarray(array))["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    diff = (ours - theirs).abs()
    assert diff.max() <= ONE_LEVEL
    assert diff.mean() < 0.01


def test_input_kinds_agree():
    array = _image(120, 90, seed=1)
    proc = PvtV2ImageProcessor()
    ref = proc(Image.fromarray(array))["pixel_values"]
    assert torch.equal(proc(array)["pixel_values"], ref)
    assert torch.equal(proc(torch.from_numpy(array).permute(2, 0, 1))["pixel_values"], ref)
    batch = proc([Image.fromarray(array), array])["pixel_values"]
    assert batch.shape == (2, 3, 224, 224) and torch.equal(batch[1], ref[0])
    stacked = proc(torch.from_numpy(np.stack([array, array])).permute(0, 3, 1, 2))["pixel_values"]
    assert torch.equal(stacked, batch)


def test_grayscale_and_rgba():
    gray = _image(50, 60)[..., 0]
    out = PvtV2ImageProcessor()(gray)["pixel_values"]
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out[0, 0] * 0.229 + 0.485, out[0, 1] * 0.224 + 0.456)  # same grey in each channel
    rgba = Image.fromarray(np.concatenate([_image(50, 60), np.full((50, 60, 1), 255, np.uint8)], -1), "RGBA")
    assert PvtV2ImageProcessor()(rgba)["pixel_values"].shape == (1, 3, 224, 224)


def test_float_input_and_options():
    x = torch.rand(3, 224, 224)
    out = PvtV2ImageProcessor(do_rescale=False)(x)["pixel_values"][0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(out, (x - mean) / std)
    assert PvtV2ImageProcessor(size=96)(x)["pixel_values"].shape == (1, 3, 96, 96)


def test_round_trip_config(tmp_path):
    proc = PvtV2ImageProcessor(size={"height": 256, "width": 192}, resample=3)
    proc.save_pretrained(tmp_path)
    again = PvtV2ImageProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == proc.to_dict()
    theirs = PvtImageProcessor.from_pretrained(tmp_path)
    assert theirs.size["height"] == 256 and theirs.size["width"] == 192


@pytest.mark.parametrize("bad,match", [(object(), "unsupported image type"), (np.zeros((2, 2, 2, 2, 2)), "H×W×C"),
                                       ([], "no images")])
def test_bad_images(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        PvtV2ImageProcessor()(bad)
