"""Overlapping patch embedding: a strided convolution with zero padding, then LayerNorm (no position embedding)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .. import ops
from ..ops.token_conv import cpu_kernel_pays, output_size
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
        self.padding = patch_size // 2
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=stride, padding=self.padding)
        self.layer_norm = TokenLayerNorm(hidden_size, eps=eps)

    def forward(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        if self.fast:
            # Channels-last input makes the conv write (B, H', W', C) memory, which *is* the token layout: no
            # NCHW → tokens copy, and LayerNorm gets a contiguous input (a no-op between fast stages).
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            if self._cpu_token_conv(pixel_values):
                return self._token_conv(pixel_values)
            embeddings = self._conv2d("proj", pixel_values, self.proj)
        else:
            embeddings = self.proj(pixel_values)
        _, _, height, width = embeddings.shape
        embeddings = embeddings.flatten(2).transpose(1, 2)
        return self.layer_norm(embeddings), height, width

    def _cpu_token_conv(self, x: torch.Tensor) -> bool:
        """Whether the conv runs the C++ ``ops.token_conv`` on the map's tokens rather than oneDNN's prepacked
        convolution (:meth:`_conv2d`): CPU tensors in fast mode, where "auto" measured it faster
        (``ops.token_conv.cpu_kernel_pays``: fp32 calls of 64 or more output channels up to 300 MFLOP, 150 on the
        image: every embedding at 224² but b0's first, b0's later ones at 512²; README, "CPU patch embeddings"), or
        always with the "cpu" backend. Other devices keep their convolution."""
        if not (self.fast and x.device.type == "cpu" and self.op_backend in ("auto", "cpu")):
            return False
        _, _, h, w = x.shape
        return self.op_backend == "cpu" or cpu_kernel_pays(x, self.proj.weight, h, w, self.stride, self.padding)

    def _token_conv(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """``x``: a channels-last ``(B, C_in, H, W)`` map, whose memory is its ``(B, H·W, C_in)`` tokens."""
        b, c, h, w = x.shape
        conv, k = self.proj, self.patch_size[0]
        packed = self._inference_cache("proj_packed_tokens", (conv.weight,), lambda: ops.pack_weight(conv.weight))
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        embeddings = ops.token_conv(
            tokens, conv.weight, conv.bias, h, w, self.stride, self.padding, packed, self.op_backend
        )
        height, width = output_size(h, k, self.stride, self.padding), output_size(w, k, self.stride, self.padding)
        return self.layer_norm(embeddings), height, width
