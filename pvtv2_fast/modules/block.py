"""A PVTv2 transformer block: pre-norm SRA and pre-norm convolutional FFN, each with a residual and drop-path."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .attention import SpatialReductionAttention
from .ffn import ConvFeedForward
from .layer_norm import TokenLayerNorm


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when ``drop_prob == 0``)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
        return x * mask / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class PvtV2Block(nn.Module):
    """``(B, N, C)`` tokens of an H×W map → same shape."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        sr_ratio: int,
        mlp_ratio: float,
        *,
        linear_attention: bool = False,
        qkv_bias: bool = True,
        hidden_act: str = "gelu",
        hidden_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        sr_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.layer_norm_1 = TokenLayerNorm(hidden_size, eps=eps)
        self.attention = SpatialReductionAttention(
            hidden_size,
            num_attention_heads,
            sr_ratio,
            linear_attention=linear_attention,
            qkv_bias=qkv_bias,
            attention_dropout=attention_dropout,
            proj_dropout=hidden_dropout,
            sr_eps=sr_eps,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.layer_norm_2 = TokenLayerNorm(hidden_size, eps=eps)
        self.mlp = ConvFeedForward(
            hidden_size, int(hidden_size * mlp_ratio), hidden_act, hidden_dropout, extra_relu=linear_attention
        )

    @property
    def drop_path_active(self) -> bool:
        return isinstance(self.drop_path, DropPath) and self.drop_path.drop_prob > 0.0

    def forward(
        self, hidden_states: torch.Tensor, height: int, width: int, output_attentions: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.attention.fast and not (self.training and (self.drop_path_active or self.attention.proj_drop.p > 0)):
            # Nothing between the projection and the residual add: the fast path adds it in the GEMM's epilogue.
            hidden_states, probs = self.attention(
                self.layer_norm_1(hidden_states), height, width, output_attentions, residual=hidden_states
            )
        else:
            attention, probs = self.attention(self.layer_norm_1(hidden_states), height, width, output_attentions)
            hidden_states = hidden_states + self.drop_path(attention)
        if self.mlp.fast and not (self.training and self.drop_path_active):
            # Likewise for the FFN: fc2's epilogue (oneDNN schedule) or an in-place add adds the residual.
            hidden_states = self.mlp(self.layer_norm_2(hidden_states), height, width, residual=hidden_states)
        else:
            hidden_states = hidden_states + self.drop_path(self.mlp(self.layer_norm_2(hidden_states), height, width))
        return hidden_states, probs
