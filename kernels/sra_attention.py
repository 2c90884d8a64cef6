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

from .launch import batch_chunks, check_grid


# N, M only bound masks and loops: not specialising them (Triton specialises ints on == 1 and divisibility
# by 16) keeps one binary per dtype and tile instead of one per map size.
@triton.jit(do_not_specialize=["N", "M"])
def sra_attention_kernel(
    Q,
    K,
    V,
    O,
    sm_scale,
    N,
    M,
    H,
    D,
    stride_qb,
    stride_qn,
    stride_qc,
    stride_kb,
    stride_km,
    stride_kc,
    stride_vb,
    stride_vm,
    stride_vc,
    stride_ob,
    stride_on,
    stride_oc,
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
    # Scalar bases in 64 bits: b·stride_b and n0·stride_n pass 2³¹ once B·N·C does (large batches of 4096² maps);
    # offsets inside a query tile stay 32-bit (cheaper registers). Keys are indexed from their item's base in
    # 32 bits: one item's packed K/V span M·2C elements, M = N / sr², far below 2³¹ at any supported size.
    n0 = pid_n * BLOCK_N
    row_q = b.to(tl.int64) * stride_qb + n0.to(tl.int64) * stride_qn
    row_o = b.to(tl.int64) * stride_ob + n0.to(tl.int64) * stride_on

    offs_n = tl.arange(0, BLOCK_N)  # relative to n0
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N - n0
    mask_d = offs_d < D
    chan = h * D + offs_d

    q_ptrs = Q + row_q + offs_n[:, None] * stride_qn + chan[None, :] * stride_qc
    q = tl.load(q_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    # Fold the softmax scale and log2(e) into one multiply so the exponentials are exp2.
    qk_scale = sm_scale * 1.4426950408889634

    k_base = K + b.to(tl.int64) * stride_kb + chan[:, None] * stride_kc
    v_base = V + b.to(tl.int64) * stride_vb + chan[None, :] * stride_vc

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
            offs_m = start + tl.arange(0, BLOCK_M)  # keys of one item: M·stride_m < 2³¹ (see above)
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

    o_ptrs = O + row_o + offs_n[:, None] * stride_on + chan[None, :] * stride_oc
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


# ---------------------------------------------------------------------------------------------- launch
# Tiles, defined once here; kernels/aot.py compiles exactly these (bench/results/triton_compile.md).
ONE_BLOCK_MAX_KEYS = 128  # up to this many keys, all keys are one block (no online-softmax loop)
# Compiled fp32 (tf32x3 splits each operand in two) spills its score tile past 64 keys (272 B of stack at 16×128 on
# sm_90, triton 3.8) while the streaming path's fp32 tiles do not: fp32 streams from 65 keys.
ONE_BLOCK_MAX_KEYS_FP32 = 64
INTERPRETED_BLOCK_N = 256  # the interpreter pays per program: few, large tiles
INTERPRETED_STREAM_TILE = (128, 128)  # (BLOCK_N, BLOCK_M) of the streaming path under the interpreter


def _configs(spec):
    return [triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=st) for bn, bm, w, st in spec]


# Half precision runs on the tensor cores. fp32 runs "tf32x3" dots (three TF32 tensor-core passes, error near
# fp32's): IEEE fp32 dots spill kilobytes of stack on sm_90, and only small tiles stay spill-free with tf32x3.
# Every config here compiles spill-free on sm_90 at PVTv2's head dims (32, 64) with triton 3.8; 128×64 with 4 warps
# (72–80 B) and 64×128 (336–360 B) spilled and were dropped (bench/results/triton_compile.md, kernels/aot.py --full).
AUTOTUNE_CONFIGS = _configs([(64, 64, 4, 2), (128, 64, 8, 3), (64, 32, 4, 3), (128, 32, 4, 4)])
AUTOTUNE_CONFIGS_FP32 = _configs([(64, 32, 4, 2), (32, 32, 4, 2), (64, 16, 4, 2), (32, 64, 4, 2)])
ONE_BLOCK_WARPS = 4
_autotuned: dict = {}


def interpreting() -> bool:
    from . import INTERPRETED

    return INTERPRETED


def block_d(d: int) -> int:
    """Head dim padded to a power of two, at least 16 (``tl.dot`` needs K >= 16 on sm_80/sm_90)."""
    return max(16, triton.next_power_of_2(d))


def one_block_max_keys(fp32: bool) -> int:
    """Most keys the one-block path takes: compiled fp32 streams from 65 keys; the interpreter has no registers."""
    return ONE_BLOCK_MAX_KEYS_FP32 if fp32 and not interpreting() else ONE_BLOCK_MAX_KEYS


def one_block_tile(fp32: bool, head_block: int, m: int) -> tuple:
    """``(BLOCK_N, BLOCK_M)`` of the compiled one-block path for ``m`` keys (at most ``one_block_max_keys``).

    The whole ``BLOCK_N × BLOCK_M`` score tile lives in registers: 64 queries (32 for 128-wide heads) in half
    precision; fp32's tf32x3 dots split each operand in two, and 32 queries × 64 keys still spilled 8 B on sm_90
    (bench/results/triton_compile.md), so fp32 takes 16."""
    block_m = max(16, triton.next_power_of_2(m))
    block_n = 16 if fp32 else (64 if head_block <= 64 else 32)
    return block_n, block_m


def fp32_precision(q: torch.Tensor) -> str:
    """``tl.dot`` input precision: exact fp32 under the interpreter; tf32x3 for fp32 on the GPU (ignored for half)."""
    return "ieee" if interpreting() or q.dtype != torch.float32 else "tf32x3"


def kernel_args(q, k, v, o, num_heads, scale):
    b, n, c = q.shape
    m = k.shape[1]
    return (q, k, v, o, scale, n, m, num_heads, c // num_heads, *q.stride(), *k.stride(), *v.stride(), *o.stride())


def sra_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """``softmax(q·kᵀ·scale)·v`` per head. ``q (B, N, C)``, ``k, v (B, M, C)`` (any strides) → ``(B, N, C)``.

    fp32 uses "tf32x3" dots on the GPU (three TF32 passes: error near fp32's, unlike plain TF32's ~3e-4; IEEE fp32
    dots spill on sm_90); fp16 / bf16 use the tensor cores with fp32 accumulation. Under the Triton interpreter
    bf16 operands are upcast before ``tl.dot`` (the interpreter's bf16 dot is wrong), so indexing, masking and the
    softmax are still what is tested. Grid: query blocks on axis 0, batch × heads on axis 1 (≤ 65535 per launch:
    larger batches launch in chunks).
    """
    b, n, c = q.shape
    m = k.shape[1]
    o = torch.empty((b, n, c), device=q.device, dtype=q.dtype)
    head_block = block_d(c // num_heads)
    dot_fp32 = interpreting() and q.dtype == torch.bfloat16
    consts = dict(BLOCK_D=head_block, DOT_FP32=dot_fp32, INPUT_PRECISION=fp32_precision(q))
    for start, stop in batch_chunks(b, num_heads):
        args = kernel_args(q[start:stop], k[start:stop], v[start:stop], o[start:stop], num_heads, scale)
        _launch(args, n, m, (stop - start) * num_heads, q.dtype == torch.float32, q.is_cuda, consts)
    return o


def _launch(args, n: int, m: int, programs_bh: int, fp32: bool, on_cuda: bool, consts: dict) -> None:
    if m <= one_block_max_keys(fp32):
        block_n, block_m = one_block_tile(fp32, consts["BLOCK_D"], m)
        if interpreting():
            block_n = INTERPRETED_BLOCK_N
        grid = check_grid((triton.cdiv(n, block_n), programs_bh))
        sra_attention_kernel[grid](
            *args, BLOCK_N=block_n, BLOCK_M=block_m, ONE_BLOCK=True, num_warps=ONE_BLOCK_WARPS, **consts
        )
        return
    if interpreting() or not on_cuda:
        block_n, block_m = INTERPRETED_STREAM_TILE
        grid = check_grid((triton.cdiv(n, block_n), programs_bh))
        sra_attention_kernel[grid](*args, BLOCK_N=block_n, BLOCK_M=block_m, ONE_BLOCK=False, **consts)
        return
    if fp32 not in _autotuned:  # built lazily: autotuning needs a GPU driver, which the interpreter lacks
        configs = AUTOTUNE_CONFIGS_FP32 if fp32 else AUTOTUNE_CONFIGS
        _autotuned[fp32] = triton.autotune(configs, key=["N", "M", "D"])(sra_attention_kernel)
    grid = lambda meta: check_grid((triton.cdiv(n, meta["BLOCK_N"]), programs_bh))  # noqa: E731
    _autotuned[fp32][grid](*args, ONE_BLOCK=False, **consts)
