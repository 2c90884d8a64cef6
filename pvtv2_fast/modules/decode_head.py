"""Segformer's all-MLP decode head on PVTv2 / MiT stage maps (attribute names follow transformers' v5 classes)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class StageProjection(nn.Module):
    """``(B, C_i, H_i, W_i)`` → ``(B, H_i·W_i, D)`` tokens projected to the decoder width."""

    def __init__(self, in_channels: int, decoder_hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, decoder_hidden_size)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.proj(feature_map.flatten(2).transpose(1, 2))


class AllMLPDecodeHead(nn.Module):
    """Per-stage linear projections to ``D`` channels, bilinear upsampling to the stage-1 (1/4) resolution,
    concatenation (deepest stage first), 1×1 conv + BatchNorm + ReLU fusion, dropout, 1×1 classifier.

    ``feature_maps``: one ``(B, C_i, H_i, W_i)`` map per stage → logits ``(B, num_labels, H_1, W_1)``.
    """

    def __init__(self, hidden_sizes: Sequence[int], decoder_hidden_size: int, num_labels: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_projections = nn.ModuleList(StageProjection(c, decoder_hidden_size) for c in hidden_sizes)
        self.linear_fuse = nn.Conv2d(decoder_hidden_size * len(hidden_sizes), decoder_hidden_size, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(decoder_hidden_size)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(decoder_hidden_size, num_labels, kernel_size=1)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        b = feature_maps[0].shape[0]
        size = feature_maps[0].shape[2:]
        upsampled = []
        for feature_map, projection in zip(feature_maps, self.linear_projections):
            h, w = feature_map.shape[2:]
            x = projection(feature_map).transpose(1, 2).reshape(b, -1, h, w)
            upsampled.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        x = self.linear_fuse(torch.cat(upsampled[::-1], dim=1))
        x = self.dropout(self.activation(self.batch_norm(x)))
        return self.classifier(x)
