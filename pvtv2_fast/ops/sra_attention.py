"""``sra_attention(q, k, v, num_heads)``: multi-head attention of N queries over M reduced keys, token layout."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._ext import cpu_has_amx
from .checks import check_tokens
from .registry import define, register_native, register_recompute_autograd, triton_why_not

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


MAX_CPU_HEAD_DIM = 64  # measured up to b2's 64-wide heads; wider ones keep SDPA
# bf16 keeps SDPA where the CPU has AMX (see _cpu_slower); read once here, so dispatch under torch.compile reads a
# plain value.
SDPA_FOR_BF16 = cpu_has_amx()


def _cpu_slower(args: Sequence) -> bool:
    """Where "auto" leaves CPU attention to SDPA, as measured against it (2 threads; README, "CPU attention"): bf16
    where the CPU has AMX (SDPA's AMX path ran 1.7-2x the C++ kernel's fp32-compute tiles on a Xeon; on an AVX-512
    EPYC without AMX the C++ kernel ran 1.22-1.61x SDPA's bf16 on every b0 / b2 stage at 224² and 512², error no
    larger) and heads wider than MAX_CPU_HEAD_DIM (not measured). In fp32 it measured (bench/results/cpu_attention.md)
    1.34-1.38x SDPA at b0's 32-wide heads and 1.07-1.27x at b2's 64-wide heads over 1024 keys, 1.14-1.40x over 224²'s
    49 keys (all stages of b0 and b2; 0.94-1.19x with everything capped to AVX2), 1.1-2.4x over 2-36 keys, level at
    1 key."""
    q, heads = args[0], args[3]
    return q.dtype == torch.bfloat16 and SDPA_FOR_BF16 or q.shape[2] // heads > MAX_CPU_HEAD_DIM


# On CUDA the Triton kernel; no CUDA C++ attention kernel exists ("cuda" means Triton's).
OP = define("sra_attention", sra_attention_reference, stand_ins={"cuda": "triton"})
register_recompute_autograd(sra_attention_triton, sra_attention_reference, 3, 2)
OP.register("triton", sra_attention_triton, _triton_why_not)
register_native(OP, "sra_attention", 3, 2, devices=("cpu",), slower=_cpu_slower)


def sra_attention(
    q: Tensor, k: Tensor, v: Tensor, num_heads: int, scale: Optional[float] = None, backend: str = "auto"
) -> Tensor:
    """``softmax(q kᵀ · scale) v`` per head.

    q: ``(B, N, C)`` queries of an H×W map; k, v: ``(B, M, C)`` reduced keys/values (any strides, e.g. views into
    a packed ``(B, M, 2C)`` projection); ``scale`` defaults to ``head_dim ** -0.5``. Returns ``(B, N, C)``.
    The fused kernels (Triton on CUDA, C++ on CPU: flash-style with an online softmax in fp32) never materialise the
    N×M scores.
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
