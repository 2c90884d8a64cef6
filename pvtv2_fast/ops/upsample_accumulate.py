"""``upsample_accumulate(xs, taps, bias, relu)``: several channels-last maps resampled (separable 2-tap, e.g.
bilinear) to one size and summed, plus a bias and an optional ReLU — the folded Segformer decode head's
accumulation (:class:`pvtv2_fast.modules.decode_head.FoldedDecodeHead`) without a resampled map per stage."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .checks import check_params, check_taps
from .registry import FUSED_DTYPES, define, register_native, triton_why_not
from .upsample_argmax import resample_reference

Taps = Tuple[Tensor, Tensor, Tensor, Tensor]  # (row_index, row_weight, col_index, col_weight)


def upsample_accumulate_reference(
    xs: List[Tensor],
    row_index: List[Tensor],
    row_weight: List[Tensor],
    col_index: List[Tensor],
    col_weight: List[Tensor],
    bias: Optional[Tensor],
    relu: bool,
) -> Tensor:
    """The PyTorch composition, summed in fp32 in the order of ``xs``: per map :func:`resample_reference`, then
    the bias, then ReLU; differentiable."""
    acc = None
    for taps in zip(xs, row_index, row_weight, col_index, col_weight):
        band = resample_reference(*taps)
        acc = band if acc is None else acc + band
    if bias is not None:
        acc = acc + bias.float()
    if relu:
        acc = torch.relu(acc)
    return acc.to(xs[0].dtype)


@torch.library.custom_op("pvtv2_fast::upsample_accumulate_triton", mutates_args=())
def upsample_accumulate_triton(
    xs: List[Tensor],
    row_index: List[Tensor],
    row_weight: List[Tensor],
    col_index: List[Tensor],
    col_weight: List[Tensor],
    bias: Optional[Tensor],
    relu: bool,
) -> Tensor:
    from ..kernels.upsample_accumulate import upsample_accumulate_fwd

    return upsample_accumulate_fwd(xs, row_index, row_weight, col_index, col_weight, bias, relu)


@upsample_accumulate_triton.register_fake
def _(xs, row_index, row_weight, col_index, col_weight, bias, relu):
    x = xs[0]
    return x.new_empty((x.shape[0], row_index[0].shape[0], col_index[0].shape[0], x.shape[3]))


OP = define("upsample_accumulate", upsample_accumulate_reference)
OP.register("triton", upsample_accumulate_triton, triton_why_not)
# Forward-only kernels: the folded head sends calls that need gradients to the reference (see below), so no
# backward is registered for lists of tensors.
register_native(OP, "upsample_accumulate", 5, 2, devices=("cpu",), differentiable=False)


def upsample_accumulate(
    xs: Sequence[Tensor],
    taps: Sequence[Taps],
    bias: Optional[Tensor] = None,
    relu: bool = False,
    backend: str = "auto",
) -> Tensor:
    """``xs``: maps ``(B, R_i, W_i, C)`` channels last, one dtype and device; ``taps[i]``: ``(row_index,
    row_weight, col_index, col_weight)`` of map ``i`` as in :func:`~pvtv2_fast.ops.upsample_argmax` (``(R, 2)`` and
    ``(W, 2)``, the same R and W for every map); ``bias``: ``(C,)`` or None.

    Returns ``(B, R, W, C)`` in the maps' dtype: ``ReLU?(Σ_i resample_i(xs[i]) + bias)``, accumulated in fp32.
    Calls that need gradients (grad mode on and an input that requires grad) run the reference composition,
    which autograd differentiates; the fused kernels are forward-only.
    """
    xs = list(xs)
    if not xs or len(taps) != len(xs):
        raise ValueError(
            f"upsample_accumulate: one (row_index, row_weight, col_index, col_weight) per map, got "
            f"{len(xs)} maps and {len(taps)} taps"
        )
    lead = xs[0]
    for i, x in enumerate(xs):
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise ValueError(f"upsample_accumulate: xs[{i}] must be a (B, R, W, C) channels-last map")
        if x.dtype not in FUSED_DTYPES:
            raise TypeError(f"upsample_accumulate: maps must be float32, float16 or bfloat16, got {x.dtype}")
        if (
            x.dtype != lead.dtype
            or x.device != lead.device
            or x.shape[0] != lead.shape[0]
            or x.shape[3] != lead.shape[3]
        ):
            raise ValueError(
                f"upsample_accumulate: xs[{i}] {tuple(x.shape)} {x.dtype} {x.device} must share xs[0]'s batch, "
                f"channels, dtype and device ({tuple(lead.shape)} {lead.dtype} {lead.device})"
            )
        ri, rw, ci, cw = taps[i]
        check_taps("upsample_accumulate", "row", ri, rw, x.shape[1], x)
        check_taps("upsample_accumulate", "col", ci, cw, x.shape[2], x)
        if ri.shape[0] != taps[0][0].shape[0] or ci.shape[0] != taps[0][2].shape[0]:
            raise ValueError("upsample_accumulate: every map must resample to the same rows and columns")
    check_params("upsample_accumulate", lead, {"bias": (bias, (lead.shape[3],))}, f" for {lead.shape[3]} channels")
    args = (xs, *[[t[k] for t in taps] for k in range(4)], bias, bool(relu))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in xs + ([bias] if bias is not None else []))
    return OP("torch" if needs_grad else backend, *args)
