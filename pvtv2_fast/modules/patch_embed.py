"""Overlapping patch embedding: a strided convolution with zero padding, then LayerNorm (no position embedding)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .fast_path import FastPath
from .layer_norm import TokenLayerNorm


class OverlapPatchEmbed(FastPath, nn.Module):
    """``(B, C_in, H, W)`` image or map → ``(B, H'·W', C)`` tokens of an H'×W' map.

    ``kernel = patch_size``, ``stride``, ``padding = patch_size // 2``: neighbouring patches overlap, which is
    PVTv2's replacement for PVTv1's non-overlapping patches and absolute position embeddings.
    """

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int, stride: int, eps: float) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.stride = stride
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=stride, padding=patch_size // 2)
        self.layer_norm = TokenLayerNorm(hidden_size, eps=eps)

    def forward(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        if self.fast:
            # Channels-last input makes the conv write (B, H', W', C) memory, which *is* the token layout: no
            # NCHW → tokens copy, and LayerNorm gets a contiguous input (a no-op between fast stages).
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            embeddings = self._conv2d("proj", pixel_values, self.proj)
        else:
            embeddings = self.proj(pixel_values)
        _, _, height, width = embeddings.shape
        embeddings = embeddings.flatten(2).transpose(1, 2)
        return self.layer_norm(embeddings), height, width
