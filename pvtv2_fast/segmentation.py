"""Semantic-segmentation inference at the input's resolution, streamed by bands of output rows.

* ``mode="whole"``: one forward of the full image; the 1/4-resolution logits are resized (bilinear) to H×W.
* ``mode="slide"``: mmsegmentation's slide inference. Tiles of ``tile``×``tile`` at steps of ``stride`` (the last
  tile in each direction is shifted back to end at the border), each tile's logits resized to the tile, summed
  into a full-size canvas and divided by how many tiles covered each pixel.

``output="labels"`` (argmax, ``(B, H, W)``, uint8 up to 256 labels), ``"logits"`` or ``"probs"``
(``(B, num_labels, H, W)`` fp32). Nothing of size ``num_labels × H × W`` is built for labels: the decode head is
folded (:class:`~pvtv2_fast.modules.decode_head.FoldedDecodeHead`, rows of its 1/4-resolution logits computed on
demand) and the final bilinear upsample + argmax runs over bands of output rows as one fused op
(:func:`pvtv2_fast.ops.upsample_argmax`, with PyTorch's exact index/weight arithmetic from
:mod:`pvtv2_fast.streaming`). The sliding window keeps each row of tiles'
1/4-resolution logits only while unfinished output rows still need them, and emits finished rows as bands.
:func:`iter_segment` yields the bands (for outputs too large to hold); :func:`segment` assembles them.
:func:`segment_reference` is the unstreamed computation (unfolded head, full-size logits and canvas), kept as the
reference the tests compare with.

Images are normalised without resizing (``PvtV2ImageProcessor(do_resize=False)``): segmentation keeps the
input's geometry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import ops
from .modeling import PvtV2ForSemanticSegmentation
from .modules.decode_head import FoldedDecodeHead
from .ops.block_cache import cpu_block_cache_on, cpu_cache_stats
from .preprocessing import DEFAULT_MAX_PIXELS
from .streaming import LinearAxis, RowCache, band_rows, resample_band

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MODES = ("whole", "slide")
OUTPUTS = ("labels", "logits", "probs")
# Bytes of full-resolution temporaries one output band may use (the band's rows are sized from it).
BAND_BYTES = 64 << 20


def tile_origins(size: int, tile: int, stride: int) -> List[int]:
    """Start offsets along one axis (mmsegmentation's grid: the last tile ends at the border)."""
    if tile >= size:
        return [0]
    count = (size - tile + stride - 1) // stride + 1
    return [min(i * stride, size - tile) for i in range(count)]


def label_dtype(num_labels: int) -> torch.dtype:
    """The narrowest integer dtype that holds label ids ``0 … num_labels − 1``."""
    if num_labels <= 256:
        return torch.uint8
    return torch.int16 if num_labels <= 2**15 else torch.int32


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes that can still be allocated on ``device`` (CPU: the kernel's MemAvailable plus the idle pages of the
    CPU block cache, which serve allocations first), None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024 + cpu_cache_stats()["idle_bytes"]
        except OSError:
            return None
    return None


def _check_args(
    model, pixel_values: torch.Tensor, mode: str, output: str, tile: int, stride: int, tile_batch: int
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
    if mode == "slide" and (tile < 1 or not 1 <= stride <= tile):
        raise ValueError(f"sliding window needs tile >= 1 and 1 <= stride <= tile, got tile={tile}, stride={stride}")
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")


def _finish(band: torch.Tensor, output: str) -> torch.Tensor:
    """Full-resolution logits band ``(B, rows, W, L)`` fp32 → the requested output's band."""
    if output == "labels":
        # max(-1).indices: ~2× argmax's speed on CPU (same index but where two logits are exactly equal).
        return band.max(-1).indices.to(label_dtype(band.shape[-1]))
    if output == "probs":
        band = band.softmax(-1)
    return band.permute(0, 3, 1, 2)


def _progress(total: int, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="segment", unit=unit, disable=not enabled, leave=False)


@torch.no_grad()
def iter_segment(
    model: PvtV2ForSemanticSegmentation,
    pixel_values: torch.Tensor,
    mode: str = "whole",
    output: str = "labels",
    tile: int = 1024,
    stride: int = 768,
    tile_batch: int = 1,
    band_bytes: int = BAND_BYTES,
    progress: bool = False,
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Stream :func:`segment`'s result as ``(first_row, band)`` pairs, top to bottom, bands of consecutive rows.

    ``band``: labels ``(B, rows, W)`` (:func:`label_dtype`), or logits / probs ``(B, num_labels, rows, W)`` fp32
    (a view: copy it to keep it). ``tile_batch``: tiles of one row of tiles per forward (slide mode).
    """
    _check_args(model, pixel_values, mode, output, tile, stride, tile_batch)
    if mode == "whole":
        yield from _stream_whole(model, pixel_values, output, band_bytes, progress)
    else:
        yield from _stream_slide(model, pixel_values, output, tile, stride, tile_batch, band_bytes, progress)


def _quarter_source(model: PvtV2ForSemanticSegmentation, pixel_values: torch.Tensor):
    """``(produce(a, b) → fp32 logits rows (B, b − a, W/4, L), rows, cols, chunk)`` of one forward at 1/4
    resolution: the folded head computes only the requested rows; otherwise (training mode, ``fold`` off) the
    reference head's logits are computed whole and read by rows."""
    head = model.decode_head
    if head.folds:
        maps = model.pvt_v2(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        folded = FoldedDecodeHead(head, maps)
        return (lambda a, b: folded.rows(a, b).float()), folded.height, folded.width, folded.band
    logits = model(pixel_values).logits.float()
    return (lambda a, b: logits[:, :, a:b].permute(0, 2, 3, 1)), logits.shape[2], logits.shape[3], logits.shape[2]


def _stream_whole(model, pixel_values, output, band_bytes, progress):
    b, _, h, w = pixel_values.shape
    device = pixel_values.device
    produce, h4, w4, chunk = _quarter_source(model, pixel_values)
    quarter = RowCache(produce, h4, chunk)
    rows_axis, cols_axis = LinearAxis.build(h4, h, device), LinearAxis.build(w4, w, device)
    num_labels = model.decode_head.classifier.out_channels
    if output == "labels":
        # Fused resample + argmax: a band holds only its 1/4-resolution source rows and its labels, so bands can be
        # tall (fewer calls); full-resolution logits never exist.
        col_taps = cols_axis.taps()
        band = band_rows(b * w * (1 + num_labels), band_bytes)
    else:
        band = band_rows(3 * b * w * num_labels * 4, band_bytes)
    with _progress(h, "row", progress) as bar:
        for r0 in range(0, h, band):
            r1 = min(h, r0 + band)
            lo, hi = rows_axis.source_range(r0, r1)
            source = quarter.get(lo, hi)
            if output == "labels":
                labels = ops.upsample_argmax(source, *rows_axis.taps(r0, r1, lo), *col_taps, label_dtype(num_labels))
                yield r0, labels
            else:
                yield r0, _finish(resample_band(source, rows_axis, cols_axis, r0, r1, offset=lo), output)
            bar.update(r1 - r0)


def _stream_slide(model, pixel_values, output, tile, stride, tile_batch, band_bytes, progress):
    """mmsegmentation's slide inference, emitting rows as soon as every tile covering them is computed.

    Summation order per pixel is the reference's (tiles in row-major order, starting from zero), and the
    coverage count is the product of per-row and per-column counts (the tile grid is a product grid)."""
    b, _, h, w = pixel_values.shape
    device = pixel_values.device
    ys, xs = tile_origins(h, tile, stride), tile_origins(w, tile, stride)
    th, tw = min(tile, h), min(tile, w)
    count_rows = torch.zeros(h, device=device)
    count_cols = torch.zeros(w, device=device)
    for y0 in ys:
        count_rows[y0 : y0 + th] += 1
    for x0 in xs:
        count_cols[x0 : x0 + tw] += 1
    count = None
    rows_axis = cols_axis = None
    live = {}  # tile-row index → list of per-tile fp32 logits (B, th/4, tw/4, L), kept while rows need them
    emitted = 0
    num_labels = model.decode_head.classifier.out_channels
    band = band_rows(3 * b * w * num_labels * 4, band_bytes)
    with _progress(len(ys) * len(xs), "tile", progress) as bar:
        for k, y0 in enumerate(ys):
            tiles = []
            for t0 in range(0, len(xs), tile_batch):
                group = xs[t0 : t0 + tile_batch]
                crops = torch.cat([pixel_values[:, :, y0 : y0 + th, x0 : x0 + tw] for x0 in group])
                logits = model(crops).logits.float().permute(0, 2, 3, 1)
                tiles += [logits[i * b : (i + 1) * b] for i in range(len(group))]
                bar.update(len(group))
            live[k] = tiles
            if rows_axis is None:
                rows_axis = LinearAxis.build(tiles[0].shape[1], th, device)
                cols_axis = LinearAxis.build(tiles[0].shape[2], tw, device)
            finished = ys[k + 1] if k + 1 < len(ys) else h
            for r0 in range(emitted, finished, band):
                r1 = min(finished, r0 + band)
                canvas = torch.zeros(b, r1 - r0, w, num_labels, device=device)
                for j, tiles_j in live.items():
                    o0, o1 = max(r0, ys[j]), min(r1, ys[j] + th)
                    if o0 >= o1:
                        continue
                    lo, hi = rows_axis.source_range(o0 - ys[j], o1 - ys[j])
                    for x0, q in zip(xs, tiles_j):
                        part = resample_band(q[:, lo:hi], rows_axis, cols_axis, o0 - ys[j], o1 - ys[j], offset=lo)
                        canvas[:, o0 - r0 : o1 - r0, x0 : x0 + tw] += part
                count = (count_rows[r0:r1, None] * count_cols[None, :])[None, :, :, None]
                yield r0, _finish(canvas.div_(count), output)
            emitted = finished
            for j in [j for j in live if ys[j] + th <= emitted]:
                del live[j]


@torch.no_grad()
def segment(
    model: PvtV2ForSemanticSegmentation,
    pixel_values: torch.Tensor,
    mode: str = "whole",
    tile: int = 1024,
    stride: int = 768,
    output: str = "logits",
    tile_batch: int = 1,
    band_bytes: int = BAND_BYTES,
    progress: bool = False,
) -> torch.Tensor:
    """``pixel_values (B, 3, H, W)`` → ``output="logits"`` (default) or ``"probs"``: ``(B, num_labels, H, W)``
    fp32; ``"labels"``: ``(B, H, W)`` argmax ids (:func:`label_dtype`), never holding full-resolution logits.

    Raises ``MemoryError`` up front (not an OOM kill) when the requested output cannot fit in the memory
    available; use ``output="labels"`` or :func:`iter_segment` then.
    """
    _check_args(model, pixel_values, mode, output, tile, stride, tile_batch)
    # On CPU the whole call, not only its encoder forwards, reuses the pages of earlier calls' large buffers (the
    # decode head's bands, the output). Measured interleaved against the encoder-only scope, page faults per call
    # and speed: labels b0 512² 11,600 → 14 (1.16×), b0 1024² 20,600 → 0 (1.05×), b0 2048² 68,000 → 900
    # (1.06×), b2 1024² 37,700 → 70 (1.03×); logits b0 1024² 199,000 → 15,500 (1.25×). A no-op on other devices.
    with cpu_block_cache_on(pixel_values.device):
        return _segment(model, pixel_values, mode, tile, stride, output, tile_batch, band_bytes, progress)


def _segment(model, pixel_values, mode, tile, stride, output, tile_batch, band_bytes, progress) -> torch.Tensor:
    b, _, h, w = pixel_values.shape
    num_labels = model.decode_head.classifier.out_channels
    if output == "labels":
        out = torch.empty(b, h, w, dtype=label_dtype(num_labels), device=pixel_values.device)
    else:
        need = b * num_labels * h * w * 4
        free = available_memory(pixel_values.device)
        if free is not None and need > free:
            raise MemoryError(
                f"output={output!r} needs {need / 2**30:.1f} GiB for (B, num_labels, H, W) = "
                f"({b}, {num_labels}, {h}, {w}) fp32, {free / 2**30:.1f} GiB available; use "
                f"output='labels' ({b * h * w / 2**30:.2f} GiB) or iter_segment() to stream bands"
            )
        out = torch.empty(b, num_labels, h, w, device=pixel_values.device)
    for r0, part in iter_segment(model, pixel_values, mode, output, tile, stride, tile_batch, band_bytes, progress):
        out[..., r0 : r0 + part.shape[-2], :] = part
    return out


@torch.no_grad()
def segment_reference(
    model: PvtV2ForSemanticSegmentation,
    pixel_values: torch.Tensor,
    mode: str = "whole",
    tile: int = 1024,
    stride: int = 768,
) -> torch.Tensor:
    """The unstreamed computation :func:`segment` must equal: the unfolded (reference) head, full-size logits
    resized with ``F.interpolate`` and, in slide mode, a full-size canvas. ``(B, num_labels, H, W)`` fp32."""
    _check_args(model, pixel_values, mode, "logits", tile, stride, 1)
    b, _, h, w = pixel_values.shape
    with model.decode_head.unfolded():
        if mode == "whole":
            logits = model(pixel_values).logits
            return F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        canvas = None
        count = torch.zeros(1, 1, h, w, device=pixel_values.device)
        for y0 in tile_origins(h, tile, stride):
            for x0 in tile_origins(w, tile, stride):
                crop = pixel_values[:, :, y0 : y0 + tile, x0 : x0 + tile]
                logits = model(crop).logits
                logits = F.interpolate(logits.float(), size=crop.shape[2:], mode="bilinear", align_corners=False)
                if canvas is None:
                    canvas = torch.zeros(b, logits.shape[1], h, w, device=pixel_values.device)
                canvas[:, :, y0 : y0 + crop.shape[2], x0 : x0 + crop.shape[3]] += logits
                count[:, :, y0 : y0 + crop.shape[2], x0 : x0 + crop.shape[3]] += 1
        return canvas / count


def palette(num_labels: int) -> np.ndarray:
    """A fixed, well-spread colour per label: ``(num_labels, 3)`` uint8 (label 0 is black)."""
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 256, size=(max(num_labels, 1), 3), dtype=np.uint8)
    colours[0] = 0
    return colours


def _atomic(path: Path, write) -> Path:
    """``write(tmp_path)`` then rename onto ``path``: readers (and reruns) never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_masks(
    labels: np.ndarray, image: np.ndarray, out_dir: Path, stem: str, num_labels: int, alpha: float = 0.5
) -> Tuple[Path, Path]:
    """``labels (H, W)`` → ``stem_labels.png`` (palette PNG, pixel value = label id) and ``stem_overlay.png``,
    each written to a temporary name and renamed into place."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    colours = palette(num_labels)
    if num_labels > 256:
        raise ValueError(f"a palette PNG holds at most 256 labels, the model has {num_labels}")
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(colours)] = colours
    mask.putpalette(flat.reshape(-1).tolist())
    label_path = _atomic(out_dir / f"{stem}_labels.png", lambda p: mask.save(p, format="PNG"))
    overlay = (1 - alpha) * image.astype(np.float32) + alpha * colours[labels].astype(np.float32)
    overlay = Image.fromarray(overlay.round().clip(0, 255).astype(np.uint8))
    overlay_path = _atomic(out_dir / f"{stem}_overlay.png", lambda p: overlay.save(p, format="PNG"))
    return label_path, overlay_path


def output_paths(out_dir: Path, stem: str, output: str) -> List[Path]:
    """The files one image's ``output`` is written to: labels → ``stem_labels.png`` + ``stem_overlay.png``;
    logits / probs → ``stem_logits.npy`` / ``stem_probs.npy`` (``(num_labels, H, W)`` float32)."""
    if output == "labels":
        return [out_dir / f"{stem}_labels.png", out_dir / f"{stem}_overlay.png"]
    return [out_dir / f"{stem}_{output}.npy"]


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


# Images above this many pixels get a progress bar over their bands / tiles.
PROGRESS_PIXELS = 1 << 22


def segment_file(
    model: PvtV2ForSemanticSegmentation,
    path: Path,
    out_dir: Path,
    mode: str = "whole",
    output: str = "labels",
    tile: int = 1024,
    stride: int = 768,
    tile_batch: int = 1,
    progress: bool = True,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
) -> List[Path]:
    """Segment one image file and write :func:`output_paths` (each renamed into place once complete). Any image
    type is read at its real range and upright as viewers show it (:func:`pvtv2_fast.preprocessing.load_image`)."""
    from .preprocessing import PvtV2ImageProcessor, load_image, to_rgb8

    source = load_image(path, max_pixels)
    image = to_rgb8(source)  # for the overlay
    param = next(model.parameters())
    with cpu_block_cache_on(param.device):  # as segment(): this image's buffers reuse the previous one's pages
        pixel_values = PvtV2ImageProcessor(do_resize=False)(source)["pixel_values"].to(param.device, param.dtype)
        h, w = image.shape[:2]
        show = progress and h * w >= PROGRESS_PIXELS
        stem, out_dir = Path(path).stem, Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        bands = iter_segment(model, pixel_values, mode, output, tile, stride, tile_batch, progress=show)
        if output == "labels":
            labels = np.empty((h, w), dtype=np.uint8 if model.config.num_labels <= 256 else np.int32)
            for r0, band in bands:
                labels[r0 : r0 + band.shape[1]] = band[0].cpu().numpy()
            return list(save_masks(labels, image, out_dir, stem, model.config.num_labels))
        path_out = output_paths(out_dir, stem, output)[0]

        def write(tmp: Path) -> None:  # streamed to disk band by band: never (num_labels, H, W) in memory
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(model.config.num_labels, h, w))
            for r0, band in bands:
                array[:, r0 : r0 + band.shape[2]] = band[0].cpu().numpy()
            array.flush()
            del array

        return [_atomic(path_out, write)]


def segment_files(
    model: PvtV2ForSemanticSegmentation,
    paths: Iterable[Path],
    out_dir: Path,
    mode: str = "whole",
    tile: int = 1024,
    stride: int = 768,
    progress: bool = True,
    output: str = "labels",
    tile_batch: int = 1,
    skip_existing: bool = False,
) -> Tuple[List[Path], List[str]]:
    """Segment image files of any (mixed) sizes one by one; returns (written files, error messages).

    A failed image (unreadable, too small for the model, out of memory) is reported and the rest go on;
    ``skip_existing`` skips images whose outputs all exist (finished by an earlier run: files appear only
    complete)."""
    from tqdm import tqdm

    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    written, errors = [], []
    paths = list(paths)
    for path in tqdm(paths, desc="segment", unit="image", disable=not progress or len(paths) < 2):
        if skip_existing and all(p.exists() for p in output_paths(Path(out_dir), Path(path).stem, output)):
            continue
        try:  # a bad, too-small or too-large image is reported, not fatal
            written += segment_file(model, path, out_dir, mode, output, tile, stride, tile_batch, progress)
        except (OSError, ValueError, MemoryError, RuntimeError) as e:
            errors.append(f"{path}: {type(e).__name__}: {e}")
    return written, errors
