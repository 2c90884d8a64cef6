"""Flash-style attention of N queries over M (spatially reduced) keys, per head, with an online softmax in fp32.

Layout: ``q (B, N, C)``, ``k, v (B, M, C)`` read through their strides (so K and V can be views into one packed
``(B, M, 2C)`` projection, and nothing is permuted or copied); head ``h`` owns channels ``[h·D, (h+1)·D)``.
Output ``o (B, N, C)``, ready for the output projection. The N×M score matrix is never materialised: each program
keeps a ``BLOCK_N × D`` accumulator and streams keys in ``BLOCK_M`` blocks.

``ONE_BLOCK`` (all keys fit one block, e.g. the 49 pooled keys of Linear SRA): keys and values are loaded once and
the softmax is computed directly, with no loop and no rescaling.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def sra_attention_kernel(
    Q, K, V, O,
    sm_scale,
    N, M, H, D,
    stride_qb, stride_qn, stride_qc,
    stride_kb, stride_km, stride_kc,
    stride_vb, stride_vm, stride_vc,
    stride_ob, stride_on, stride_oc,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < D
    chan = h * D + offs_d

    q_ptrs = Q + b * stride_qb + offs_n[:, None] * stride_qn + chan[None, :] * stride_qc
    q = tl.load(q_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    # Fold the softmax scale and log2(e) into one multiply so the exponentials are exp2.
    qk_scale = sm_scale * 1.4426950408889634

    k_base = K + b * stride_kb + chan[:, None] * stride_kc
    v_base = V + b * stride_vb + chan[None, :] * stride_vc

    if ONE_BLOCK:
        offs_m = tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        k = tl.load(k_base + offs_m[None, :] * stride_km, mask=mask_d[:, None] & mask_m[None, :], other=0.0)
        v = tl.load(v_base + offs_m[:, None] * stride_vm, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, k, input_precision=INPUT_PRECISION) * qk_scale
        s = tl.where(mask_m[None, :], s, float("-inf"))
        row_max = tl.max(s, axis=1)
        p = tl.exp2(s - row_max[:, None])
        denom = tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        acc = acc / denom[:, None]
    else:
        m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start in range(0, M, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            mask_m = offs_m < M
            k = tl.load(k_base + offs_m[None, :] * stride_km, mask=mask_d[:, None] & mask_m[None, :], other=0.0)
            if DOT_FP32:
                k = k.to(tl.float32)
            s = tl.dot(q, k, input_precision=INPUT_PRECISION) * qk_scale
            s = tl.where(mask_m[None, :], s, float("-inf"))
            # M >= 1 and blocks start below M, so every block has a finite key: m_new is finite.
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + offs_m[:, None] * stride_vm, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            if DOT_FP32:
                v = v.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
            m_i = m_new
        acc = acc / l_i[:, None]

    o_ptrs = O + b * stride_ob + offs_n[:, None] * stride_on + chan[None, :] * stride_oc
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


# ---------------------------------------------------------------------------------------------- launch
ONE_BLOCK_MAX_KEYS = 128
def _configs(spec):
    return [triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=st) for bn, bm, w, st in spec]


# Half precision runs on the tensor cores. fp32 runs "tf32x3" dots (three TF32 tensor-core passes, error near
# fp32's): IEEE fp32 dots spill kilobytes of stack on sm_90, and only small tiles stay spill-free with tf32x3
# (see bench/results/triton_compile.md, made by kernels/aot.py).
_AUTOTUNE_CONFIGS = _configs([(64, 64, 4, 2), (128, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3), (64, 32, 4, 3),
                              (128, 32, 4, 4)])
_AUTOTUNE_CONFIGS_FP32 = _configs([(64, 32, 4, 2), (32, 32, 4, 2), (64, 16, 4, 2), (32, 64, 4, 2)])
_autotuned: dict = {}


def interpreting() -> bool:
    from . import INTERPRETED

    return INTERPRETED


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))  # tl.dot needs K >= 16 on sm_80/sm_90


def fp32_precision(q: torch.Tensor) -> str:
    """``tl.dot`` input precision: exact fp32 under the interpreter; tf32x3 for fp32 on the GPU (ignored for half)."""
    return "ieee" if interpreting() or q.dtype != torch.float32 else "tf32x3"


def kernel_args(q, k, v, o, num_heads, scale):
    b, n, c = q.shape
    m = k.shape[1]
    return (q, k, v, o, scale, n, m, num_heads, c // num_heads, *q.stride(), *k.stride(), *v.stride(), *o.stride())


def sra_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q·kᵀ·scale)·v`` per head. ``q (B, N, C)``, ``k, v (B, M, C)`` (any strides) → ``(B, N, C)``.

    fp32 uses "tf32x3" dots on the GPU (three TF32 passes: error near fp32's, unlike plain TF32's ~3e-4; IEEE fp32
    dots spill on sm_90); fp16 / bf16 use the tensor cores with fp32 accumulation. Under the Triton interpreter bf16 operands are upcast before ``tl.dot``
    (the interpreter's bf16 dot is wrong), so indexing, masking and the softmax are still what is tested.
    """
    b, n, c = q.shape
    m = k.shape[1]
    d = c // num_heads
    o = torch.empty((b, n, c), device=q.device, dtype=q.dtype) if out is None else out
    block_d = _block_d(d)
    dot_fp32 = interpreting() and q.dtype == torch.bfloat16
    precision = fp32_precision(q)
    args = kernel_args(q, k, v, o, num_heads, scale)
    one_block = m <= ONE_BLOCK_MAX_KEYS
    if one_block:
        block_m = max(16, triton.next_power_of_2(m))
        if interpreting():
            block_n = 256
        elif q.dtype == torch.float32:
            block_n = 32 if block_d <= 64 else 16
        else:
            block_n = 64 if block_d <= 64 else 32
        grid = (triton.cdiv(n, block_n), b * num_heads)
        sra_attention_kernel[grid](*args, BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d, ONE_BLOCK=True,
                                   DOT_FP32=dot_fp32, INPUT_PRECISION=precision, num_warps=4)
        return o
    if interpreting() or not q.is_cuda:
        grid = (triton.cdiv(n, 128), b * num_heads)
        sra_attention_kernel[grid](*args, BLOCK_N=128, BLOCK_M=128, BLOCK_D=block_d, ONE_BLOCK=False,
                                   DOT_FP32=dot_fp32, INPUT_PRECISION=precision)
        return o
    fp32 = q.dtype == torch.float32
    if fp32 not in _autotuned:  # built lazily: autotuning needs a GPU driver, which the interpreter lacks
        configs = _AUTOTUNE_CONFIGS_FP32 if fp32 else _AUTOTUNE_CONFIGS
        _autotuned[fp32] = triton.autotune(configs, key=["N", "M", "D"])(sra_attention_kernel)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), b * num_heads)  # noqa: E731
    _autotuned[fp32][grid](*args, BLOCK_D=block_d, ONE_BLOCK=False, DOT_FP32=False, INPUT_PRECISION=precision)
    return o
