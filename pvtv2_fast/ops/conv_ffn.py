"""``conv_ffn(x, ...)``: PVTv2's whole convolutional FFN, fc1 → (ReLU) → depthwise 3×3 + bias → GELU → fc2."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _ext
from ._dispatch import check_token_map, native_unsupported_reason, register_recompute_autograd
from .dwconv_gelu import dwconv_gelu, dwconv_gelu_reference


def _check(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], dw_weight: Tensor, dw_bias: Optional[Tensor],
           fc2_weight: Tensor, fc2_bias: Optional[Tensor], height: int, width: int) -> None:
    check_token_map("conv_ffn", x, height, width)
    c_in, hidden = x.shape[2], fc1_weight.shape[0]
    expected = {"fc1_weight": (fc1_weight, (hidden, c_in)), "fc1_bias": (fc1_bias, (hidden,)),
                "dw_weight": (dw_weight, (hidden, 1, 3, 3)), "dw_bias": (dw_bias, (hidden,)),
                "fc2_weight": (fc2_weight, (fc2_weight.shape[0], hidden)), "fc2_bias": (fc2_bias, (fc2_weight.shape[0],))}
    for name, (t, shape) in expected.items():
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"conv_ffn: {name} must be {shape} for {c_in} input and {hidden} hidden channels, "
                             f"got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"conv_ffn: {name} must share x's dtype and device ({x.dtype}, {x.device}), "
                             f"got {t.dtype}, {t.device}")


def conv_ffn_reference(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], dw_weight: Tensor,
                       dw_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor], height: int,
                       width: int, relu_input: bool) -> Tensor:
    hidden = F.linear(x, fc1_weight, fc1_bias)
    hidden = dwconv_gelu_reference(hidden, dw_weight, dw_bias, height, width, relu_input)
    return F.linear(hidden, fc2_weight, fc2_bias)


if _ext.available():
    register_recompute_autograd("pvtv2_fast_C::conv_ffn", conv_ffn_reference, 7, 3)


def conv_ffn(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], dw_weight: Tensor, dw_bias: Optional[Tensor],
             fc2_weight: Tensor, fc2_bias: Optional[Tensor], height: int, width: int, relu_input: bool = False,
             backend: str = "auto") -> Tensor:
    """x: ``(B, N, C_in)`` tokens of an H×W map; fc1 ``(hidden, C_in)``, dwconv ``(hidden, 1, 3, 3)``,
    fc2 ``(C_out, hidden)`` weights with optional biases. Returns ``(B, N, C_out)``:
    ``fc2(GELU(dwconv3x3(ReLU?(fc1(x)))))`` (zero padding 1, exact erf GELU).

    On CPU tensors ("auto" or "cpu") one C++ kernel streams bands of rows through the cache, so the widened
    ``(B, N, hidden)`` state is never materialised. Elsewhere ("auto", "triton", "cuda") fc1 and fc2 are PyTorch
    linears around :func:`dwconv_gelu` with the same ``backend`` (which picks, and reports, its own kernel).
    """
    _check(x, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias, height, width)
    if backend == "cpu" or (backend == "auto" and x.device.type == "cpu"):
        reason = native_unsupported_reason("conv_ffn", "cpu", (x,))
        if reason is None:
            return torch.ops.pvtv2_fast_C.conv_ffn(x, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias,
                                                   height, width, relu_input)
        if backend == "cpu":
            raise NotImplementedError(f"conv_ffn: backend='cpu' cannot run this input: {reason}")
    if backend == "torch":
        return conv_ffn_reference(x, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias, height, width,
                                  relu_input)
    hidden = F.linear(x, fc1_weight, fc1_bias)
    hidden = dwconv_gelu(hidden, dw_weight, dw_bias, height, width, relu_input=relu_input, backend=backend)
    return F.linear(hidden, fc2_weight, fc2_bias)
