"""Input checks: bad input gets a clear error, never a wrong answer."""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

import torch

from .config import PvtV2Config
from .ops.linear_sra_pool import LINEAR_SRA_POOL_SIZE


def stage_sizes(config: PvtV2Config, height: int, width: int) -> List[Tuple[int, int]]:
    """Token-map size (H_i, W_i) of every stage for an input of ``height``×``width`` pixels."""
    sizes = []
    for k, s in zip(config.patch_sizes, config.strides):
        p = k // 2
        height, width = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
        sizes.append((height, width))
    return sizes


class StageShape(NamedTuple):
    """The tensor shapes one stage's ops see for a given input size (for tests and benchmarks)."""

    height: int  # token map H_i × W_i
    width: int
    channels: int  # C_i
    heads: int
    sr_ratio: int
    keys: int  # M: reduced keys/values per image (49 for Linear SRA)
    ffn_hidden: int  # the FFN's widened width
    linear: bool  # Linear SRA (pooled keys, ReLU before the FFN's dwconv)


def stage_shapes(config: PvtV2Config, height: int, width: int) -> List[StageShape]:
    """:class:`StageShape` of every stage for an input of ``height``×``width`` pixels."""
    shapes = []
    for i, (h, w) in enumerate(stage_sizes(config, height, width)):
        c, sr = config.hidden_sizes[i], config.sr_ratios[i]
        if config.linear_attention:
            keys = LINEAR_SRA_POOL_SIZE**2
        else:
            keys = (h // sr) * (w // sr) if sr > 1 else h * w
        shapes.append(
            StageShape(
                h, w, c, config.num_attention_heads[i], sr, keys, int(c * config.mlp_ratios[i]), config.linear_attention
            )
        )
    return shapes


def _fits(config: PvtV2Config, size: int) -> bool:
    for (h, _), sr in zip(stage_sizes(config, size, size), config.sr_ratios):
        if h < 1 or (not config.linear_attention and h < sr):
            return False
    return True


# min_input_size per (patch sizes, strides, SR ratios, linear attention): every forward checks its input against it.
_MIN_INPUT_SIZES: Dict[tuple, int] = {}


def min_input_size(config: PvtV2Config) -> int:
    """Smallest height (and width) every stage can process: each strided SR conv needs H_i, W_i ≥ sr_ratio.
    A short search (29 steps for the presets, ~60 us), remembered per geometry in eager mode; under torch.compile
    the plain search runs (on Python constants: it leaves nothing in the graph)."""
    key = (tuple(config.patch_sizes), tuple(config.strides), tuple(config.sr_ratios), bool(config.linear_attention))
    compiling = torch.compiler.is_compiling()
    if not compiling and key in _MIN_INPUT_SIZES:
        return _MIN_INPUT_SIZES[key]
    size = 1
    while not _fits(config, size):  # stage sizes grow monotonically with the input: terminates
        size += 1
    if not compiling:
        _MIN_INPUT_SIZES[key] = size
    return size


def check_pixel_values(pixel_values: object, config: PvtV2Config) -> None:
    expected = f"a float tensor (B, {config.num_channels}, H, W)"
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be {expected}, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must be {expected}; got a tensor of rank {pixel_values.ndim} with shape "
            f"{tuple(pixel_values.shape)}"
            + (" (add a batch dimension with .unsqueeze(0))" if pixel_values.ndim == 3 else "")
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be {expected}; got dtype {pixel_values.dtype}. Convert images with "
            f"PvtV2ImageProcessor (or .float() / 255 and normalise)"
        )
    b, c, h, w = pixel_values.shape
    if c != config.num_channels:
        raise ValueError(f"pixel_values must be {expected}; got {c} channels (shape {tuple(pixel_values.shape)})")
    if b == 0:
        raise ValueError("pixel_values has batch size 0")
    minimum = min_input_size(config)
    if h < minimum or w < minimum:
        raise ValueError(
            f"input image {h}×{w} is too small: this PVTv2 config needs at least {minimum}×{minimum} pixels "
            f"(stage maps must be at least sr_ratios={config.sr_ratios} tokens on each side)"
        )
