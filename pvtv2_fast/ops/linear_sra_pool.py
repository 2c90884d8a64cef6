"""``linear_sra_pool(x, height, width)``: adaptive average pooling of tokens to P×P (Linear SRA's key source)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _ext
from ._dispatch import check_token_map, choose, register_recompute_autograd


def _check(x: Tensor, height: int, width: int, pool_size: int) -> None:
    check_token_map("linear_sra_pool", x, height, width)
    if pool_size < 1:
        raise ValueError(f"linear_sra_pool: pool_size must be >= 1, got {pool_size}")


def linear_sra_pool_reference(x: Tensor, height: int, width: int, pool_size: int) -> Tensor:
    b, n, c = x.shape
    grid = x.transpose(1, 2).reshape(b, c, height, width)
    return F.adaptive_avg_pool2d(grid, pool_size).flatten(2).transpose(1, 2)


@torch.library.custom_op("pvtv2_fast::linear_sra_pool_triton", mutates_args=())
def linear_sra_pool_triton(x: Tensor, height: int, width: int, pool_size: int) -> Tensor:
    from ..kernels.linear_sra_pool import linear_sra_pool_fwd

    return linear_sra_pool_fwd(x, height, width, pool_size)


@linear_sra_pool_triton.register_fake
def _(x, height, width, pool_size):
    return x.new_empty((x.shape[0], pool_size * pool_size, x.shape[2]))


register_recompute_autograd(linear_sra_pool_triton, linear_sra_pool_reference, 1, 3)
if _ext.available():
    register_recompute_autograd("pvtv2_fast_C::linear_sra_pool", linear_sra_pool_reference, 1, 3)


def linear_sra_pool(x: Tensor, height: int, width: int, pool_size: int = 7, backend: str = "auto") -> Tensor:
    """x: ``(B, N, C)`` tokens of an H×W map → ``(B, P·P, C)``, the bins of ``nn.AdaptiveAvgPool2d(P)``
    (any H, W, including H or W < P), without an NCHW copy."""
    _check(x, height, width, pool_size)
    chosen = choose("linear_sra_pool", backend, (x,), native_op="linear_sra_pool")
    if chosen == "triton":
        return linear_sra_pool_triton(x, height, width, pool_size)
    if chosen in ("cpu", "cuda"):
        return torch.ops.pvtv2_fast_C.linear_sra_pool(x, height, width, pool_size)
    return linear_sra_pool_reference(x, height, width, pool_size)
