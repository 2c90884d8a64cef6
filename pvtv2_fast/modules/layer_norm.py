"""LayerNorm over the channels of ``(B, N, C)`` tokens, through :func:`pvtv2_fast.ops.layer_norm` in fast mode."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .fast_path import FastPath

# Below this many tokens (B·N rows) PyTorch's LayerNorm is the faster call: the fused op's argument checks and
# dispatch (~25 us) outweigh its kernel's gain. Measured on b0/b2 shapes (2 threads, fp32 and bf16): 0.5-0.7x at
# 49-196 tokens, 1.1-1.3x at 784, 1.5-3x from 3136 tokens up; PyTorch's kernel spends most per row.
FUSED_MIN_TOKENS = 512


class TokenLayerNorm(FastPath, nn.LayerNorm):
    """``nn.LayerNorm(C, eps)`` (same parameters, ``state_dict`` and reference math). ``x: (B, N, C)`` tokens of a
    map. In fast mode, at least :data:`FUSED_MIN_TOKENS` tokens run :func:`pvtv2_fast.ops.layer_norm` on
    ``op_backend`` (a C++ kernel on CPU; PyTorch's own fused kernel on CUDA); under ``torch.compile`` the reference
    runs, for inductor to fuse with its neighbours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.fast
            or torch.compiler.is_compiling()
            or x.dim() != 3
            or x.shape[0] * x.shape[1] < FUSED_MIN_TOKENS
            or self.normalized_shape != (x.shape[-1],)
        ):
            return super().forward(x)
        return ops.layer_norm(x, self.weight, self.bias, self.eps, backend=self.op_backend)
