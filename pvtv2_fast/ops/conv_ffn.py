"""``conv_ffn(x, ...)``: PVTv2's whole convolutional FFN, fc1 → (ReLU) → depthwise 3×3 + bias → GELU → fc2."""

from __future__ import annotations

from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor

from .checks import check_params, check_token_map
from .dwconv_gelu import OP as DWCONV_GELU
from .dwconv_gelu import dwconv_gelu_reference
from .packing import packed_shape
from .registry import define, register_native


def _banded(
    ffn: Callable, x: Tensor, height: int, width: int, hidden: int, c_out: int, max_hidden_bytes: Optional[int]
) -> Tensor:
    """Run ``ffn(x_band, band_height, width)`` on bands of rows so that no band's widened ``(B, rows·W, hidden)``
    state exceeds ``max_hidden_bytes`` (None: the whole map at once). Each band carries a one-row halo above and
    below for the 3×3 conv, so the result is the same: zero padding still happens at the image border only."""
    row_bytes = x.shape[0] * width * hidden * x.element_size()
    if max_hidden_bytes is None or row_bytes * (height + 2) <= max_hidden_bytes:
        return ffn(x, height, width)
    band = max(1, max_hidden_bytes // row_bytes - 2)
    out = x.new_empty(x.shape[0], height * width, c_out)
    for r0 in range(0, height, band):
        r1 = min(height, r0 + band)
        a0, a1 = max(0, r0 - 1), min(height, r1 + 1)  # the band plus its halo rows
        band_out = ffn(x[:, a0 * width : a1 * width], a1 - a0, width)
        out[:, r0 * width : r1 * width] = band_out[:, (r0 - a0) * width : (r1 - a0) * width]
    return out


def _composition(dwconv_backend: str) -> Callable:
    """fc1 → :func:`dwconv_gelu` on ``dwconv_backend`` → fc2, in bands of rows when asked."""

    def ffn(
        x,
        fc1_weight,
        fc1_bias,
        dw_weight,
        dw_bias,
        fc2_weight,
        fc2_bias,
        height,
        width,
        relu_input,
        fc1_packed=None,
        fc2_packed=None,
        max_hidden_bytes=None,
    ):
        def one_band(xb: Tensor, h: int, w: int) -> Tensor:
            hidden = F.linear(xb, fc1_weight, fc1_bias)
            if dwconv_backend == "torch":
                hidden = dwconv_gelu_reference(hidden, dw_weight, dw_bias, h, w, relu_input)
            else:
                hidden = DWCONV_GELU.backends[dwconv_backend].impl(hidden, dw_weight, dw_bias, h, w, relu_input)
            return F.linear(hidden, fc2_weight, fc2_bias)

        return _banded(one_band, x, height, width, fc1_weight.shape[0], fc2_weight.shape[0], max_hidden_bytes)

    return ffn


def conv_ffn_reference(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    dw_weight: Tensor,
    dw_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    height: int,
    width: int,
    relu_input: bool,
    fc1_packed: Optional[Tensor] = None,
    fc2_packed: Optional[Tensor] = None,
    max_hidden_bytes: Optional[int] = None,
) -> Tensor:
    """The PyTorch composition (transformers' and timm's math), banded when ``max_hidden_bytes`` is given; the packed
    weights are not used."""
    return _composition("torch")(
        x,
        fc1_weight,
        fc1_bias,
        dw_weight,
        dw_bias,
        fc2_weight,
        fc2_bias,
        height,
        width,
        relu_input,
        max_hidden_bytes=max_hidden_bytes,
    )


OP = define("conv_ffn", conv_ffn_reference)
# The C++ CPU kernel streams bands sized to the cache itself, or runs small hidden states (<= 16 MB, in reused
# scratch) whole-map, so the widened state never exceeds that whatever the budget: it does not take max_hidden_bytes.
# The packed weights are not derived per call (packing costs a pass over both weights, more than a small map's FFN):
# without them the kernel's GEMMs run on MKL's sgemm.
register_native(OP, "conv_ffn", 7, 5, devices=("cpu",), op_only_args=1)
# Elsewhere the FFN is fc1 and fc2 in PyTorch around the fused dwconv+GELU of the same backend.
for _backend in ("triton", "cuda"):
    OP.register(_backend, _composition(_backend), lambda args, _b=_backend: DWCONV_GELU.why_not(_b, args))


def check_conv_ffn(
    op: str,
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    dw_weight: Tensor,
    dw_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    height: int,
    width: int,
    relu_input: bool,
    fc1_packed: Optional[Tensor],
    fc2_packed: Optional[Tensor],
    max_hidden_bytes: Optional[int],
) -> None:
    """:func:`conv_ffn`'s argument checks (errors name ``op``)."""
    check_token_map(op, x, height, width)
    c_in, hidden, c_out = x.shape[2], fc1_weight.shape[0], fc2_weight.shape[0]
    check_params(
        op,
        x,
        {
            "fc1_weight": (fc1_weight, (hidden, c_in)),
            "fc1_bias": (fc1_bias, (hidden,)),
            "dw_weight": (dw_weight, (hidden, 1, 3, 3)),
            "dw_bias": (dw_bias, (hidden,)),
            "fc2_weight": (fc2_weight, (c_out, hidden)),
            "fc2_bias": (fc2_bias, (c_out,)),
            "fc1_packed": (fc1_packed, packed_shape(hidden, c_in)),
            "fc2_packed": (fc2_packed, packed_shape(c_out, hidden)),
        },
        f" for {c_in} input and {hidden} hidden channels",
    )
    if hidden == 0:
        raise ValueError(f"{op}: a depthwise conv of no channels (hidden = 0) is an error, as in F.conv2d")
    if not isinstance(relu_input, bool):
        raise TypeError(f"{op}: relu_input must be a bool, got {relu_input!r}")
    if (fc1_packed is None) != (fc2_packed is None):
        raise ValueError(f"{op}: pass both fc1_packed and fc2_packed (ops.pack_weight of each weight) or neither")
    if max_hidden_bytes is not None and max_hidden_bytes < 1:
        raise ValueError(f"{op}: max_hidden_bytes must be positive or None, got {max_hidden_bytes}")


def conv_ffn(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    dw_weight: Tensor,
    dw_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    height: int,
    width: int,
    relu_input: bool = False,
    backend: str = "auto",
    max_hidden_bytes: Optional[int] = None,
    fc1_packed: Optional[Tensor] = None,
    fc2_packed: Optional[Tensor] = None,
) -> Tensor:
    """x: ``(B, N, C_in)`` tokens of an H×W map; fc1 ``(hidden, C_in)``, dwconv ``(hidden, 1, 3, 3)``,
    fc2 ``(C_out, hidden)`` weights with optional biases. Returns ``(B, N, C_out)``:
    ``fc2(GELU(dwconv3x3(ReLU?(fc1(x)))))`` (zero padding 1, exact erf GELU).

    ``"cpu"``: one C++ kernel streams bands of rows through the cache, so the widened ``(B, N, hidden)`` state is
    never materialised. ``"torch"`` / ``"triton"`` / ``"cuda"``: fc1 and fc2 are PyTorch linears around the
    dwconv+GELU of that backend; ``max_hidden_bytes`` bounds their widened state by running bands of rows.
    ``fc1_packed`` / ``fc2_packed``: :func:`~pvtv2_fast.ops.pack_weight` of fc1 / fc2's weights (both or neither),
    cached by the caller (fast mode's module does): the CPU kernel's fp32 bands run their GEMMs on them, on the
    packed-weight GEMM, rather than on MKL's sgemm; its whole-map GEMMs do under at most 1 MB of fc1 + fc2 weights or
    over at most 196 tokens, and stay on MKL's threads otherwise (csrc/cpu/conv_ffn.cpp).
    """
    check_conv_ffn(
        "conv_ffn", x, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias, height, width, relu_input,
        fc1_packed, fc2_packed, max_hidden_bytes,
    )  # fmt: skip
    return OP(
        backend,
        x,
        fc1_weight,
        fc1_bias,
        dw_weight,
        dw_bias,
        fc2_weight,
        fc2_bias,
        height,
        width,
        relu_input,
        fc1_packed,
        fc2_packed,
        max_hidden_bytes,
    )
