"""PvtV2ImageProcessor against transformers' PvtImageProcessor (the hub checkpoints' bilinear settings)."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import PvtImageProcessor

from pvtv2_fast.preprocessing import (
    IMAGENET_DEFAULT_STD,
    ImageError,
    ImageRangeWarning,
    ImageTooLargeError,
    PvtV2ImageProcessor,
    load_image,
    to_rgb8,
)

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


@pytest.mark.parametrize(
    "bad,match", [(object(), "unsupported image type"), (np.zeros((2, 2, 2, 2, 2)), "H×W×C"), ([], "no images")]
)
def test_bad_images(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        PvtV2ImageProcessor()(bad)


# ---------------------------------------------------------------------------------------------- every image type
# Each type is compared with the 8-bit version of the same picture (the test_matches_transformers path above).
# Float and 16-bit inputs are resized unrounded where the 8-bit one is rounded: half a level apart at most there.
SMALL = PvtV2ImageProcessor(size=(40, 48))


def _rgb(h=30, w=44, seed=3):
    return _image(h, w, seed)


def _png16(path, array):
    """A 16-bit PNG of ``array`` (H×W×C uint16, C = 1..4), written by hand: Pillow writes 16-bit grey only."""
    import struct
    import zlib

    h, w, c = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _palette_image(rgb):
    """A palette (P) image and its exact RGB: indices into 256 colours drawn from the picture."""
    flat = rgb.reshape(-1, 3)
    colours = flat[np.random.default_rng(1).choice(len(flat), 256, replace=False)]
    index = (rgb[..., 0].astype(np.int64) + rgb[..., 1]) % 256
    image = Image.fromarray(index.astype(np.uint8), "P")
    image.putpalette(colours.reshape(-1).tolist())
    return image, colours[index]


def _write(kind, rgb, tmp_path):
    """(file written for ``kind``, the 8-bit picture it shows)."""
    gray = rgb[..., 0]
    alpha = np.random.default_rng(2).integers(0, 256, gray.shape, dtype=np.uint8)
    path = tmp_path / f"{kind}.png"
    if kind == "rgb8":
        Image.fromarray(rgb).save(path)
        return path, rgb
    if kind == "gray8":
        Image.fromarray(gray).save(path)
        return path, gray
    if kind == "gray16":  # Pillow: mode I;16
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
        return path, gray
    if kind in ("rgb16", "rgba16", "gray_alpha16"):  # Pillow reads 16-bit colour PNGs as 8-bit RGB(A)
        channels = {"rgb16": rgb, "rgba16": np.dstack([rgb, alpha]), "gray_alpha16": np.dstack([gray, alpha])}[kind]
        _png16(path, channels.astype(np.uint16) * 257)
        return path, rgb if kind != "gray_alpha16" else gray
    if kind == "float_tiff":  # mode F in [0, 1]
        path = tmp_path / "float.tif"
        Image.fromarray(gray.astype(np.float32) / 255).save(path)
        return path, gray
    if kind == "int32_tiff":  # mode I holding 16-bit values
        path = tmp_path / "int32.tif"
        Image.fromarray(gray.astype(np.int32) * 257, "I").save(path)
        return path, gray
    if kind == "palette":
        image, shown = _palette_image(rgb)
        image.save(path)
        return path, shown
    if kind == "gray_alpha":
        Image.fromarray(np.dstack([gray, alpha]), "LA").save(path)
        return path, gray
    if kind == "rgba":
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
        return path, rgb
    if kind == "cmyk":  # PIL's CMYK ↔ RGB is exact for K = 0, which is what it writes
        path = tmp_path / "cmyk.tif"
        Image.fromarray(rgb).convert("CMYK").save(path)
        return path, rgb
    if kind == "bilevel":
        Image.fromarray(gray > 127).convert("1").save(path)
        return path, np.where(gray > 127, 255, 0).astype(np.uint8)
    raise AssertionError(kind)


FILE_KINDS = [
    "rgb8",
    "gray8",
    "gray16",
    "rgb16",
    "rgba16",
    "gray_alpha16",
    "float_tiff",
    "int32_tiff",
    "palette",
    "gray_alpha",
    "rgba",
    "cmyk",
    "bilevel",
]


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_every_file_type_matches_its_8bit_picture(kind, tmp_path):
    path, shown = _write(kind, _rgb(), tmp_path)
    image = load_image(path)
    expected = SMALL(shown)["pixel_values"]
    diff = (SMALL(image)["pixel_values"] - expected).abs().max().item()
    assert diff <= ONE_LEVEL, (kind, image.mode, diff)
    assert np.abs(to_rgb8(image).astype(int) - to_rgb8(shown).astype(int)).max() <= 1
    # 16-bit: the 8-bit reading (/255, what clipped to white before) is ~100 levels away from the right one.
    assert SMALL(image)["pixel_values"].mean() < expected.mean() + ONE_LEVEL


def _as(array, lib, dtype, scale=1.0):
    """``array`` (H×W×3 uint8) times ``scale`` as a numpy array or a C×H×W tensor of ``dtype``."""
    values = array.astype(np.float64) * scale
    if lib == "numpy":
        return values.astype(dtype)
    return torch.from_numpy(values).permute(2, 0, 1).to(dtype)


# (library, dtype, scale applied to the 8-bit values): each is read by the rule in preprocessing's docstring.
DTYPE_CASES = [
    ("numpy", np.uint16, 257),
    ("numpy", ">u2", 257),
    ("numpy", np.int16, 1),
    ("numpy", np.int32, 1),
    ("numpy", np.int64, 1),
    ("numpy", np.uint32, 1),
    ("numpy", np.float16, 1 / 255),
    ("numpy", np.float32, 1 / 255),
    ("numpy", np.float64, 1 / 255),
    ("numpy", np.float32, 1),
    ("numpy", np.float64, 1),
    ("torch", torch.uint8, 1),
    ("torch", torch.uint16, 257),
    ("torch", torch.int32, 1),
    ("torch", torch.int64, 1),
    ("torch", torch.float16, 1 / 255),
    ("torch", torch.bfloat16, 1 / 255),
    ("torch", torch.float32, 1 / 255),
    ("torch", torch.float64, 1 / 255),
    ("torch", torch.float32, 1),
]


def _case_id(value):
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, (int, float)):
        return f"x{value:.3g}"
    return value if value in ("numpy", "torch") else np.dtype(value).str


@pytest.mark.parametrize("lib,dtype,scale", DTYPE_CASES, ids=_case_id)
def test_array_and_tensor_dtypes_are_scaled_by_their_range(lib, dtype, scale):
    rgb = _rgb()
    expected = SMALL(rgb)["pixel_values"]
    tolerance = 2 * ONE_LEVEL if dtype == torch.bfloat16 else ONE_LEVEL  # bfloat16 holds 8 significant bits
    assert (SMALL(_as(rgb, lib, dtype, scale))["pixel_values"] - expected).abs().max() <= tolerance


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_bool_images_are_black_and_white(lib):
    mask = _rgb()[..., 0] > 127
    bw = np.where(mask, 255, 0).astype(np.uint8)
    image = mask if lib == "numpy" else torch.from_numpy(mask)
    assert (SMALL(image)["pixel_values"] - SMALL(bw)["pixel_values"]).abs().max() <= ONE_LEVEL


@pytest.mark.parametrize("layout", ["hw", "hw1", "hw2", "hw4", "chw", "2hw"])
def test_channel_layouts(layout):
    rgb = _rgb()
    gray, alpha = rgb[..., 0], rgb[..., 1]
    image, shown = {
        "hw": (gray, gray),
        "hw1": (gray[..., None], gray),
        "hw2": (np.dstack([gray, alpha]), gray),
        "hw4": (np.dstack([rgb, alpha]), rgb),
        "chw": (np.moveaxis(rgb, -1, 0), rgb),
        "2hw": (np.stack([gray, alpha]), gray),
    }[layout]
    assert torch.equal(SMALL(image)["pixel_values"], SMALL(shown)["pixel_values"])
    if image.ndim == 3 and layout != "chw" and layout != "2hw":  # the same as a C×H×W tensor
        tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)))
        assert torch.equal(SMALL(tensor)["pixel_values"], SMALL(shown)["pixel_values"])


def test_rescale_factor_keeps_its_meaning_for_every_range():
    """A config's rescale_factor multiplies 8-bit values; 16-bit and [0, 1] inputs land where their 8-bit twin does."""
    rgb = _rgb()
    proc = PvtV2ImageProcessor(size=(40, 48), rescale_factor=1 / 127.5, do_normalize=False)
    expected = proc(rgb)["pixel_values"]
    for image in (rgb.astype(np.uint16) * 257, rgb.astype(np.float32) / 255):
        assert (proc(image)["pixel_values"] - expected).abs().max() <= 2 / 255 + 1e-6


def test_do_rescale_false_takes_values_as_they_are():
    x = torch.randn(3, 40, 48) * 300  # far outside any image range: refused with do_rescale, kept without
    out = PvtV2ImageProcessor(size=(40, 48), do_rescale=False, do_normalize=False)(x)["pixel_values"][0]
    assert torch.equal(out, x)


@pytest.mark.parametrize(
    "image,match",
    [
        (np.full((8, 8, 3), -0.5, np.float32), r"float32 array has values in \[-0.5, -0.5\], so its range is unknown"),
        (np.full((8, 8, 3), 300.0), r"float64 array has values in \[300, 300\]"),
        (np.array([[0.5, np.nan]] * 4, np.float32), "NaN or infinite"),
        (torch.full((3, 8, 8), float("inf")), "NaN or infinite"),
        (np.full((8, 8), 256, np.int32), r"int32 array has values in \[256, 256\].*convert 16-bit data to uint16"),
        (torch.full((3, 8, 8), -1, dtype=torch.int64), r"int64 tensor has values in \[-1, -1\]"),
        (Image.fromarray(np.full((8, 8), 1.5, np.float32)), r"PIL mode F image .* outside its known range \[0, 1\]"),
        (
            Image.fromarray(np.full((8, 8), -3, np.int32), "I"),
            r"PIL mode I image .* outside its known range \[0, 65535\]",
        ),
    ],
)
def test_images_of_unknown_range_are_refused(image, match):
    with pytest.raises(ImageError, match=match):
        PvtV2ImageProcessor()(image)


@pytest.mark.parametrize(
    "image,error,match",
    [
        (np.zeros((8, 8, 3), np.complex64), TypeError, "unsupported array dtype complex64"),
        (np.zeros((8, 8, 5), np.uint8), ValueError, "1 \\(grey\\), 2 \\(grey\\+alpha\\), 3 \\(RGB\\) or 4"),
        (torch.zeros(8, 8, 3), ValueError, r"H×W×C tensor\? use .permute\(2, 0, 1\)"),
    ],
)
def test_bad_layouts_and_dtypes(image, error, match):
    with pytest.raises(error, match=match):
        PvtV2ImageProcessor()(image)


def test_16bit_holding_8bit_values_warns():
    rgb = _rgb()
    with pytest.warns(ImageRangeWarning, match="every value is ≤ 255"):
        PvtV2ImageProcessor()(rgb.astype(np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real 16-bit data and 8-bit data: no warning
        PvtV2ImageProcessor()(rgb.astype(np.uint16) * 257)
        PvtV2ImageProcessor()(rgb)


# ---------------------------------------------------------------------------------------------- EXIF orientation
# Orientation tag → what viewers show, as a numpy rotation of the stored pixels (6: stored rotated 90° CCW, shown
# turned 90° clockwise; 8 the other way; 3: 180°).
ORIENTATIONS = {1: lambda a: a, 3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_applied_as_viewers_do(orientation, suffix, tmp_path):
    stored = np.zeros((30, 44, 3), np.uint8)
    stored[:10, :10] = 255  # a white top-left corner: where it lands tells the rotation
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}{suffix}"
    Image.fromarray(stored).save(path, exif=exif, **({"quality": 95} if suffix == ".jpg" else {}))
    shown = np.ascontiguousarray(ORIENTATIONS[orientation](stored))
    image = load_image(path)
    assert image.size == (shown.shape[1], shown.shape[0])
    assert np.abs(np.asarray(image, np.int16) - shown).max() <= (0 if suffix == ".png" else 40)
    # the processor turns a PIL image upright itself, and a loaded one is not turned twice
    with Image.open(path) as raw:
        assert torch.equal(
            PvtV2ImageProcessor(do_resize=False)(raw)["pixel_values"],
            PvtV2ImageProcessor(do_resize=False)(image)["pixel_values"],
        )


# ---------------------------------------------------------------------------------------------- load_image
def _header_only_png(path, width, height):
    """A PNG whose header claims width×height but holds no pixel data: a decompression bomb's first bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_load_image_errors(tmp_path, monkeypatch):
    Image.fromarray(_rgb()).save(tmp_path / "ok.png")
    with pytest.raises(ImageTooLargeError, match=r"44×30 = 1320 pixels, over the limit of 1000 pixels \(max_"):
        load_image(tmp_path / "ok.png", max_pixels=1000)
    assert load_image(tmp_path / "ok.png", max_pixels=44 * 30).size == (44, 30)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(tmp_path / "text.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot decode image"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    _header_only_png(tmp_path / "bomb.png", 30000, 30000)
    # PIL's own guard (process-wide, the caller's to set) is reported as ours is, not as PIL's exception ...
    with pytest.raises(ImageTooLargeError, match="PIL's decompression-bomb guard .*PIL.Image.MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "bomb.png", max_pixels=None)
    # ... and with it lifted (as the CLI does) max_pixels decides, from the header, before any decoding
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageTooLargeError, match="30000×30000 = 900.0 Mpx, over the limit of 268.4 Mpx"):
        load_image(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="max_pixels must be a positive"):
        load_image(tmp_path / "ok.png", max_pixels=0)
