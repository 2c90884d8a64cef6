"""PVTv2's convolutional feed-forward network: fc1 → (ReLU) → depthwise 3×3 conv → GELU → fc2."""

from __future__ import annotations

import torch
from torch import nn

from .activations import get_activation


class DepthwiseConv(nn.Module):
    """3×3 depthwise conv with zero padding on ``(B, N, C)`` tokens of an H×W map; it replaces position embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = hidden_states.shape
        grid = hidden_states.transpose(1, 2).reshape(b, c, height, width)
        return self.dwconv(grid).flatten(2).transpose(1, 2)


class ConvFeedForward(nn.Module):
    """``(B, N, C)`` → ``(B, N, C)``. The linear-attention variant (PVTv2-Li) adds a ReLU after fc1.

    With ``fast = True`` the (ReLU →) depthwise conv → GELU middle runs as one fused op
    (:func:`pvtv2_fast.ops.dwconv_gelu`) that reads and writes the widened hidden state once.
    """

    def __init__(
        self, in_features: int, hidden_features: int, hidden_act: str = "gelu", dropout: float = 0.0,
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
        self.fast = False
        self.backend = "auto"  # for the fused op; see PvtV2PreTrainedModel.set_fast

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden_states = self.dense1(hidden_states)
        if self.fast and self.hidden_act == "gelu":
            from .. import ops

            conv = self.dwconv.dwconv
            hidden_states = ops.dwconv_gelu(
                hidden_states, conv.weight, conv.bias, height, width, relu_input=self.extra_relu, backend=self.backend
            )
        else:
            hidden_states = self.relu(hidden_states)
            hidden_states = self.dwconv(hidden_states, height, width)
            hidden_states = self.intermediate_act_fn(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.dense2(hidden_states)
        return self.dropout(hidden_states)
