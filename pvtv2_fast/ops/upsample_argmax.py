"""``upsample_argmax(x, row_index, row_weight, col_index, col_weight)``: separable 2-tap (bilinear) resampling of a
channels-last logits band fused with the argmax over labels — segmentation labels at full resolution without
ever holding full-resolution logits.

The resampling is given as data, two source taps and two weights per output row and per output column (e.g.
:class:`pvtv2_fast.streaming.LinearAxis`, which reproduces ``F.interpolate(..., mode="bilinear",
align_corners=False)``), so the kernels know nothing of a resize rule and resample any band of rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_taps, describe
from .registry import FUSED_DTYPES, define, register_native, triton_why_not

LABEL_DTYPES = {torch.uint8: 256, torch.int16: 2**15, torch.int32: 2**31, torch.int64: 2**63}


def resample_reference(
    x: Tensor, row_index: Tensor, row_weight: Tensor, col_index: Tensor, col_weight: Tensor
) -> Tensor:
    """``x (B, R_in, W_in, C)`` resampled by its taps to ``(B, R, W, C)`` in fp32 (differentiable): rows first (a
    gather of whole source rows), then columns — the reference arithmetic of both resampling ops."""
    xf = x.float()
    rw = row_weight.view(1, -1, 1, 1, 2)
    rows = xf.index_select(1, row_index[:, 0]) * rw[..., 0] + xf.index_select(1, row_index[:, 1]) * rw[..., 1]
    cw = col_weight.view(1, 1, -1, 1, 2)
    return rows.index_select(2, col_index[:, 0]) * cw[..., 0] + rows.index_select(2, col_index[:, 1]) * cw[..., 1]


def upsample_argmax_reference(
    x: Tensor, row_index: Tensor, row_weight: Tensor, col_index: Tensor, col_weight: Tensor, dtype: torch.dtype
) -> Tensor:
    """The PyTorch composition: :func:`resample_reference`, then the first index of the maximum over labels (NaN
    counts as the maximum, as in ``torch.argmax``)."""
    return resample_reference(x, row_index, row_weight, col_index, col_weight).argmax(-1).to(dtype)


@torch.library.custom_op("pvtv2_fast::upsample_argmax_triton", mutates_args=())
def upsample_argmax_triton(
    x: Tensor, row_index: Tensor, row_weight: Tensor, col_index: Tensor, col_weight: Tensor, dtype: torch.dtype
) -> Tensor:
    from ..kernels.upsample_argmax import upsample_argmax_fwd

    return upsample_argmax_fwd(x, row_index, row_weight, col_index, col_weight, dtype)


@upsample_argmax_triton.register_fake
def _(x, row_index, row_weight, col_index, col_weight, dtype):
    return x.new_empty((x.shape[0], row_index.shape[0], col_index.shape[0]), dtype=dtype)


OP = define("upsample_argmax", upsample_argmax_reference)
OP.register("triton", upsample_argmax_triton, triton_why_not)
# Labels are not differentiable: no backward to register.
register_native(OP, "upsample_argmax", 5, 1, devices=("cpu",), differentiable=False)


def upsample_argmax(
    x: Tensor,
    row_index: Tensor,
    row_weight: Tensor,
    col_index: Tensor,
    col_weight: Tensor,
    dtype: torch.dtype = torch.int64,
    backend: str = "auto",
) -> Tensor:
    """x: ``(B, R_in, W_in, L)`` channels-last band of logits (L labels); ``row_index``/``row_weight``: ``(R, 2)``
    int64 source rows of ``x`` and float32 weights of each output row; ``col_index``/``col_weight``: ``(W, 2)`` the
    same for output columns.

    Returns ``(B, R, W)`` labels of ``dtype`` (uint8 / int16 / int32 / int64): the first index of the maximum over
    L of ``Σ_a Σ_b row_weight[r, a] · col_weight[c, b] · x[:, row_index[r, a], col_index[c, b], :]``, computed in
    fp32 as rows first, then columns (the order of ``F.interpolate``'s separable CPU kernel). NaN counts as the
    maximum (``torch.argmax``); the Triton kernel treats NaN as +inf, so it agrees unless an inf precedes a NaN.
    Backends agree up to a different last-bit rounding, which can only change the label of a near-tie.
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"upsample_argmax: x must be a (B, R, W, L) channels-last band, got {describe(x)}")
    if x.dtype not in FUSED_DTYPES:
        raise TypeError(f"upsample_argmax: x must be float32, float16 or bfloat16, got {x.dtype}")
    if dtype not in LABEL_DTYPES:
        raise TypeError(f"upsample_argmax: dtype must be one of {list(LABEL_DTYPES)}, got {dtype}")
    if x.shape[3] < 1:
        raise ValueError("upsample_argmax: x has no labels (L = 0): the argmax of nothing is undefined")
    if x.shape[3] > LABEL_DTYPES[dtype]:
        raise ValueError(f"upsample_argmax: {x.shape[3]} labels do not fit in {dtype}")
    check_taps("upsample_argmax", "row", row_index, row_weight, x.shape[1], x)
    check_taps("upsample_argmax", "col", col_index, col_weight, x.shape[2], x)
    return OP(backend, x, row_index, row_weight, col_index, col_weight, dtype)
