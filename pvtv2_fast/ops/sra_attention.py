"""``sra_attention(q, k, v, num_heads)``: multi-head attention of N queries over M reduced keys, token layout."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_tokens
from .registry import define, register_recompute_autograd, triton_why_not

MAX_HEAD_DIM = 128  # the Triton kernel keeps a head's queries and accumulator in registers


def sra_attention_reference(q: Tensor, k: Tensor, v: Tensor, num_heads: int, scale: float) -> Tensor:
    """PyTorch's SDPA on ``(B, heads, L, head_dim)`` views: ``(B, N, C)`` out."""
    b, n, c = q.shape
    m, d = k.shape[1], c // num_heads
    qh = q.reshape(b, n, num_heads, d).transpose(1, 2)
    kh = k.reshape(b, m, num_heads, d).transpose(1, 2)
    vh = v.reshape(b, m, num_heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    return out.transpose(1, 2).reshape(b, n, c)


@torch.library.custom_op("pvtv2_fast::sra_attention_triton", mutates_args=())
def sra_attention_triton(q: Tensor, k: Tensor, v: Tensor, num_heads: int, scale: float) -> Tensor:
    from ..kernels.sra_attention import sra_attention_fwd

    return sra_attention_fwd(q, k, v, num_heads, scale)


@sra_attention_triton.register_fake
def _(q, k, v, num_heads, scale):
    return q.new_empty(q.shape)


def _triton_why_not(args: Sequence) -> Optional[str]:
    q, heads = args[0], args[3]
    head_dim = q.shape[2] // heads
    return triton_why_not(args) or (f"head dim {head_dim} > {MAX_HEAD_DIM}" if head_dim > MAX_HEAD_DIM else None)


# No C++/CUDA C++ attention kernel: on CPU PyTorch's SDPA is the kernel (a C++ flash-style kernel measured
# 0.77-1.15x SDPA's speed), on CUDA the Triton kernel.
OP = define("sra_attention", sra_attention_reference, stand_ins={"cpu": "torch", "cuda": "triton"})
register_recompute_autograd(sra_attention_triton, sra_attention_reference, 3, 2)
OP.register("triton", sra_attention_triton, _triton_why_not)


def sra_attention(
    q: Tensor, k: Tensor, v: Tensor, num_heads: int, scale: Optional[float] = None, backend: str = "auto"
) -> Tensor:
    """``softmax(q kᵀ · scale) v`` per head.

    q: ``(B, N, C)`` queries of an H×W map; k, v: ``(B, M, C)`` reduced keys/values (any strides, e.g. views into
    a packed ``(B, M, 2C)`` projection); ``scale`` defaults to ``head_dim ** -0.5``. Returns ``(B, N, C)``.
    The fused kernel never materialises the N×M scores.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tokens("sra_attention", name, t)
    if k.shape != v.shape:
        raise ValueError(f"sra_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"sra_attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch and channels")
    if k.shape[1] < 1:
        raise ValueError("sra_attention: at least one key is needed (M >= 1)")
    if num_heads < 1 or q.shape[2] % num_heads:
        raise ValueError(f"sra_attention: {q.shape[2]} channels are not divisible into {num_heads} heads")
    if len({q.dtype, k.dtype, v.dtype}) > 1 or len({q.device, k.device, v.device}) > 1:
        raise ValueError("sra_attention: q, k and v must share dtype and device")
    scale = (q.shape[2] // num_heads) ** -0.5 if scale is None else float(scale)
    return OP(backend, q, k, v, num_heads, scale)
