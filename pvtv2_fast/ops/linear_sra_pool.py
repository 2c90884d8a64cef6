"""``linear_sra_pool(x, height, width)``: adaptive average pooling of tokens to P×P (Linear SRA's key source)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_token_map
from .registry import define, register_native, register_recompute_autograd, triton_why_not

LINEAR_SRA_POOL_SIZE = 7  # PVTv2-Li pools every map to 7×7 = 49 keys (the paper's and every checkpoint's choice)


def linear_sra_pool_reference(x: Tensor, height: int, width: int, pool_size: int) -> Tensor:
    """The PyTorch composition: tokens → NCHW map → ``F.adaptive_avg_pool2d`` → ``(B, P·P, C)`` tokens."""
    b, n, c = x.shape
    grid = x.transpose(1, 2).reshape(b, c, height, width)
    if not torch.compiler.is_dynamo_compiling() and torch.onnx.is_in_onnx_export():
        # ONNX exporters fix adaptive pooling's windows at the traced size: bins as matrix products instead
        from ..export import adaptive_avg_pool2d_exportable

        return adaptive_avg_pool2d_exportable(grid, pool_size).flatten(2).transpose(1, 2)
    return F.adaptive_avg_pool2d(grid, pool_size).flatten(2).transpose(1, 2)


@torch.library.custom_op("pvtv2_fast::linear_sra_pool_triton", mutates_args=())
def linear_sra_pool_triton(x: Tensor, height: int, width: int, pool_size: int) -> Tensor:
    from ..kernels.linear_sra_pool import linear_sra_pool_fwd

    return linear_sra_pool_fwd(x, height, width, pool_size)


@linear_sra_pool_triton.register_fake
def _(x, height, width, pool_size):
    return x.new_empty((x.shape[0], pool_size * pool_size, x.shape[2]))


OP = define("linear_sra_pool", linear_sra_pool_reference)
register_recompute_autograd(linear_sra_pool_triton, linear_sra_pool_reference, 1, 3)
OP.register("triton", linear_sra_pool_triton, triton_why_not)
register_native(OP, "linear_sra_pool", 1, 3)


def linear_sra_pool(
    x: Tensor, height: int, width: int, pool_size: int = LINEAR_SRA_POOL_SIZE, backend: str = "auto"
) -> Tensor:
    """x: ``(B, N, C)`` tokens of an H×W map → ``(B, P·P, C)``, the bins of ``nn.AdaptiveAvgPool2d(P)``
    (any H, W, including H or W < P), without an NCHW copy."""
    check_token_map("linear_sra_pool", x, height, width)
    if pool_size < 1:
        raise ValueError(f"linear_sra_pool: pool_size must be >= 1, got {pool_size}")
    return OP(backend, x, height, width, pool_size)
