"""Input contracts shared by the ops: every op validates in Python before any backend runs, so all backends see
the same valid input and bad input gets the same error whichever backend was asked for."""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch

from .packing import in_pairs, packed_shape


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def check_tokens(op: str, name: str, x) -> None:
    """``x`` is a floating ``(B, L, C)`` tensor."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"{op}: {name} must be (B, L, C) tokens, got {_shape(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got {x.dtype}")


def check_token_map(op: str, x, height: int, width: int) -> None:
    """``x`` is a floating ``(B, N, C)`` tensor with ``N == height * width``. Empty batches and C = 0 follow the
    reference (an empty result), except where the reference itself refuses them (a depthwise conv of 0 channels)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"{op}: x must be (B, N, C) tokens, got {_shape(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be floating point, got {x.dtype}")
    if height < 1 or width < 1 or x.shape[1] != height * width:
        raise ValueError(f"{op}: {x.shape[1]} tokens are not a {height}×{width} map")


def check_params(
    op: str, x: torch.Tensor, params: Mapping[str, Tuple[Optional[torch.Tensor], tuple]], context: str = ""
) -> None:
    """Each named parameter (None allowed) has its expected shape and ``x``'s dtype and device."""
    for name, (t, shape) in params.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{op}: {name} must be {tuple(shape)}{context}, got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(
                f"{op}: {name} must share x's dtype and device ({x.dtype}, {x.device}), got {t.dtype}, {t.device}"
            )


def describe(t) -> str:
    """``(2, 3) torch.float32`` for a tensor, the type name otherwise (for error messages)."""
    return f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__


def check_taps(op: str, name: str, index, weight, source: int, x: torch.Tensor) -> None:
    """Resampling taps (``upsample_argmax``, ``upsample_accumulate``): ``index (n, 2)`` int64 into the ``source``
    rows / columns of ``x``, ``weight (n, 2)`` float32, both on x's device."""
    if not isinstance(index, torch.Tensor) or index.ndim != 2 or index.shape[1] != 2 or index.dtype != torch.int64:
        raise ValueError(f"{op}: {name}_index must be (n, 2) int64 source taps, got {describe(index)}")
    if (
        not isinstance(weight, torch.Tensor)
        or tuple(weight.shape) != tuple(index.shape)
        or weight.dtype != torch.float32
    ):
        raise ValueError(
            f"{op}: {name}_weight must be {tuple(index.shape)} float32 like {name}_index, got {describe(weight)}"
        )
    for t in (index, weight):
        if t.device != x.device:
            raise ValueError(f"{op}: {name} taps must be on x's device {x.device}, got {t.device}")
    if index.numel() and not torch.compiler.is_compiling():
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= source:
            raise IndexError(f"{op}: {name}_index reads source {name}s [{lo}, {hi}], x has {source}")


def check_conv_params(op: str, x: torch.Tensor, weight: torch.Tensor, bias, packed) -> None:
    """The parameters of a k×k conv of ``x``'s tokens (``sr_conv``, ``token_conv``; checks.h's ``conv_params``):
    ``x`` has channels; weight ``(Co, Ci, k, k)``, bias ``(Co,)`` and packed (:func:`~pvtv2_fast.ops.pack_weight`'s
    shape, or :func:`~pvtv2_fast.ops.pack_weight_pairs`' for bf16 ``x`` with an even Ci) of its dtype and device.
    The caller has checked that ``weight`` is a square 4-D kernel."""
    if x.shape[2] == 0:  # PyTorch's conv2d answers 0 output channels, not Co channels of bias: refused
        raise ValueError(f"{op}: x has no channels (a conv of 0 input channels is refused)")
    co, ci, k, _ = weight.shape
    pairs = in_pairs(packed)
    check_params(
        op,
        x,
        {
            "weight": (weight, (co, x.shape[2], k, k)),
            "bias": (bias, (co,)),
            "packed": (packed, packed_shape(co, k * k * ci, pairs=pairs)),
        },
    )
    if pairs and (x.dtype != torch.bfloat16 or ci % 2):
        raise ValueError(
            f"{op}: a weight packed in pairs is for bf16 inputs with an even channel count, got x {x.dtype} "
            f"with {ci} channels"
        )
