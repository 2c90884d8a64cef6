"""``sra_layer(x, ...)``: the whole Spatial-Reduction Attention of a PVTv2 block in one op: query and key/value
projections, the spatial reduction (strided conv + LayerNorm), multi-head attention and the output projection
(+ residual)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_params, check_token_map
from .packing import pack_weight, packed_shape
from .registry import define, register_native
from .sr_conv import sr_conv_reference
from .sra_attention import MAX_CPU_HEAD_DIM, sra_attention_reference


def sra_layer_reference(
    x: Tensor,
    q_weight: Tensor,
    q_bias: Optional[Tensor],
    kv_weight: Tensor,
    kv_bias: Optional[Tensor],
    proj_weight: Tensor,
    proj_bias: Optional[Tensor],
    sr_weight: Optional[Tensor],
    sr_bias: Optional[Tensor],
    norm_weight: Optional[Tensor],
    norm_bias: Optional[Tensor],
    residual: Optional[Tensor],
    height: int,
    width: int,
    num_heads: int,
    scale: float,
    eps: float,
    packed: Optional[List[Tensor]] = None,
) -> Tensor:
    """The PyTorch composition: linear, conv2d + layer_norm, linear, SDPA, linear (+ residual). ``packed`` is not
    used."""
    c = x.shape[2]
    q = F.linear(x, q_weight, q_bias)
    source = x
    if sr_weight is not None:
        reduced = sr_conv_reference(x, sr_weight, sr_bias, height, width)
        source = F.layer_norm(reduced, (c,), norm_weight, norm_bias, eps)
    kv = F.linear(source, kv_weight, kv_bias)
    out = F.linear(sra_attention_reference(q, kv[..., :c], kv[..., c:], num_heads, scale), proj_weight, proj_bias)
    return out if residual is None else residual + out


def pack_layer_weights(
    q_weight: Tensor, kv_weight: Tensor, proj_weight: Tensor, sr_weight: Optional[Tensor]
) -> List[Tensor]:
    """The ``packed`` argument of :func:`sra_layer`: ``[q, kv, proj]`` (and ``sr`` last) through
    :func:`~pvtv2_fast.ops.pack_weight`; modules cache it for inference."""
    weights = [q_weight, kv_weight, proj_weight] + ([sr_weight] if sr_weight is not None else [])
    return [pack_weight(w) for w in weights]


def _with_packed(args: tuple) -> tuple:
    """The kernel's arguments: the packed weights are required there; packed here when the caller did not pass them."""
    if args[-1] is not None:
        return args
    return (*args[:-1], pack_layer_weights(args[1], args[3], args[5], args[7]))


def cpu_layer_slower(x: Tensor, num_heads: int) -> bool:
    """Where "auto" keeps the per-op composition rather than the C++ layer (or the C++ block around it): bf16 / fp16
    (the C++ code computes in fp32 through copies, where oneDNN's AMX / native GEMMs serve the composition) and heads
    wider than the C++ attention was measured on."""
    return x.dtype != torch.float32 or x.shape[2] // num_heads > MAX_CPU_HEAD_DIM


def _cpu_slower(args: Sequence) -> bool:
    return cpu_layer_slower(args[0], args[14])


# On CUDA the composition's SDPA is one fused kernel and the projections are cuBLAS GEMMs: the reference stands in.
OP = define("sra_layer", sra_layer_reference, stand_ins={"triton": "torch", "cuda": "torch"})
register_native(OP, "sra_layer", 12, 6, devices=("cpu",), slower=_cpu_slower, prepare=_with_packed)


def check_sra_layer(
    op: str,
    x: Tensor,
    q_weight: Tensor,
    q_bias: Optional[Tensor],
    kv_weight: Tensor,
    kv_bias: Optional[Tensor],
    proj_weight: Tensor,
    proj_bias: Optional[Tensor],
    height: int,
    width: int,
    num_heads: int,
    sr_weight: Optional[Tensor],
    sr_bias: Optional[Tensor],
    norm_weight: Optional[Tensor],
    norm_bias: Optional[Tensor],
    residual: Optional[Tensor],
    packed: Optional[Sequence[Tensor]],
) -> Optional[List[Tensor]]:
    """:func:`sra_layer`'s argument checks (errors name ``op``); returns ``packed`` as a list (or None)."""
    check_token_map(op, x, height, width)
    c = x.shape[2]
    if c < 1:
        raise ValueError(f"{op}: x has no channels (C = 0)")
    if not isinstance(num_heads, int) or num_heads < 1 or c % num_heads:
        raise ValueError(f"{op}: {c} channels are not divisible into {num_heads} heads")
    params = {
        "q_weight": (q_weight, (c, c)),
        "q_bias": (q_bias, (c,)),
        "kv_weight": (kv_weight, (2 * c, c)),
        "kv_bias": (kv_bias, (2 * c,)),
        "proj_weight": (proj_weight, (c, c)),
        "proj_bias": (proj_bias, (c,)),
        "residual": (residual, tuple(x.shape)),
    }
    for name in ("q_weight", "kv_weight", "proj_weight"):
        if params[name][0] is None:
            raise ValueError(f"{op}: {name} is required")
    s = 1
    if sr_weight is None:
        if sr_bias is not None or norm_weight is not None or norm_bias is not None:
            raise ValueError(
                f"{op}: sr_bias, norm_weight and norm_bias belong to the spatial reduction: pass sr_weight"
            )
    else:
        if not isinstance(sr_weight, Tensor) or sr_weight.ndim != 4 or sr_weight.shape[2] != sr_weight.shape[3]:
            raise ValueError(
                f"{op}: sr_weight must be (C, C, s, s), got {getattr(sr_weight, 'shape', type(sr_weight))}"
            )
        s = sr_weight.shape[2]
        if s < 1 or s > height or s > width:
            raise ValueError(f"{op}: a {s}×{s} reduction does not fit in a {height}×{width} map")
        params.update(
            sr_weight=(sr_weight, (c, c, s, s)),
            sr_bias=(sr_bias, (c,)),
            norm_weight=(norm_weight, (c,)),
            norm_bias=(norm_bias, (c,)),
        )
    if packed is not None:
        packed = list(packed)
        shapes = [packed_shape(c, c), packed_shape(2 * c, c), packed_shape(c, c)]
        shapes += [packed_shape(c, s * s * c)] if sr_weight is not None else []
        if len(packed) != len(shapes):
            raise ValueError(f"{op}: packed must hold {len(shapes)} tensors (pack_layer_weights), got {len(packed)}")
        params.update({f"packed[{i}]": (p, shape) for i, (p, shape) in enumerate(zip(packed, shapes))})
        if any(p is None for p in packed):
            raise ValueError(f"{op}: packed holds None")
    check_params(op, x, params)
    return packed


def sra_layer(
    x: Tensor,
    q_weight: Tensor,
    q_bias: Optional[Tensor],
    kv_weight: Tensor,
    kv_bias: Optional[Tensor],
    proj_weight: Tensor,
    proj_bias: Optional[Tensor],
    height: int,
    width: int,
    num_heads: int,
    *,
    sr_weight: Optional[Tensor] = None,
    sr_bias: Optional[Tensor] = None,
    norm_weight: Optional[Tensor] = None,
    norm_bias: Optional[Tensor] = None,
    eps: float = 1e-6,
    scale: Optional[float] = None,
    residual: Optional[Tensor] = None,
    packed: Optional[Sequence[Tensor]] = None,
    backend: str = "auto",
) -> Tensor:
    """x: ``(B, H·W, C)`` (normalised) tokens of an H×W map. Returns ``(B, H·W, C)``:
    ``proj(attention(q(x), k, v)) (+ residual)`` with ``[k v] = kv(LayerNorm(conv_s(x)))``, the stride-s s×s conv
    ``sr_weight (C, C, s, s)`` and the LayerNorm (``norm_weight``, ``norm_bias``, ``eps``) over its ⌊H/s⌋·⌊W/s⌋
    tokens, or ``kv(x)`` without ``sr_weight``. ``q_weight`` and ``proj_weight`` are ``(C, C)``, ``kv_weight``
    ``(2C, C)`` (keys' rows, then values'); biases may be None; ``scale`` defaults to ``head_dim ** -0.5``.
    ``packed``: :func:`pack_layer_weights` of the weights, cached by the caller (packed per call otherwise).

    ``"cpu"``: one C++ call (fp32 compute; bf16 / fp16 through fp32 copies): the packed-weight GEMMs with bias and
    residual in their epilogues, ``sr_conv``'s tiles, the flash-style attention kernel and the LayerNorm row kernel,
    with no Python, dispatch or allocator round trip between them. On CUDA the reference composition stands in.
    """
    packed = check_sra_layer(
        "sra_layer", x, q_weight, q_bias, kv_weight, kv_bias, proj_weight, proj_bias, height, width, num_heads,
        sr_weight, sr_bias, norm_weight, norm_bias, residual, packed,
    )  # fmt: skip
    c = x.shape[2]
    scale = (c // num_heads) ** -0.5 if scale is None else float(scale)
    return OP(
        backend,
        x,
        q_weight,
        q_bias,
        kv_weight,
        kv_bias,
        proj_weight,
        proj_bias,
        sr_weight,
        sr_bias,
        norm_weight,
        norm_bias,
        residual,
        height,
        width,
        num_heads,
        scale,
        float(eps),
        packed,
    )
