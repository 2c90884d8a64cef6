"""PVTv2's convolutional feed-forward network: fc1 → (ReLU) → depthwise 3×3 conv → GELU → fc2."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from .activations import get_activation
from .fast_path import FastPath, token_map


class DepthwiseConv(nn.Module):
    """3×3 depthwise conv with zero padding on ``(B, N, C)`` tokens of an H×W map; it replaces position embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = token_map(hidden_states, height, width, channels_last=False)
        return self.dwconv(grid).flatten(2).transpose(1, 2)


class ConvFeedForward(FastPath, nn.Module):
    """``(B, N, C)`` → ``(B, N, C)``. The linear-attention variant (PVTv2-Li) adds a ReLU after fc1.

    The GELU FFN (every preset) is one :func:`pvtv2_fast.ops.conv_ffn` call on ``op_backend``: the reference is its
    "torch" backend; on CPU the fused one is a kernel that streams bands of rows through the cache (the widened
    hidden state is never materialised). Other activations, and active dropout in training, run this module's own
    layers. ``max_hidden_bytes`` (memory-lean mode) bounds the widened state of the composed backends by bands.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        hidden_act: str = "gelu",
        dropout: float = 0.0,
        extra_relu: bool = False,
    ) -> None:
        super().__init__()
        self.dense1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DepthwiseConv(hidden_features)
        self.hidden_act = hidden_act
        self.intermediate_act_fn = get_activation(hidden_act)
        self.dense2 = nn.Linear(hidden_features, in_features)
        self.dropout = nn.Dropout(dropout)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        self.extra_relu = extra_relu
        # See PvtV2PreTrainedModel.set_memory_lean; None: the whole map at once.
        self.max_hidden_bytes: Optional[int] = None

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``(B, H·W, C)`` → ``(B, H·W, C)``."""
        if self.hidden_act == "gelu" and not (self.training and self.dropout.p > 0):
            conv = self.dwconv.dwconv
            return ops.conv_ffn(
                hidden_states,
                self.dense1.weight,
                self.dense1.bias,
                conv.weight,
                conv.bias,
                self.dense2.weight,
                self.dense2.bias,
                height,
                width,
                relu_input=self.extra_relu,
                backend=self.op_backend,
                max_hidden_bytes=self.max_hidden_bytes,
            )
        hidden_states = self.relu(self.dense1(hidden_states))
        hidden_states = self.intermediate_act_fn(self.dwconv(hidden_states, height, width))
        return self.dropout(self.dense2(self.dropout(hidden_states)))
