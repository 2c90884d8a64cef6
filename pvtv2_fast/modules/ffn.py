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

    With ``fast = True`` the FFN runs as :func:`pvtv2_fast.ops.conv_ffn`: on CPU one kernel that streams bands of
    rows through the cache (the widened hidden state is never materialised), elsewhere fc1 → the fused
    (ReLU →) depthwise conv → GELU op (:func:`pvtv2_fast.ops.dwconv_gelu`) → fc2. Active dropout (training with
    ``dropout > 0``) keeps the unfused FFN.
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
        # Memory-lean mode: the widened hidden state is built for bands of rows at most this many bytes large
        # (None: the whole map at once). See PvtV2PreTrainedModel.set_memory_lean.
        self.max_hidden_bytes = None

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``(B, H·W, C)`` → ``(B, H·W, C)``. With ``max_hidden_bytes`` the map is processed in bands of rows,
        each with a one-row halo above and below for the 3×3 conv, so only a band's hidden state is ever alive;
        the result is the same (zero padding still happens at the image border only)."""
        b = hidden_states.shape[0]
        hidden = self.dense1.out_features
        row_bytes = b * width * hidden * hidden_states.element_size()
        if self.max_hidden_bytes is None or row_bytes * (height + 2) <= self.max_hidden_bytes:
            return self.ffn(hidden_states, height, width)
        band = max(1, self.max_hidden_bytes // row_bytes - 2)
        out = hidden_states.new_empty(b, height * width, self.dense2.out_features)
        for r0 in range(0, height, band):
            r1 = min(height, r0 + band)
            a0, a1 = max(0, r0 - 1), min(height, r1 + 1)  # the band plus its halo rows
            band_out = self.ffn(hidden_states[:, a0 * width: a1 * width], a1 - a0, width)
            out[:, r0 * width: r1 * width] = band_out[:, (r0 - a0) * width: (r1 - a0) * width]
        return out

    def ffn(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The whole FFN on one map (or band): ``(B, H·W, C)`` → ``(B, H·W, C)``."""
        if self.fast and self.hidden_act == "gelu" and not (self.training and self.dropout.p > 0):
            from .. import ops

            # one op for the whole FFN: on CPU a kernel that never materialises the widened hidden state
            conv = self.dwconv.dwconv
            return ops.conv_ffn(
                hidden_states, self.dense1.weight, self.dense1.bias, conv.weight, conv.bias, self.dense2.weight,
                self.dense2.bias, height, width, relu_input=self.extra_relu, backend=self.backend,
            )
        return self.dense2_dropout(self.widen(hidden_states, height, width))

    def dense2_dropout(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense2(hidden_states))

    def widen(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """fc1 → (ReLU) → depthwise 3×3 → activation → dropout: ``(B, H·W, C)`` → ``(B, H·W, hidden)``."""
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
        return self.dropout(hidden_states)
