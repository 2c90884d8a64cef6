"""Segformer's all-MLP decode head on PVTv2 / MiT stage maps (attribute names follow transformers' v5 classes),
and its folded, row-streamed form for inference at high resolution.

The head as trained (:meth:`AllMLPDecodeHead.forward_unfolded`, the reference): project each stage map to ``D``
channels, upsample all to the stage-1 (1/4) resolution, concatenate (``4·D`` channels), 1×1 fuse conv,
BatchNorm, ReLU, classifier. In eval mode the same function is computed folded (:class:`FoldedDecodeHead`):
the fuse conv is linear over the concatenation and bilinear upsampling is linear and per channel, so

    BN(fuse(concat_i up(P_i f_i + b_i))) = Σ_i up(G_i f_i) + c,   G_i = s ⊙ F_i P_i,   c = s ⊙ Σ_i F_i b_i + t

with ``F_i`` the fuse weight's columns for stage ``i``, ``s, t`` eval BatchNorm's scale and shift (bilinear
weights sum to 1, so biases pass through upsampling). Each ``G_i`` maps ``C_i → D`` at the stage's own
resolution; only one ``D``-channel band of rows at 1/4 resolution exists at a time, never ``4·D`` channels over
the whole map.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..streaming import LinearAxis, RowCache, band_rows

# Bytes of temporaries one band of the folded head may use (rows are sized from it; the result does not depend
# on it beyond float rounding order).
HEAD_BAND_BYTES = 32 << 20


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

    In eval mode (and with ``fold = True``, the default) the forward is the folded head, computed in bands of
    rows; its logits come back as a channels-last view (same shape and values as the reference's, to float
    rounding: ≤ 1e-4 in fp32). Training mode (batch statistics, dropout) always runs the reference.
    """

    def __init__(
        self, hidden_sizes: Sequence[int], decoder_hidden_size: int, num_labels: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.linear_projections = nn.ModuleList(StageProjection(c, decoder_hidden_size) for c in hidden_sizes)
        self.linear_fuse = nn.Conv2d(decoder_hidden_size * len(hidden_sizes), decoder_hidden_size, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(decoder_hidden_size)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(decoder_hidden_size, num_labels, kernel_size=1)
        self.fold = True

    @property
    def folds(self) -> bool:
        """Whether :meth:`forward` runs the folded head: eval mode, ``fold`` on, BatchNorm has running stats, and not
        inside a graph capture (torch.compile / torch.export / ONNX tracing), whose graphs must not bake in the
        folded head's size-dependent banding."""
        capturing = torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        return self.fold and not self.training and self.batch_norm.running_mean is not None and not capturing

    @contextlib.contextmanager
    def unfolded(self) -> Iterator["AllMLPDecodeHead"]:
        """``with head.unfolded(): ...`` runs the reference head inside the block."""
        previous, self.fold = self.fold, False
        try:
            yield self
        finally:
            self.fold = previous

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.folds:
            return FoldedDecodeHead(self, feature_maps).logits()
        return self.forward_unfolded(feature_maps)

    def forward_unfolded(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The reference: transformers' ``SegformerDecodeHead`` computation."""
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


class FoldedDecodeHead:
    """The eval-mode head of one batch of stage maps, computed by bands of rows at the stage-1 (1/4) resolution.

    ``feature_maps``: one ``(B, C_i, H_i, W_i)`` map per stage (channels-last views are read without copies).
    :meth:`rows` ``(a, b)`` → logits of rows ``[a, b)``, channels last ``(B, b − a, W_1, num_labels)``; requests
    must not move backwards (each stage's projected rows are computed once, a chunk at a time).
    :meth:`logits` → the whole ``(B, num_labels, H_1, W_1)`` map (a channels-last view).
    """

    def __init__(
        self, head: AllMLPDecodeHead, feature_maps: Sequence[torch.Tensor], band_bytes: int = HEAD_BAND_BYTES
    ) -> None:
        if len(feature_maps) != len(head.linear_projections):
            raise ValueError(
                f"the decode head takes {len(head.linear_projections)} stage maps, got {len(feature_maps)}"
            )
        if not head.folds:
            raise ValueError("the folded head needs the head in eval mode with BatchNorm running statistics")
        first = feature_maps[0]
        self.batch, self.dtype, self.device = first.shape[0], first.dtype, first.device
        self.height, self.width = first.shape[2:]
        d = head.linear_fuse.out_channels
        n = len(feature_maps)
        bn = head.batch_norm
        with torch.no_grad() if not torch.is_grad_enabled() else contextlib.nullcontext():
            # Composed in fp32 (and differentiable: the algebra is exact, so gradients through it are the
            # reference's in eval mode).
            scale = (
                bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
                if bn.affine
                else torch.rsqrt(bn.running_var.float() + bn.eps)
            )
            shift = (bn.bias.float() if bn.affine else 0) - bn.running_mean.float() * scale
            fuse = head.linear_fuse.weight.float().reshape(d, n, d)
            bias = shift
            self.stage_weights: List[torch.Tensor] = []
            for i, projection in enumerate(head.linear_projections):
                f_i = fuse[:, n - 1 - i]  # concatenation is deepest stage first
                self.stage_weights.append(((scale[:, None] * f_i) @ projection.proj.weight.float()).to(self.dtype))
                bias = bias + scale * (f_i @ projection.proj.bias.float())
            self.bias = bias.to(self.dtype)
            self.classifier_weight = head.classifier.weight.reshape(head.classifier.out_channels, d).to(self.dtype)
            self.classifier_bias = head.classifier.bias.to(self.dtype)
        self.num_labels = head.classifier.out_channels
        # Rows per band: the D-channel accumulator, one stage band in flight and the logits.
        row_bytes = self.batch * self.width * (3 * d + self.num_labels) * first.element_size()
        self.band = band_rows(row_bytes, band_bytes)
        self.stages = []
        for i, (fmap, weight) in enumerate(zip(feature_maps, self.stage_weights)):
            if fmap.ndim != 4 or fmap.shape[0] != self.batch or fmap.shape[1] != weight.shape[1]:
                raise ValueError(
                    f"stage {i} map must be (B={self.batch}, C={weight.shape[1]}, H, W), got {tuple(fmap.shape)}"
                )
            h, w = fmap.shape[2:]
            tokens = fmap.permute(0, 2, 3, 1)  # (B, H_i, W_i, C_i): a free view for channels-last maps
            produce = lambda a, b, t=tokens, g=weight: t[:, a:b] @ g.t()
            rows_axis = LinearAxis.build(h, self.height, self.device)
            col_taps = LinearAxis.build(w, self.width, self.device).taps()
            chunk = band_rows(self.batch * w * d * first.element_size(), band_bytes // 4, minimum=2)
            self.stages.append((RowCache(produce, h, chunk), rows_axis, col_taps))

    def rows(self, a: int, b: int) -> torch.Tensor:
        bands, taps = [], []
        # Deepest stage first (the reference's concatenation order); each stage's band holds only the source rows
        # that output rows [a, b) read.
        for cache, rows_axis, col_taps in reversed(self.stages):
            lo, hi = rows_axis.source_range(a, b)
            bands.append(cache.get(lo, hi))
            taps.append((*rows_axis.taps(a, b, lo), *col_taps))
        acc = ops.upsample_accumulate(bands, taps, self.bias, relu=True)
        return F.linear(acc, self.classifier_weight, self.classifier_bias)

    def logits(self) -> torch.Tensor:
        out = torch.empty(self.batch, self.height, self.width, self.num_labels, dtype=self.dtype, device=self.device)
        for a in range(0, self.height, self.band):
            b = min(self.height, a + self.band)
            out[:, a:b] = self.rows(a, b)
        return out.permute(0, 3, 1, 2)
