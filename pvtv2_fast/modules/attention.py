"""Spatial-Reduction Attention (SRA) and Linear SRA, PVTv2's attention over a reduced key/value set."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced copy of the tokens.

    * ``sr_ratio > 1``: keys/values from a ``sr_ratio``×``sr_ratio`` strided conv of the H×W map + LayerNorm
      (M = ⌊H/sr⌋·⌊W/sr⌋ keys).
    * ``linear_attention``: adaptive average pool to 7×7, 1×1 conv, LayerNorm, GELU (M = 49 keys, so the cost is
      linear in the number of pixels).
    * ``sr_ratio == 1``: plain self-attention (M = N).

    Input ``hidden_states: (B, N, C)`` tokens of an H×W map; output ``(B, N, C)``.
    With ``fast = True`` the attention (and the Linear-SRA pooling) run through :mod:`pvtv2_fast.ops`.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        sr_ratio: int,
        linear_attention: bool = False,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        sr_eps: float = 1e-6,
        pool_size: int = 7,
    ) -> None:
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of the {num_attention_heads} heads")
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = hidden_size // num_attention_heads
        self.spatial_reduction_ratio = sr_ratio
        self.linear_attention = linear_attention
        self.pool_size = pool_size
        self.fast = False
        self.backend = "auto"  # for the fused ops; see PvtV2PreTrainedModel.set_fast

        self.query = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_drop = nn.Dropout(proj_dropout)
        if linear_attention:
            self.pool = nn.AdaptiveAvgPool2d(pool_size)
            self.spatial_reduction = nn.Conv2d(hidden_size, hidden_size, kernel_size=1, stride=1)
            self.layer_norm = nn.LayerNorm(hidden_size, eps=sr_eps)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.spatial_reduction = nn.Conv2d(hidden_size, hidden_size, kernel_size=sr_ratio, stride=sr_ratio)
            self.layer_norm = nn.LayerNorm(hidden_size, eps=sr_eps)

    # ------------------------------------------------------------------ helpers
    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) → (B, heads, L, head_dim) view."""
        b, l, _ = x.shape
        return x.view(b, l, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def reduce(self, hidden_states: torch.Tensor, height: int, width: int, fast: bool = False) -> torch.Tensor:
        """The key/value source: ``(B, N, C)`` tokens of an H×W map → ``(B, M, C)`` reduced tokens."""
        b, n, c = hidden_states.shape
        if self.linear_attention:
            if fast:
                from .. import ops

                pooled = ops.linear_sra_pool(hidden_states, height, width, self.pool_size, backend=self.backend)
                # The 1×1 conv on pooled tokens is a linear layer on them: no NCHW round trip.
                reduced = F.linear(pooled, self.spatial_reduction.weight.view(c, c), self.spatial_reduction.bias)
            else:
                grid = hidden_states.transpose(1, 2).reshape(b, c, height, width)
                reduced = self.spatial_reduction(self.pool(grid)).reshape(b, c, -1).transpose(1, 2)
            return self.act(self.layer_norm(reduced))
        if self.spatial_reduction_ratio > 1:
            if fast:
                # Tokens viewed as a channels-last NCHW map (no copy); the strided conv then writes channels-last
                # memory, i.e. (B, M, C) tokens, again without a copy.
                grid = hidden_states.view(b, height, width, c).permute(0, 3, 1, 2)
                reduced = self.spatial_reduction(grid).flatten(2).transpose(1, 2)
            else:
                grid = hidden_states.transpose(1, 2).reshape(b, c, height, width)
                reduced = self.spatial_reduction(grid).reshape(b, c, -1).transpose(1, 2)
            return self.layer_norm(reduced)
        return hidden_states

    # ------------------------------------------------------------------ forward
    def forward(
        self, hidden_states: torch.Tensor, height: int, width: int, output_attentions: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Returns ``(context (B, N, C), attention_probs (B, heads, N, M) or None)``."""
        dropout_p = self.attn_drop.p if self.training else 0.0
        if self.fast and not output_attentions and dropout_p == 0.0:
            return self._forward_fused(hidden_states, height, width), None

        b, n, c = hidden_states.shape
        query = self._split_heads(self.query(hidden_states))
        reduced = self.reduce(hidden_states, height, width)
        key = self._split_heads(self.key(reduced))
        value = self._split_heads(self.value(reduced))
        probs = None
        if output_attentions:
            scores = (query @ key.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
            probs = self.attn_drop(scores.softmax(dim=-1))
            context = probs @ value
        else:
            context = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)
        context = context.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(context)), probs

    def _forward_fused(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        from .. import ops

        c = self.hidden_size
        query = self.query(hidden_states)
        reduced = self.reduce(hidden_states, height, width, fast=True)
        # One GEMM for keys and values; the kernel reads K and V as strided views of the packed (B, M, 2C) result.
        kv_weight = torch.cat([self.key.weight, self.value.weight])
        kv_bias = None if self.key.bias is None else torch.cat([self.key.bias, self.value.bias])
        kv = F.linear(reduced, kv_weight, kv_bias)
        # No C++/CUDA C++ attention kernel: "cpu" means PyTorch's SDPA, "cuda" means Triton.
        backend = {"cpu": "torch", "cuda": "auto"}.get(self.backend, self.backend)
        context = ops.sra_attention(query, kv[..., :c], kv[..., c:], self.num_attention_heads, backend=backend)
        return self.proj_drop(self.proj(context))
