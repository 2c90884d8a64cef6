"""LayerNorm over the channels of ``(B, N, C)`` tokens, through :func:`pvtv2_fast.ops.layer_norm` in fast mode."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .fast_path import FastPath

# Below this many elements PyTorch's LayerNorm is the faster call: the fused op's argument checks and dispatch
# (~25 us) outweigh its kernel's gain (measured on b0/b2 shapes, 2 threads: 0.4-1.0x at <= 100 K elements,
# 1.5-3x from 200 K up).
FUSED_MIN_ELEMENTS = 1 << 17


class TokenLayerNorm(FastPath, nn.LayerNorm):
    """``nn.LayerNorm(C, eps)`` (same parameters, ``state_dict`` and reference math). ``x: (B, N, C)`` tokens of a
    map. In fast mode, maps of at least :data:`FUSED_MIN_ELEMENTS` values run :func:`pvtv2_fast.ops.layer_norm` on
    ``op_backend`` (a C++ kernel on CPU; PyTorch's own fused kernel on CUDA); under ``torch.compile`` the reference
    runs, for inductor to fuse with its neighbours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.fast
            or torch.compiler.is_compiling()
            or x.dim() != 3
            or x.numel() < FUSED_MIN_ELEMENTS
            or self.normalized_shape != (x.shape[-1],)
        ):
            return super().forward(x)
        return ops.layer_norm(x, self.weight, self.bias, self.eps, backend=self.op_backend)
