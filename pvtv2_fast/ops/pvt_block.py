"""``pvt_block(x, ...)``: a whole PVTv2 block for inference in one op: ``x1 = x + SRA(LN1(x))``,
``y = x1 + FFN(LN2(x1))``, the SRA as :func:`~pvtv2_fast.ops.sra_layer` computes it and the FFN as
:func:`~pvtv2_fast.ops.conv_ffn`."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _ext
from .._ext import cpu_has_amx
from .checks import check_params, describe
from .conv_ffn import check_conv_ffn, conv_ffn_reference
from .packing import in_pairs, pack_weight, pack_weight_pairs
from .registry import define, register_native
from .sra_attention import MAX_CPU_HEAD_DIM
from .sra_layer import check_sra_layer, cpu_layer_slower, sra_layer_reference

# The tensors of `attention` and `ffn`, in order (sra_layer's and conv_ffn's arguments).
ATTENTION = ("q_weight", "q_bias", "kv_weight", "kv_bias", "proj_weight", "proj_bias", "sr_weight", "sr_bias",
             "norm_weight", "norm_bias")  # fmt: skip
FFN = ("fc1_weight", "fc1_bias", "dw_weight", "dw_bias", "fc2_weight", "fc2_bias")


def pvt_block_reference(
    x: Tensor,
    norm1_weight: Optional[Tensor],
    norm1_bias: Optional[Tensor],
    attention: Sequence[Optional[Tensor]],
    norm2_weight: Optional[Tensor],
    norm2_bias: Optional[Tensor],
    ffn: Sequence[Optional[Tensor]],
    height: int,
    width: int,
    num_heads: int,
    scale: float,
    eps: Sequence[float],
    relu_input: bool,
    packed: Optional[List[Tensor]] = None,
) -> Tensor:
    """The composition: layer_norm, sra_layer's reference with x as its residual, layer_norm, conv_ffn's reference,
    the residual add (transformers' and timm's block). ``packed`` is not used."""
    c = x.shape[2]
    h = F.layer_norm(x, (c,), norm1_weight, norm1_bias, eps[0])
    x1 = sra_layer_reference(h, *attention, x, height, width, num_heads, scale, eps[2])
    h2 = F.layer_norm(x1, (c,), norm2_weight, norm2_bias, eps[1])
    return x1 + conv_ffn_reference(h2, *ffn, height, width, relu_input)


def _bf16_dot() -> bool:
    """Whether the C++ bf16 GEMM runs here (AVX512-BF16 under the AVX-512 kernels: ``_C.cpu_bf16_dot``); False
    when PVTV2_FAST_CPU_ISA holds a bad value (the kernels' calls raise on it)."""
    try:
        return _ext.available() and bool(torch.ops.pvtv2_fast_C.cpu_bf16_dot())
    except RuntimeError:
        return False


# Weights packed in pairs for the bf16 block's GEMMs where the CPU has AVX512-BF16 (read once: the ISA is fixed per
# process). "auto" takes that block for bf16 only without AMX: on an AVX-512 EPYC (Zen 4, no AMX; 2 threads, two
# models interleaved in one process) whole models ran 1.39x (b0) and 1.25x (b2) the per-op bf16 path (oneDNN's
# linears and convs between the C++ attention and dwconv_gelu) at 224², 1.16x / 1.02x at 512², 1.03x / 1.01x at
# 1024², 1.04x for b2 at batch 8, with a smaller error (RMS of b2's last state against fp32: 0.0099 vs 0.012). With
# AMX, oneDNN's AMX GEMMs are several times AVX512-BF16's rate and the per-op path stays (not measured: no AMX
# machine was at hand when this landed).
BF16_PAIRS = _bf16_dot()
NATIVE_BF16_BLOCK = BF16_PAIRS and not cpu_has_amx()


def packs_in_pairs(x: Tensor, hidden: int) -> bool:
    """Whether :func:`pack_block_weights` packs the weights of a block with an FFN ``hidden`` wide, for inputs like
    ``x``, in pairs (bf16 GEMMs: bf16 where :data:`BF16_PAIRS`, every K even)."""
    return x.dtype == torch.bfloat16 and BF16_PAIRS and x.shape[-1] % 2 == 0 and hidden % 2 == 0


def pack_block_weights(
    attention: Sequence[Optional[Tensor]], ffn: Sequence[Optional[Tensor]], pairs: Optional[bool] = None
) -> List[Tensor]:
    """The ``packed`` argument of :func:`pvt_block`: the attention's GEMM weights ``[q, kv, proj]`` (and ``sr``;
    :func:`~pvtv2_fast.ops.pack_layer_weights`' list), then fc1's and fc2's, through
    :func:`~pvtv2_fast.ops.pack_weight`, or in pairs
    (:func:`~pvtv2_fast.ops.pack_weight_pairs`) for the bf16 block's GEMMs: ``pairs`` defaults to
    :func:`packs_in_pairs` (bf16 weights, even channel counts, a CPU with AVX512-BF16). Modules cache it for
    inference."""
    if pairs is None:
        pairs = packs_in_pairs(attention[0], ffn[0].shape[0])
    pack = pack_weight_pairs if pairs else pack_weight
    weights = [attention[0], attention[2], attention[4]] + ([attention[6]] if attention[6] is not None else [])
    return [pack(w) for w in weights + [ffn[0], ffn[4]]]


def _with_packed(args: tuple) -> tuple:
    """The kernel's arguments: the packed weights are required there; packed here when the caller did not pass them."""
    return args if args[-1] is not None else (*args[:-1], pack_block_weights(args[3], args[6]))


def _forward_only(args: Sequence) -> Optional[str]:
    """The C++ block is forward-only: a call that needs gradients runs the reference."""
    tensors = [args[0], args[1], args[2], args[4], args[5], *args[3], *args[6]]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return "the C++ block is forward-only and this call needs gradients"
    return None


def cpu_block_slower(x: Tensor, num_heads: int) -> bool:
    """Where "auto" keeps the per-op composition rather than the C++ block: as for the C++ layer
    (:func:`~pvtv2_fast.ops.sra_layer.cpu_layer_slower`), except bf16 where :data:`NATIVE_BF16_BLOCK`."""
    if x.dtype == torch.bfloat16 and NATIVE_BF16_BLOCK and x.shape[2] % 2 == 0:
        return x.shape[2] // num_heads > MAX_CPU_HEAD_DIM
    return cpu_layer_slower(x, num_heads)


def _cpu_slower(args: Sequence) -> bool:
    return cpu_block_slower(args[0], args[9])


# On CUDA the composition (SDPA, cuBLAS) stands in. The C++ block is forward-only: a call that needs gradients runs
# the reference (_forward_only), as upsample_accumulate's does.
OP = define("pvt_block", pvt_block_reference, stand_ins={"triton": "torch", "cuda": "torch"})
register_native(
    OP, "pvt_block", 0, 0, devices=("cpu",), differentiable=False, slower=_cpu_slower, prepare=_with_packed,
    why_not=_forward_only,
)  # fmt: skip


def pvt_block(
    x: Tensor,
    height: int,
    width: int,
    num_heads: int,
    norm1: Sequence[Optional[Tensor]],
    attention: Sequence[Optional[Tensor]],
    norm2: Sequence[Optional[Tensor]],
    ffn: Sequence[Optional[Tensor]],
    *,
    eps: Sequence[float] = (1e-6, 1e-6, 1e-6),
    relu_input: bool = False,
    scale: Optional[float] = None,
    packed: Optional[Sequence[Tensor]] = None,
    backend: str = "auto",
) -> Tensor:
    """x: ``(B, H·W, C)`` tokens of an H×W map. Returns ``x1 + FFN(LN2(x1))`` with ``x1 = x + SRA(LN1(x))``.

    ``norm1`` / ``norm2``: ``(weight, bias)`` of the two LayerNorms (either may be None); ``attention``: the 10
    tensors of :func:`~pvtv2_fast.ops.sra_layer` (:data:`ATTENTION`; the last four None without spatial reduction);
    ``ffn``: the 6 of :func:`~pvtv2_fast.ops.conv_ffn` (:data:`FFN`; fc2 back to C channels); ``eps``: norm1's,
    norm2's and the reduction norm's; ``relu_input``: the FFN's ReLU after fc1 (PVTv2-Li's); ``scale`` defaults to
    ``head_dim ** -0.5``; ``packed``: :func:`pack_block_weights`, cached by the caller (packed per call otherwise).

    ``"cpu"``: one C++ call, forward-only (a call that needs gradients runs the reference): LayerNorm's row kernel,
    ``sra_layer``'s and ``conv_ffn``'s C++ code and the residual adds, with nothing between them in Python; fp32
    compute (bf16 / fp16 through fp32 copies). bf16 with the weights packed in pairs (the default on CPUs with
    AVX512-BF16, :func:`pack_block_weights`): every GEMM, and the attention's two products for even heads up to 128
    wide, in bf16 × bf16 → fp32 on AVX512-BF16's dot product, values rounded to bf16 where the module run in bf16
    rounds them, the residual stream in fp32, the output rounded once. On CUDA the composition stands in. Repeated
    calls on the same weights can resolve and pack once: :func:`bind_pvt_block`.
    """
    bound = bind_pvt_block(
        x, height, width, num_heads, norm1, attention, norm2, ffn, eps=eps, relu_input=relu_input, scale=scale,
        packed=packed, backend=backend,
    )  # fmt: skip
    return bound(x, height, width)


def bind_pvt_block(
    example: Tensor,
    height: int,
    width: int,
    num_heads: int,
    norm1: Sequence[Optional[Tensor]],
    attention: Sequence[Optional[Tensor]],
    norm2: Sequence[Optional[Tensor]],
    ffn: Sequence[Optional[Tensor]],
    *,
    eps: Sequence[float] = (1e-6, 1e-6, 1e-6),
    relu_input: bool = False,
    scale: Optional[float] = None,
    packed: Optional[Sequence[Tensor]] = None,
    backend: str = "auto",
) -> Callable[[Tensor, int, int], Tensor]:
    """:func:`pvt_block` with everything but the input bound: ``f(x, height, width)`` runs the block on the backend
    chosen for ``example`` (of ``height`` × ``width``), with the arguments checked and, for the C++ block, the weights
    packed (unless ``packed`` is given), here, once. For modules that run one block on many inputs: the resolution
    holds for inputs like ``example`` (device, dtype, shape, whether gradients are needed), so key a cache of bound
    blocks on those and on :func:`~pvtv2_fast.ops.registry.dispatch_generation`. The C++ block checks every call's
    input itself (``checks::pvt_block``)."""
    norm1, attention, norm2, ffn, eps = list(norm1), list(attention), list(norm2), list(ffn), list(eps)
    if (len(norm1), len(attention), len(norm2), len(ffn), len(eps)) != (2, len(ATTENTION), 2, len(FFN), 3):
        raise ValueError(
            f"pvt_block: expected norm1 and norm2 of 2 tensors, attention of {len(ATTENTION)}, ffn of {len(FFN)} and "
            f"3 eps, got {len(norm1)}, {len(norm2)}, {len(attention)}, {len(ffn)} and {len(eps)}"
        )
    n_layer = 4 if attention[6] is not None else 3
    if packed is not None and len(packed) != n_layer + 2:
        raise ValueError(f"pvt_block: packed must hold {n_layer + 2} tensors (pack_block_weights), got {len(packed)}")
    packed = list(packed) if packed is not None else None
    x = example
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ValueError(f"pvt_block: x must be (B, N, C) tokens, got {describe(x)}")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"pvt_block: num_heads must be a positive int, got {num_heads!r}")
    pairs = packed is not None and in_pairs(packed[0])
    if pairs and x.dtype != torch.bfloat16:
        raise ValueError(f"pvt_block: weights packed in pairs are for bf16 inputs, got x {describe(x)}")
    c = x.shape[2]
    scale = (c // num_heads) ** -0.5 if scale is None else float(scale)
    args = (x, *norm1, attention, *norm2, ffn, height, width, num_heads, scale, [float(e) for e in eps], relu_input,
            packed)  # fmt: skip
    chosen = OP.resolve(backend, args)
    # The C++ block checks every argument itself (checks::pvt_block, the same rules and clear messages), and a block's
    # Python checks of its ~30 tensors measured ~80 us per call (a tenth of b0's 7² block): only the composition's
    # backends are checked here.
    if chosen != "cpu":
        # The composition does not read packed weights; those packed in pairs (bf16 GEMMs) are the C++ block's alone.
        if pairs:
            packed = None
        check_sra_layer("pvt_block", x, *attention[:6], height, width, num_heads, *attention[6:], None,
                        packed[:n_layer] if packed is not None else None)  # fmt: skip
        if not isinstance(ffn[4], Tensor) or ffn[4].ndim != 2 or ffn[4].shape[0] != c:
            raise ValueError(f"pvt_block: fc2_weight must map back to the {c} channels of x, got {describe(ffn[4])}")
        ffn_packed = packed[n_layer:] if packed is not None else [None, None]
        check_conv_ffn("pvt_block", x, *ffn, height, width, relu_input, *ffn_packed, None)
        norms = {f"norm{i}_{k}": (t, (c,)) for i, n in ((1, norm1), (2, norm2)) for k, t in zip(("weight", "bias"), n)}
        check_params("pvt_block", x, norms)
    else:
        args = _with_packed(args)
    weights, rest = args[1:7], args[9:]
    return lambda x, height, width: OP.run(chosen, x, *weights, height, width, *rest)
