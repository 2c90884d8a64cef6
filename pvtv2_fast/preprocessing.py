"""Image preprocessing matching the hub checkpoints' ``PvtImageProcessor``: resize, rescale, normalise — for
every image type, each scaled by its real value range.

Accepts PIL images, numpy arrays (H×W×C, H×W, or channels-first C×H×W) and tensors (C×H×W, H×W, or a batch
B×C×H×W), single or as a list. Channels: 1 = grey, 2 = grey + alpha, 3 = RGB, 4 = RGBA; alpha is ignored (the
colour channels are used as stored, as ``PIL.Image.convert("RGB")`` does).

**Value ranges** (``do_rescale=True``): every image is mapped to [0, 1] by the value of its full white, then
multiplied by ``255 * rescale_factor`` (so the hub configs' ``rescale_factor=1/255`` gives [0, 1], and another
factor keeps transformers' meaning of "multiplier for 8-bit values"), then normalised:

* **uint8**, and PIL's 8-bit modes (1, L, P, RGB, RGBA, LA, PA, CMYK, YCbCr, LAB, HSV, …): white = 255. Resized as
  uint8 (rounded), as transformers does.
* **uint16** arrays / tensors and PIL ``I;16*`` images (16-bit PNG, TIFF): white = 65535. Warns
  (:class:`ImageRangeWarning`) when every value is ≤ 255: 8-bit data in a uint16 container comes out nearly black
  (convert it to uint8).
* PIL ``I`` (32-bit integer mode, what Pillow gives some 16-bit files): white = 65535; values outside 0..65535 are
  refused.
* PIL ``F`` (float TIFF): white = 1.0; values outside [0, 1] are refused: a float file has no other known range.
* **bool**: True is white.
* **other integer dtypes** (int8 … int64, uint32, uint64, e.g. ``np.random.randint``'s int64): read as 8-bit
  (white = 255); values outside 0..255 are refused (convert 16-bit data to uint16).
* **float16 / bfloat16 / float32 / float64**: white = 1.0 if every value lies in [0, 1], else 255 if every value
  lies in [0, 255] (transformers' convention for float arrays, e.g. ``np.asarray(img, np.float32)``); anything else
  (negative, > 255, NaN, inf) is refused. So a 0..255 float image whose every value is ≤ 1 reads as [0, 1].

With ``do_rescale=False`` values are taken as they are (no range check): the caller has scaled them.

**Orientation**: PIL images are used as viewers show them — the EXIF orientation tag is applied
(``PIL.ImageOps.exif_transpose``). :func:`load_image` reads files that way and refuses images over a pixel limit.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
# PIL resample codes as stored in preprocessor_config.json.
_RESAMPLE = {
    0: "nearest",
    2: "bilinear",
    3: "bicubic",
    "nearest": "nearest",
    "bilinear": "bilinear",
    "bicubic": "bicubic",
}
# load_image's default limit: 16384² = 268 Mpx, 1.5× the size above which PIL refuses to open an image (2 ×
# PIL.Image.MAX_IMAGE_PIXELS = 179 Mpx). A 268 Mpx RGB image is 0.8 GB decoded and 3.2 GB as float32 pixel values.
DEFAULT_MAX_PIXELS = 16384 * 16384
_EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """An image that cannot be used: unreadable or truncated file, unsupported mode, or values of unknown range."""


class ImageTooLargeError(ImageError):
    """An image file with more pixels than the caller's limit (``max_pixels``) or PIL's decompression-bomb limit."""


class ImageRangeWarning(UserWarning):
    """The image's scaling follows the documented rule but may not be what was meant (e.g. 8-bit data in uint16)."""


@dataclass(frozen=True)
class _Range:
    """How one image's values map to [0, 1]. ``white``: the value of full intensity, or None when the values decide
    (``rule`` "int": 0..255; "float": [0, 1] or [0, 255]). ``checked``: values outside [0, white] are refused.
    ``source`` names the input in messages."""

    white: Optional[float]
    rule: str
    source: str
    checked: bool = False


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx" if pixels >= 100_000 else f"{pixels} pixels"


def load_image(path: str | os.PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> PILImage:
    """Reads an image file, decoded and turned upright as viewers show it (EXIF orientation applied).

    Returns a ``PIL.Image.Image`` in the file's own mode (16-bit and float modes kept: the processor scales them).
    Raises ``FileNotFoundError`` for a missing file, :class:`ImageTooLargeError` when width × height exceeds
    ``max_pixels`` (``None``: no limit of ours) or PIL's own ``Image.MAX_IMAGE_PIXELS`` guard (which the caller owns:
    the CLI lifts it and relies on ``--max-pixels``), and :class:`ImageError` for a file PIL cannot read or decode.
    """
    from PIL import Image, UnidentifiedImageError

    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels or None, got {max_pixels}")
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as e:  # PIL's own guard, raised while reading the header
        raise ImageTooLargeError(
            f"image is too large for PIL's decompression-bomb guard ({e}); raise "
            f"PIL.Image.MAX_IMAGE_PIXELS, or set it to None and limit with max_pixels"
        ) from None
    except UnidentifiedImageError as e:
        raise ImageError(f"cannot read image: not an image file PIL recognises ({e})") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, SyntaxError, ValueError) as e:  # SyntaxError: some PIL plugins' "not a valid file"
        raise ImageError(f"cannot read image ({e})") from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"image is {width}×{height} = {_megapixels(width * height)}, over the limit of "
            f"{_megapixels(max_pixels)} (max_pixels={max_pixels}; the CLI's --max-pixels)"
        )
    try:
        image.load()
    except Image.DecompressionBombError as e:  # some formats check frame/tile sizes while decoding
        image.close()
        raise ImageTooLargeError(
            f"image is too large for PIL's decompression-bomb guard ({e}); raise "
            f"PIL.Image.MAX_IMAGE_PIXELS, or set it to None and limit with max_pixels"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data
        image.close()
        raise ImageError(f"cannot decode image ({e})") from None
    return _upright(image)


def _upright(image: PILImage) -> PILImage:
    """The image as viewers show it: EXIF orientation applied (the tag is then dropped so it is not applied twice)."""
    from PIL import ImageOps

    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a corrupt EXIF block must not make the pixels unreadable: show them as stored
        return image
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _pil_to_array(image: PILImage) -> Tuple[np.ndarray, _Range]:
    """A PIL image (any mode) → (H×W or H×W×3 array, its range), upright as viewers show it."""
    image = _upright(image)
    mode = image.mode
    if mode.startswith("I;16"):  # 16-bit grey, any byte order; astype gives native uint16 for torch
        return np.asarray(image).astype(np.uint16), _Range(65535.0, "fixed", f"16-bit image (PIL mode {mode})")
    if mode == "I":  # Pillow's 32-bit integer mode: what some 16-bit files open as
        return np.asarray(image), _Range(65535.0, "fixed", "PIL mode I image (32-bit integers)", checked=True)
    if mode == "F":
        return np.asarray(image, np.float32), _Range(1.0, "fixed", "PIL mode F image (32-bit float)", checked=True)
    if mode != "RGB":  # 8-bit modes: 1, L, P, LA, PA, RGBA, CMYK, YCbCr, LAB, HSV, ...
        try:
            image = image.convert("RGB")
        except ValueError:
            try:  # premultiplied modes (La, RGBa) convert through RGBA only
                image = image.convert("RGBA").convert("RGB")
            except ValueError:
                raise ImageError(f"unsupported PIL image mode {mode!r}: it has no conversion to RGB") from None
    return np.array(image), _Range(255.0, "fixed", f"8-bit image (PIL mode {mode})")


def _dtype_range(dtype: Any, kind: str) -> _Range:
    """The range rule of a numpy or torch dtype (see the module docstring's table)."""
    name = dtype.name if isinstance(dtype, np.dtype) else str(dtype).replace("torch.", "")  # .name: any byte order
    source = f"{name} {kind}"
    if name == "uint8":
        return _Range(255.0, "fixed", source)
    if name == "uint16":
        return _Range(65535.0, "fixed", source)
    if name == "bool":
        return _Range(1.0, "fixed", source)
    if name.startswith(("int", "uint")):
        return _Range(None, "int", source)
    if name.startswith(("float", "bfloat")):
        return _Range(None, "float", source)
    raise TypeError(f"unsupported {kind} dtype {name}: use uint8, uint16, another integer type, bool or float")


def _channels_to_rgb(x: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """(C, H, W) with C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA → (3, H, W); alpha dropped."""
    c = x.shape[0]
    if c in (1, 2):
        return x[:1].expand(3, -1, -1)
    if c in (3, 4):
        return x[:3]
    raise ValueError(f"images need 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels, got shape {shape}")


def _to_tensor(image: Any) -> Tuple[torch.Tensor, _Range]:
    """One image → ((3, H, W) tensor, its range): uint8 kept as uint8 (resized as such), anything else float32."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    value_range: Optional[_Range] = None
    if Image is not None and isinstance(image, Image.Image):
        image, value_range = _pil_to_array(image)
    if isinstance(image, np.ndarray):
        shape = image.shape
        value_range = value_range or _dtype_range(image.dtype, "array")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise ValueError(f"numpy images must be H×W×C or H×W, got shape {shape}")
        if image.shape[-1] not in (1, 2, 3, 4) and image.shape[0] in (1, 2, 3, 4):
            image = np.moveaxis(image, 0, -1)  # channels-first array
        # uint8 stays uint8; everything else becomes float32 (native byte order, which torch needs).
        image = np.ascontiguousarray(image, dtype=np.uint8 if image.dtype == np.uint8 else np.float32)
        if not image.flags.writeable:  # e.g. np.asarray(pil_image): torch wants writable memory
            image = image.copy()
        return _channels_to_rgb(torch.from_numpy(image).permute(2, 0, 1), shape), value_range
    if isinstance(image, torch.Tensor):
        shape = tuple(image.shape)
        value_range = _dtype_range(image.dtype, "tensor")
        if image.ndim == 2:
            image = image.unsqueeze(0)
        if image.ndim != 3:
            raise ValueError(f"tensor images must be C×H×W (or a B×C×H×W batch), got shape {shape}")
        if image.shape[0] not in (1, 2, 3, 4):
            raise ValueError(
                f"tensor images must be C×H×W with 1–4 channels, got shape {shape}"
                + (" (an H×W×C tensor? use .permute(2, 0, 1))" if shape[-1] in (1, 2, 3, 4) else "")
            )
        if image.dtype != torch.uint8:
            image = image.float()
        return _channels_to_rgb(image, shape), value_range
    raise TypeError(f"unsupported image type {type(image).__name__}; pass PIL images, numpy arrays or tensors")


def _white_level(x: torch.Tensor, value_range: _Range) -> float:
    """The value of full white in ``x`` (C, H, W) under ``value_range``'s rule; raises ImageError where the rule
    refuses the values, warns (ImageRangeWarning) where the result may surprise."""
    if value_range.rule == "fixed" and not value_range.checked and value_range.white != 65535.0:
        return value_range.white  # uint8 and bool: every value is in range
    if x.numel() == 0:
        return value_range.white or 255.0  # nothing to scale; the shape check downstream reports the empty image
    lo, hi = (float(v) for v in torch.aminmax(x.float()))
    source = value_range.source
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageError(f"{source} has NaN or infinite values")
    if value_range.white is not None:
        white = value_range.white
        if value_range.checked and (lo < 0 or hi > white):
            raise ImageError(
                f"{source} has values in [{lo:.6g}, {hi:.6g}], outside its known range "
                f"[0, {white:g}]: scale it to that range or convert it to an 8-bit image"
            )
        if white == 65535.0 and 0 < hi <= 255:
            warnings.warn(
                f"{source}: every value is ≤ 255, scaled as 16-bit (white = 65535), so it is nearly "
                f"black; if it holds 8-bit data, convert it to uint8 first",
                ImageRangeWarning,
                stacklevel=3,
            )
        return white
    if value_range.rule == "int":
        if lo < 0 or hi > 255:
            raise ImageError(
                f"{source} has values in [{lo:.6g}, {hi:.6g}]: integer images other than uint8 / "
                f"uint16 are read as 8-bit (0..255); convert 16-bit data to uint16, or scale to float "
                f"in [0, 1]"
            )
        return 255.0
    if lo >= 0 and hi <= 1:
        return 1.0
    if lo >= 0 and hi <= 255:
        return 255.0
    raise ImageError(
        f"{source} has values in [{lo:.6g}, {hi:.6g}], so its range is unknown: float images are "
        f"read as [0, 1] or 0..255; for pixel values already rescaled and normalised pass "
        f"do_rescale=False, do_normalize=False"
    )


def to_rgb8(image: Any) -> np.ndarray:
    """Any supported image → ``(H, W, 3)`` uint8 RGB scaled by its range: what a viewer shows (for overlays).
    Raises ImageError where the processor would (unknown range)."""
    x, value_range = _to_tensor(image)
    if x.dtype != torch.uint8:
        x = (x * (255.0 / _white_level(x, value_range))).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.permute(1, 2, 0).cpu().numpy())


class PvtV2ImageProcessor:
    """``processor(images) -> {"pixel_values": (B, 3, H, W) float32}``; value ranges as in the module docstring."""

    def __init__(
        self,
        do_resize: bool = True,
        size: Optional[Dict[str, int] | int | Sequence[int]] = None,
        resample: int | str = 2,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        **_: Any,
    ) -> None:
        if size is None:
            size = {"height": 224, "width": 224}
        elif isinstance(size, int):
            size = {"height": size, "width": size}
        elif not isinstance(size, dict):
            size = {"height": int(size[0]), "width": int(size[1])}
        if resample not in _RESAMPLE:
            raise ValueError(f"resample: unsupported value {resample!r}; use bilinear (2), bicubic (3) or nearest (0)")
        self.do_resize, self.size, self.resample = do_resize, dict(size), _RESAMPLE[resample]
        self.do_rescale, self.rescale_factor = do_rescale, rescale_factor
        self.do_normalize, self.image_mean, self.image_std = do_normalize, list(image_mean), list(image_std)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **overrides: Any) -> "PvtV2ImageProcessor":
        """Reads ``preprocessor_config.json`` from a folder or hub id; defaults when the folder has none."""
        from .hub import resolve_folder

        folder = resolve_folder(path_or_id, patterns=("preprocessor_config.json",))
        cfg_file = Path(folder) / "preprocessor_config.json" if Path(folder).is_dir() else None
        data = json.loads(cfg_file.read_text()) if cfg_file is not None and cfg_file.is_file() else {}
        return cls(**{**data, **overrides})

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        h, w = self.size["height"], self.size["width"]
        if tuple(image.shape[-2:]) == (h, w):
            return image
        is_uint8 = image.dtype == torch.uint8
        x = image.unsqueeze(0).float()
        mode = self.resample
        kwargs = {} if mode == "nearest" else dict(align_corners=False, antialias=True)
        x = F.interpolate(x, size=(h, w), mode=mode, **kwargs)[0]
        if is_uint8:
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        return x

    def preprocess(self, images: Any) -> Dict[str, torch.Tensor]:
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images.unbind(0))
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("no images given")
        out: List[torch.Tensor] = []
        for image in images:
            x, value_range = _to_tensor(image)
            # The range is read off the original values: resampling (bicubic's overshoot) must not change it.
            white = _white_level(x, value_range) if self.do_rescale else None
            if self.do_resize:
                x = self._resize(x)
            x = x.float()
            if white is not None:
                # 255 * rescale_factor maps full white to where transformers maps an 8-bit 255 (1.0 on the hub).
                x = x * (self.rescale_factor if white == 255.0 else self.rescale_factor * (255.0 / white))
            if self.do_normalize:
                mean = torch.tensor(self.image_mean, device=x.device).view(-1, 1, 1)
                std = torch.tensor(self.image_std, device=x.device).view(-1, 1, 1)
                x = (x - mean) / std
            out.append(x)
        shapes = {tuple(x.shape) for x in out}
        if len(shapes) > 1:
            raise ValueError(f"images have different sizes after preprocessing ({shapes}); enable do_resize")
        return {"pixel_values": torch.stack(out)}

    __call__ = preprocess

    def to_dict(self) -> Dict[str, Any]:
        inverse = {"nearest": 0, "bilinear": 2, "bicubic": 3}
        return dict(
            image_processor_type="PvtImageProcessor",
            do_resize=self.do_resize,
            size=self.size,
            resample=inverse[self.resample],
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            image_mean=self.image_mean,
            image_std=self.image_std,
        )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        Path(directory, "preprocessor_config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
