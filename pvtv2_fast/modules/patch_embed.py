"""Overlapping patch embedding: a strided convolution with zero padding, then LayerNorm (no position embedding)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class OverlapPatchEmbed(nn.Module):
    """``(B, C_in, H, W)`` image or map → ``(B, H'·W', C)`` tokens of an H'×W' map.

    ``kernel = patch_size``, ``stride``, ``padding = patch_size // 2``: neighbouring patches overlap, which is
    PVTv2's replacement for PVTv1's non-overlapping patches and absolute position embeddings.
    """

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int, stride: int, eps: float) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.stride = stride
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=stride, padding=patch_size // 2)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        # fast: read the input as channels-last, so the conv writes (B, H', W', C) memory, which *is* the token
        # layout: no NCHW → tokens copy, and LayerNorm gets a contiguous input.
        self.fast = False

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        k, s, p = self.patch_size[0], self.stride, self.patch_size[0] // 2
        return (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1

    def forward(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        if self.fast:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)  # a no-op between stages
        embeddings = self.proj(pixel_values)
        _, _, height, width = embeddings.shape
        embeddings = embeddings.flatten(2).transpose(1, 2)
        return self.layer_norm(embeddings), height, width
