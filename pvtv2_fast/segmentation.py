"""Semantic-segmentation inference: whole image or sliding window, logits at the input's resolution.

* ``mode="whole"``: one forward of the full image; the 1/4-resolution logits are resized (bilinear) to H×W.
* ``mode="slide"``: mmsegmentation's slide inference. Tiles of ``tile``×``tile`` at steps of ``stride`` (the last
  tile in each direction is shifted back to end at the border), each tile's logits resized to the tile, summed
  into a full-size canvas and divided by how many tiles covered each pixel. Memory is bounded by the tile size,
  whatever the image size.

Images are normalised without resizing (``PvtV2ImageProcessor(do_resize=False)``): segmentation keeps the
input's geometry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .modeling import PvtV2ForSemanticSegmentation

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def tile_origins(size: int, tile: int, stride: int) -> List[int]:
    """Start offsets along one axis (mmsegmentation's grid: the last tile ends at the border)."""
    if tile >= size:
        return [0]
    count = (size - tile + stride - 1) // stride + 1
    return [min(i * stride, size - tile) for i in range(count)]


@torch.no_grad()
def segment(model: PvtV2ForSemanticSegmentation, pixel_values: torch.Tensor, mode: str = "whole",
            tile: int = 1024, stride: int = 768) -> torch.Tensor:
    """``pixel_values (B, 3, H, W)`` → logits ``(B, num_labels, H, W)`` (fp32)."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
    b, _, h, w = pixel_values.shape
    if mode == "whole":
        logits = model(pixel_values).logits
        return F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    if tile < 1 or not 1 <= stride <= tile:
        raise ValueError(f"sliding window needs tile >= 1 and 1 <= stride <= tile, got tile={tile}, stride={stride}")
    canvas = None
    count = torch.zeros(1, 1, h, w, device=pixel_values.device)
    for y0 in tile_origins(h, tile, stride):
        for x0 in tile_origins(w, tile, stride):
            crop = pixel_values[:, :, y0: y0 + tile, x0: x0 + tile]
            logits = model(crop).logits
            logits = F.interpolate(logits.float(), size=crop.shape[2:], mode="bilinear", align_corners=False)
            if canvas is None:
                canvas = torch.zeros(b, logits.shape[1], h, w, device=pixel_values.device)
            canvas[:, :, y0: y0 + crop.shape[2], x0: x0 + crop.shape[3]] += logits
            count[:, :, y0: y0 + crop.shape[2], x0: x0 + crop.shape[3]] += 1
    return canvas / count


def palette(num_labels: int) -> np.ndarray:
    """A fixed, well-spread colour per label: ``(num_labels, 3)`` uint8 (label 0 is black)."""
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 256, size=(max(num_labels, 1), 3), dtype=np.uint8)
    colours[0] = 0
    return colours


def save_masks(labels: np.ndarray, image: np.ndarray, out_dir: Path, stem: str, num_labels: int,
               alpha: float = 0.5) -> Tuple[Path, Path]:
    """``labels (H, W)`` → ``stem_labels.png`` (palette PNG, pixel value = label id) and ``stem_overlay.png``."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    colours = palette(num_labels)
    if num_labels > 256:
        raise ValueError(f"a palette PNG holds at most 256 labels, the model has {num_labels}")
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(colours)] = colours
    mask.putpalette(flat.reshape(-1).tolist())
    label_path = out_dir / f"{stem}_labels.png"
    mask.save(label_path)
    overlay = (1 - alpha) * image.astype(np.float32) + alpha * colours[labels].astype(np.float32)
    overlay_path = out_dir / f"{stem}_overlay.png"
    Image.fromarray(overlay.round().clip(0, 255).astype(np.uint8)).save(overlay_path)
    return label_path, overlay_path


def collect_images(inputs: Sequence[str | os.PathLike]) -> List[Path]:
    """Files as given; folders expanded to their image files (sorted)."""
    paths: List[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


def segment_files(model: PvtV2ForSemanticSegmentation, paths: Iterable[Path], out_dir: Path, mode: str = "whole",
                  tile: int = 1024, stride: int = 768, progress: bool = True) -> Tuple[List[Path], List[str]]:
    """Segment image files of any (mixed) sizes one by one; returns (written files, error messages)."""
    from tqdm import tqdm

    from .preprocessing import PvtV2ImageProcessor, load_image, to_rgb8

    processor = PvtV2ImageProcessor(do_resize=False)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    written, errors = [], []
    paths = list(paths)
    for path in tqdm(paths, desc="segment", unit="image", disable=not progress or len(paths) < 2):
        try:  # any image type, upright as viewers show it; a bad or too-small image is reported, not fatal
            image = load_image(path)
            pixel_values = processor(image)["pixel_values"].to(device, dtype)
            logits = segment(model, pixel_values, mode=mode, tile=tile, stride=stride)
        except (OSError, ValueError) as e:
            errors.append(f"{path}: {e}")
            continue
        labels = logits.argmax(1)[0].cpu().numpy()
        written += save_masks(labels, to_rgb8(image), Path(out_dir), Path(path).stem, model.config.num_labels)
    return written, errors
