"""The raw C++ ops (``torch.ops.pvtv2_fast_C.*``) validate their own arguments (csrc/include/pvtv2/checks.h).

They are public, so they must not trust their callers: every bad input class below raises a clear error from the
op itself, on CPU tensors (the CPU kernels) and on meta tensors (the Meta kernels, which share the checks); sizes whose
product wraps around int64 are rejected before any pointer is formed; C = 0 follows the PyTorch reference; the
adaptive-pool bins are exact where i·H passes 2^31; environment variables are parsed strictly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from op_cases import DTYPE_IDS, DTYPES, close

from pvtv2_fast import _ext, ops
from pvtv2_fast.ops.registry import NATIVE_OPS

pytestmark = pytest.mark.skipif(os.environ.get("PVTV2_FAST_NO_EXT") == "1", reason="extension build turned off")
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _ext.has_kernel("dwconv_gelu", "cuda")),
    reason="needs a GPU and the extension built with CUDA",
)


@pytest.fixture(scope="module", autouse=True)
def _extension():
    assert _ext.available(), _ext.unavailable_reason()


def _op(name):
    return getattr(torch.ops.pvtv2_fast_C, name)


# ------------------------------------------------------------------------------------------------ bad input
# Each case builds a call from (dev, other): dev is the device of the call's tensors ("cpu" runs the CPU kernel,
# "meta" the Meta kernel), other a different device for the "wrong device" cases. Sizes are tiny: a case that forms
# a product of sizes past int64 (or that would index past the tensor) must fail in the checks, not in memory.


def _dw(dev, c=4, **kw):
    """dwconv_gelu arguments on a 3×3 map: (x, weight, bias, height, width, relu_input)."""
    a = {
        "x": torch.randn(2, 9, c, device=dev),
        "weight": torch.randn(c, 1, 3, 3, device=dev),
        "bias": torch.randn(c, device=dev),
        "height": 3,
        "width": 3,
        "relu_input": False,
    }
    a.update(kw)
    return "dwconv_gelu", tuple(a.values())


def _pool(dev, **kw):
    """linear_sra_pool arguments on a 3×3 map: (x, height, width, pool_size)."""
    a = {"x": torch.randn(2, 9, 4, device=dev), "height": 3, "width": 3, "pool_size": 7}
    a.update(kw)
    return "linear_sra_pool", tuple(a.values())


def _ffn(dev, c_in=4, hidden=8, c_out=4, **kw):
    """conv_ffn arguments on a 3×3 map."""
    a = {
        "x": torch.randn(2, 9, c_in, device=dev),
        "fc1_weight": torch.randn(hidden, c_in, device=dev),
        "fc1_bias": torch.randn(hidden, device=dev),
        "dw_weight": torch.randn(hidden, 1, 3, 3, device=dev),
        "dw_bias": torch.randn(hidden, device=dev),
        "fc2_weight": torch.randn(c_out, hidden, device=dev),
        "fc2_bias": torch.randn(c_out, device=dev),
        "height": 3,
        "width": 3,
        "relu_input": False,
    }
    a.update(kw)
    return "conv_ffn", tuple(a.values())


def _taps(dev, rows=((0, 1), (1, 1)), weights=None):
    index = torch.tensor(rows, device=dev)
    weight = torch.full(index.shape, 0.5, device=dev) if weights is None else torch.tensor(weights, device=dev)
    return index, weight


def _ua(dev, **kw):
    """upsample_argmax arguments: a (1, 2, 3, 5) band → 2 × 2 labels."""
    (ri, rw), (ci, cw) = _taps(dev), _taps(dev, ((0, 1), (2, 2)))
    a = {"x": torch.randn(1, 2, 3, 5, device=dev), "row_index": ri, "row_weight": rw, "col_index": ci}
    a.update({"col_weight": cw, "dtype": torch.uint8})
    a.update(kw)
    return "upsample_argmax", tuple(a.values())


def _uacc(dev, **kw):
    """upsample_accumulate arguments: two (1, 2, 3, 5) maps → one (1, 2, 2, 5) sum."""
    (ri, rw), (ci, cw) = _taps(dev), _taps(dev, ((0, 1), (2, 2)))
    a = {"xs": [torch.randn(1, 2, 3, 5, device=dev)] * 2, "row_index": [ri] * 2, "row_weight": [rw] * 2}
    a.update({"col_index": [ci] * 2, "col_weight": [cw] * 2, "bias": torch.randn(5, device=dev), "relu": True})
    a.update(kw)
    return "upsample_accumulate", tuple(a.values())


def _ln(dev, c=5, **kw):
    """layer_norm arguments: (x, weight, bias, eps)."""
    a = {"x": torch.randn(2, 9, c, device=dev), "weight": torch.randn(c, device=dev), "bias": None, "eps": 1e-6}
    a.update(kw)
    return "layer_norm", tuple(a.values())


def _attn(dev, m=4, **kw):
    """sra_attention arguments: (q, k, v, num_heads, scale), k and v views of one (2, m, 16) projection."""
    kv = torch.randn(2, m, 16, device=dev)
    a = {"q": torch.randn(2, 9, 8, device=dev), "k": kv[..., :8], "v": kv[..., 8:], "num_heads": 2, "scale": 0.5}
    a.update(kw)
    return "sra_attention", tuple(a.values())


def _src(dev, s=2, **kw):
    """sr_conv arguments: (x, weight, bias, height, width, packed) for a 5×9 map of 8 channels, 12 out channels (the
    packed weight's shape, (1, s·s·8, 64), is checked last)."""
    a = {"x": torch.randn(2, 45, 8, device=dev), "weight": torch.randn(12, 8, s, s, device=dev), "bias": None}
    a.update({"height": 5, "width": 9, "packed": torch.zeros(1, s * s * 8, 64, device=dev)})
    a.update(kw)
    return "sr_conv", tuple(a.values())


def _tc(dev, k=3, **kw):
    """token_conv arguments: (x, weight, bias, height, width, stride, padding, packed) for a 5×9 map of 8 channels,
    12 out channels, stride 2, padding 1 (the packed weight's shape, (1, k·k·8, 64), is checked last)."""
    a = {"x": torch.randn(2, 45, 8, device=dev), "weight": torch.randn(12, 8, k, k, device=dev), "bias": None}
    a.update({"height": 5, "width": 9, "stride": 2, "padding": 1, "packed": torch.zeros(1, k * k * 8, 64, device=dev)})
    a.update(kw)
    return "token_conv", tuple(a.values())


def _sl(dev, s=2, **kw):
    """sra_layer arguments for a 4×5 map of 8 channels, 2 heads, sr s (1: no reduction); packed weights last."""
    r = lambda *shape: torch.randn(*shape, device=dev)  # noqa: E731
    a = {"x": r(2, 20, 8), "q_weight": r(8, 8), "q_bias": r(8), "kv_weight": r(16, 8), "kv_bias": r(16)}
    a.update({"proj_weight": r(8, 8), "proj_bias": r(8)})
    a.update({"sr_weight": r(8, 8, s, s), "sr_bias": r(8), "norm_weight": r(8), "norm_bias": r(8)} if s > 1 else {})
    a.update({"sr_weight": None, "sr_bias": None, "norm_weight": None, "norm_bias": None} if s == 1 else {})
    a.update({"residual": None, "height": 4, "width": 5, "num_heads": 2, "scale": 0.5, "eps": 1e-6})
    a["packed"] = [torch.zeros(1, 8, 64, device=dev)] * 3 + (
        [torch.zeros(1, s * s * 8, 64, device=dev)] if s > 1 else []
    )
    a.update(kw)
    return "sra_layer", tuple(a.values())


def _blk(dev, attention=None, ffn=None, **kw):
    """pvt_block arguments for a 4×5 map of 8 channels, 2 heads, sr 2, FFN width 16 (sra_layer's, then the FFN's);
    ``attention`` / ``ffn``: {index: tensor} replacing entries of those lists."""
    _, sl = _sl(dev)
    r = lambda *shape: torch.randn(*shape, device=dev)  # noqa: E731
    att = list(sl[1:11])
    f = [r(16, 8), r(16), r(16, 1, 3, 3), r(16), r(8, 16), r(8)]
    for i, t in (attention or {}).items():
        att[i] = t
    for i, t in (ffn or {}).items():
        f[i] = t
    a = {"x": sl[0], "norm1_weight": r(8), "norm1_bias": r(8), "attention": att, "norm2_weight": r(8)}
    a.update({"norm2_bias": r(8), "ffn": f, "height": 4, "width": 5, "num_heads": 2, "scale": 0.5})
    a.update({"eps": [1e-6, 1e-6, 1e-6], "relu_input": False})
    a["packed"] = list(sl[-1]) + [torch.zeros(1, 8, 64, device=dev), torch.zeros(1, 16, 64, device=dev)]
    a.update(kw)
    return "pvt_block", tuple(a.values())


def _x(dev, *shape, dtype=torch.float32):
    return torch.randn(*shape, device=dev).to(dtype)


E = RuntimeError  # every check raises c10::Error
BAD_INPUT = [
    # ---- dwconv_gelu
    ("dw-x-2d", lambda d, o: _dw(d, x=_x(d, 9, 4)), E, "dwconv_gelu: x must be (B, N, C) tokens, got (9, 4)"),
    (
        "dw-x-float64",
        lambda d, o: _dw(d, x=_x(d, 2, 9, 4, dtype=torch.float64)),
        E,
        "supports float32, bfloat16 and float16, got Double for x",
    ),
    ("dw-x-int", lambda d, o: _dw(d, x=torch.ones(2, 9, 4, dtype=torch.int32, device=d)), E, "got Int for x"),
    ("dw-tokens-mismatch", lambda d, o: _dw(d, x=_x(d, 2, 10, 4)), E, "10 tokens are not a 3x3 map"),
    ("dw-height-0", lambda d, o: _dw(d, height=0, width=9), E, "height and width must be >= 1, got 0x9"),
    ("dw-negative-size", lambda d, o: _dw(d, height=-3, width=-3), E, "height and width must be >= 1, got -3x-3"),
    # 2^32·2^32 wraps to 0 = N: the old check passed and the kernel indexed 2^32 rows (SIGSEGV)
    (
        "dw-hw-wraps-to-0",
        lambda d, o: _dw(d, x=torch.empty(1, 0, 4, device=d), height=2**32, width=2**32),
        E,
        "0 tokens are not a 4294967296x4294967296 map",
    ),
    # 4·(2^62 + 1) wraps to 4 = N
    (
        "dw-hw-wraps-to-n",
        lambda d, o: _dw(d, x=_x(d, 1, 4, 4), height=4, width=2**62 + 1),
        E,
        "4 tokens are not a 4x4611686018427387905 map",
    ),
    ("dw-huge-width", lambda d, o: _dw(d, x=_x(d, 1, 4, 4), height=1, width=2**63 - 1), E, "4 tokens are not a"),
    ("dw-no-channels", lambda d, o: _dw(d, c=0), E, "dwconv_gelu: the channel count C of x is 0"),
    ("dw-weight-shape", lambda d, o: _dw(d, weight=_x(d, 4, 3, 3)), E, "weight must be (4, 1, 3, 3), got (4, 3, 3)"),
    ("dw-weight-channels", lambda d, o: _dw(d, weight=_x(d, 5, 1, 3, 3)), E, "weight must be (4, 1, 3, 3)"),
    ("dw-bias-shape", lambda d, o: _dw(d, bias=_x(d, 5)), E, "dwconv_gelu: bias must be (4,), got (5,)"),
    (
        "dw-weight-dtype",
        lambda d, o: _dw(d, weight=_x(d, 4, 1, 3, 3, dtype=torch.float64)),
        E,
        "weight must have x's dtype (Float), got Double",
    ),
    ("dw-bias-dtype", lambda d, o: _dw(d, bias=_x(d, 4, dtype=torch.bfloat16)), E, "bias must have x's dtype"),
    ("dw-weight-device", lambda d, o: _dw(d, weight=_x(o, 4, 1, 3, 3)), E, "weight must be on x's device"),
    ("dw-bias-device", lambda d, o: _dw(d, bias=_x(o, 4)), E, "bias must be on x's device"),
    (
        "dw-relu-str",
        lambda d, o: _dw(d, relu_input="no"),
        E,
        "Expected a value of type 'bool' for argument 'relu_input'",
    ),
    ("dw-relu-str-false", lambda d, o: _dw(d, relu_input="False"), E, "Expected a value of type 'bool'"),
    ("dw-height-float", lambda d, o: _dw(d, height=3.0), E, "Expected a value of type 'int' for argument 'height'"),
    # ---- linear_sra_pool
    ("pool-x-2d", lambda d, o: _pool(d, x=_x(d, 9, 4)), E, "linear_sra_pool: x must be (B, N, C) tokens"),
    (
        "pool-x-float64",
        lambda d, o: _pool(d, x=_x(d, 2, 9, 4, dtype=torch.float64)),
        E,
        "supports float32, bfloat16 and float16, got Double",
    ),
    ("pool-tokens-mismatch", lambda d, o: _pool(d, height=2, width=4), E, "9 tokens are not a 2x4 map"),
    (
        "pool-hw-wraps-to-0",
        lambda d, o: _pool(d, x=torch.empty(1, 0, 4, device=d), height=2**32, width=2**32),
        E,
        "0 tokens are not a 4294967296x4294967296 map",
    ),
    ("pool-size-0", lambda d, o: _pool(d, pool_size=0), E, "pool_size must be >= 1, got 0"),
    ("pool-size-negative", lambda d, o: _pool(d, pool_size=-7), E, "pool_size must be >= 1, got -7"),
    # P² = 2^64 wraps to 0: the old kernel returned an empty (B, 0, C) "result"
    ("pool-size-square-wraps", lambda d, o: _pool(d, pool_size=2**32), E, "pool_size^2 = 4294967296 x 4294967296"),
    ("pool-batch-cells-overflow", lambda d, o: _pool(d, pool_size=2**31), E, "B x pool_size^2"),
    ("pool-output-overflows", lambda d, o: _pool(d, x=_x(d, 1, 9, 4), pool_size=2**31), E, "output elements"),
    # bins form P·H: 2^40 rows of an empty batch and P = 2^24 pass 2^63 (no memory: B = 0)
    (
        "pool-bins-overflow",
        lambda d, o: _pool(d, x=torch.empty(0, 2**40, 1, device=d), height=2**40, width=1, pool_size=2**24),
        E,
        "pool_size x max(height, width)",
    ),
    ("pool-height-str", lambda d, o: _pool(d, height="3"), E, "Expected a value of type 'int' for argument 'height'"),
    # ---- conv_ffn
    (
        "ffn-x-float64",
        lambda d, o: _ffn(d, x=_x(d, 2, 9, 4, dtype=torch.float64)),
        E,
        "conv_ffn: the kernel supports float32, bfloat16 and float16, got Double",
    ),
    ("ffn-tokens-mismatch", lambda d, o: _ffn(d, height=9, width=9), E, "9 tokens are not a 9x9 map"),
    (
        "ffn-hw-wraps-to-n",
        lambda d, o: _ffn(d, x=_x(d, 1, 4, 4), height=4, width=2**62 + 1),
        E,
        "4 tokens are not a 4x4611686018427387905 map",
    ),
    ("ffn-fc1-1d", lambda d, o: _ffn(d, fc1_weight=_x(d, 8)), E, "fc1_weight must have 2 dimensions, got (8,)"),
    ("ffn-fc1-in", lambda d, o: _ffn(d, fc1_weight=_x(d, 8, 5)), E, "fc1_weight must be (8, 4), got (8, 5)"),
    ("ffn-no-hidden", lambda d, o: _ffn(d, hidden=0), E, "the hidden width fc1_weight.size(0) is 0"),
    ("ffn-fc1-bias", lambda d, o: _ffn(d, fc1_bias=_x(d, 7)), E, "fc1_bias must be (8,), got (7,)"),
    ("ffn-dw-weight", lambda d, o: _ffn(d, dw_weight=_x(d, 7, 1, 3, 3)), E, "dw_weight must be (8, 1, 3, 3)"),
    ("ffn-dw-bias", lambda d, o: _ffn(d, dw_bias=_x(d, 8, 1)), E, "dw_bias must be (8,), got (8, 1)"),
    ("ffn-fc2-3d", lambda d, o: _ffn(d, fc2_weight=_x(d, 4, 8, 1)), E, "fc2_weight must have 2 dimensions"),
    ("ffn-fc2-hidden", lambda d, o: _ffn(d, fc2_weight=_x(d, 4, 7)), E, "fc2_weight must be (4, 8), got (4, 7)"),
    ("ffn-fc2-bias", lambda d, o: _ffn(d, fc2_bias=_x(d, 5)), E, "fc2_bias must be (4,), got (5,)"),
    ("ffn-fc1-device", lambda d, o: _ffn(d, fc1_weight=_x(o, 8, 4)), E, "fc1_weight must be on x's device"),
    ("ffn-fc2-bias-device", lambda d, o: _ffn(d, fc2_bias=_x(o, 4)), E, "fc2_bias must be on x's device"),
    (
        "ffn-dw-dtype",
        lambda d, o: _ffn(d, dw_weight=_x(d, 8, 1, 3, 3, dtype=torch.float16)),
        E,
        "dw_weight must have x's dtype (Float), got Half",
    ),
    ("ffn-relu-str", lambda d, o: _ffn(d, relu_input="yes"), E, "Expected a value of type 'bool'"),
    # ---- upsample_argmax
    ("ua-x-3d", lambda d, o: _ua(d, x=_x(d, 2, 3, 5)), E, "upsample_argmax: x must be a (B, R, W, L) channels-last"),
    ("ua-x-float64", lambda d, o: _ua(d, x=_x(d, 1, 2, 3, 5, dtype=torch.float64)), E, "got Double for x"),
    ("ua-no-labels", lambda d, o: _ua(d, x=_x(d, 1, 2, 3, 0)), E, "x has no labels (L = 0)"),
    ("ua-label-dtype", lambda d, o: _ua(d, dtype=torch.float32), E, "labels must be uint8, int16, int32 or int64"),
    ("ua-too-many-labels", lambda d, o: _ua(d, x=_x(d, 1, 2, 3, 257)), E, "257 labels do not fit in Byte"),
    (
        "ua-index-shape",
        lambda d, o: _ua(d, row_index=torch.zeros(2, 3, dtype=torch.long, device=d)),
        E,
        "row_index must be (n, 2) int64",
    ),
    (
        "ua-index-dtype",
        lambda d, o: _ua(d, col_index=torch.zeros(2, 2, dtype=torch.int32, device=d)),
        E,
        "col_index must be (n, 2) int64",
    ),
    (
        "ua-weight-dtype",
        lambda d, o: _ua(d, row_weight=_x(d, 2, 2, dtype=torch.float64)),
        E,
        "row_weight must be (2, 2) float32 like row_index",
    ),
    ("ua-weight-shape", lambda d, o: _ua(d, col_weight=_x(d, 3, 2)), E, "col_weight must be (2, 2) float32"),
    (
        "ua-index-device",
        lambda d, o: _ua(d, row_index=torch.zeros(2, 2, dtype=torch.long, device=o)),
        E,
        "row taps must be on x's device",
    ),
    # ---- upsample_accumulate
    (
        "acc-no-maps",
        lambda d, o: _uacc(d, xs=[], row_index=[], row_weight=[], col_index=[], col_weight=[]),
        E,
        "upsample_accumulate: needs at least one map",
    ),
    (
        "acc-tap-count",
        lambda d, o: _uacc(d, col_weight=_uacc(d)[1][4][:1]),
        E,
        "one row_index, row_weight, col_index and col_weight per map (2 maps)",
    ),
    ("acc-x-3d", lambda d, o: _uacc(d, xs=[_x(d, 2, 3, 5)] * 2), E, "xs[0] must be a (B, R, W, C) channels-last map"),
    ("acc-x-float64", lambda d, o: _uacc(d, xs=[_x(d, 1, 2, 3, 5, dtype=torch.float64)] * 2), E, "got Double for xs"),
    (
        "acc-mixed-dtype",
        lambda d, o: _uacc(d, xs=[_x(d, 1, 2, 3, 5), _x(d, 1, 2, 3, 5, dtype=torch.half)]),
        E,
        "xs[1] must share xs[0]'s dtype and device",
    ),
    (
        "acc-channels",
        lambda d, o: _uacc(d, xs=[_x(d, 1, 2, 3, 5), _x(d, 1, 2, 3, 4)]),
        E,
        "must have xs[0]'s batch and channels",
    ),
    (
        "acc-out-size",
        lambda d, o: _uacc(
            d, row_index=[_taps(d)[0], _taps(d, ((0, 1),))[0]], row_weight=[_taps(d)[1], _taps(d, ((0, 1),))[1]]
        ),
        E,
        "every map must resample to the same rows and columns",
    ),
    ("acc-bias-shape", lambda d, o: _uacc(d, bias=_x(d, 4)), E, "upsample_accumulate: bias must be (5,), got (4,)"),
    ("acc-bias-device", lambda d, o: _uacc(d, bias=_x(o, 5)), E, "bias must be on x's device"),
    # ---- layer_norm
    ("ln-x-2d", lambda d, o: _ln(d, x=_x(d, 9, 5)), E, "layer_norm: x must be (B, N, C) tokens"),
    ("ln-x-int", lambda d, o: _ln(d, x=torch.ones(1, 2, 5, dtype=torch.long, device=d)), E, "got Long"),
    ("ln-no-channels", lambda d, o: _ln(d, c=0), E, "no channels to normalise"),
    ("ln-weight-shape", lambda d, o: _ln(d, weight=_x(d, 4)), E, "weight must be (5,), got (4,)"),
    ("ln-bias-dtype", lambda d, o: _ln(d, bias=_x(d, 5, dtype=torch.half)), E, "bias must"),
    ("ln-weight-device", lambda d, o: _ln(d, weight=_x(o, 5)), E, "weight must be on x's device"),
    ("ln-eps-negative", lambda d, o: _ln(d, eps=-1.0), E, "eps must be finite and >= 0"),
    ("ln-eps-nan", lambda d, o: _ln(d, eps=float("nan")), E, "eps must be finite and >= 0"),
    # ---- sra_attention
    ("attn-q-2d", lambda d, o: _attn(d, q=_x(d, 9, 8)), E, "sra_attention: q must be (B, N, C) tokens"),
    ("attn-q-int", lambda d, o: _attn(d, q=torch.ones(2, 9, 8, dtype=torch.long, device=d)), E, "got Long"),
    ("attn-k-2d", lambda d, o: _attn(d, k=_x(d, 4, 8)), E, "k must have 3 dimensions"),
    ("attn-k-channels", lambda d, o: _attn(d, k=_x(d, 2, 4, 6)), E, "k must be (2, 4, 8), got (2, 4, 6)"),
    ("attn-v-keys", lambda d, o: _attn(d, v=_x(d, 2, 5, 8)), E, "v must be (2, 4, 8), got (2, 5, 8)"),
    ("attn-k-batch", lambda d, o: _attn(d, k=_x(d, 1, 4, 8)), E, "k must be (2, 4, 8), got (1, 4, 8)"),
    ("attn-no-keys", lambda d, o: _attn(d, m=0), E, "at least one key is needed"),
    ("attn-heads", lambda d, o: _attn(d, num_heads=3), E, "8 channels are not divisible into 3 heads"),
    ("attn-heads-zero", lambda d, o: _attn(d, num_heads=0), E, "not divisible into 0 heads"),
    ("attn-v-dtype", lambda d, o: _attn(d, v=_x(d, 2, 4, 8, dtype=torch.half)), E, "v must have q's dtype"),
    ("attn-k-device", lambda d, o: _attn(d, k=_x(o, 2, 4, 8)), E, "k must be on q's device"),
    ("attn-scale-nan", lambda d, o: _attn(d, scale=float("nan")), E, "scale must be finite"),
    # ---- sr_conv
    ("src-x-2d", lambda d, o: _src(d, x=_x(d, 45, 8)), E, "sr_conv: x must be (B, N, C) tokens"),
    ("src-x-int", lambda d, o: _src(d, x=torch.ones(2, 45, 8, dtype=torch.long, device=d)), E, "got Long"),
    ("src-not-a-map", lambda d, o: _src(d, height=4), E, "45 tokens are not a 4x9 map"),
    ("src-weight-3d", lambda d, o: _src(d, weight=_x(d, 12, 8, 2)), E, "weight must have 4 dimensions"),
    ("src-weight-rect", lambda d, o: _src(d, weight=_x(d, 12, 8, 2, 3)), E, "weight must be (Co, Ci, k, k)"),
    ("src-weight-channels", lambda d, o: _src(d, weight=_x(d, 12, 7, 2, 2)), E, "weight must be (12, 8, 2, 2)"),
    ("src-kernel-too-big", lambda d, o: _src(d, s=6), E, "a 6x6 kernel does not fit in a 5x9 map"),
    ("src-bias-shape", lambda d, o: _src(d, bias=_x(d, 11)), E, "bias must be (12,), got (11,)"),
    ("src-weight-dtype", lambda d, o: _src(d, weight=_x(d, 12, 8, 2, 2, dtype=torch.half)), E, "weight must have"),
    ("src-weight-device", lambda d, o: _src(d, weight=_x(o, 12, 8, 2, 2)), E, "weight must be on x's device"),
    ("src-packed-shape", lambda d, o: _src(d, packed=_x(d, 1, 32, 16)), E, "packed must be (1, 32, 64), got"),
    # ---- token_conv
    ("tc-x-2d", lambda d, o: _tc(d, x=_x(d, 45, 8)), E, "token_conv: x must be (B, N, C) tokens"),
    ("tc-not-a-map", lambda d, o: _tc(d, width=8), E, "45 tokens are not a 5x8 map"),
    ("tc-weight-rect", lambda d, o: _tc(d, weight=_x(d, 12, 8, 3, 2)), E, "weight must be (Co, Ci, k, k)"),
    ("tc-weight-channels", lambda d, o: _tc(d, weight=_x(d, 12, 7, 3, 3)), E, "weight must be (12, 8, 3, 3)"),
    (
        "tc-no-channels",
        lambda d, o: _tc(d, x=_x(d, 2, 45, 0), weight=_x(d, 12, 0, 3, 3), packed=_x(d, 1, 0, 64)),
        E,
        "token_conv: x has no channels",
    ),
    (
        "src-no-channels",
        lambda d, o: _src(d, x=_x(d, 2, 45, 0), weight=_x(d, 12, 0, 2, 2), packed=_x(d, 1, 0, 64)),
        E,
        "sr_conv: x has no channels",
    ),
    ("tc-stride-zero", lambda d, o: _tc(d, stride=0), E, "stride must be >= 1 and padding >= 0, got stride 0"),
    ("tc-padding-negative", lambda d, o: _tc(d, padding=-1), E, "padding >= 0, got stride 2, padding -1"),
    ("tc-kernel-too-big", lambda d, o: _tc(d, k=8), E, "8x8 kernel does not fit in a 5x9 map padded by 1"),
    ("tc-bias-shape", lambda d, o: _tc(d, bias=_x(d, 11)), E, "bias must be (12,), got (11,)"),
    ("tc-weight-device", lambda d, o: _tc(d, weight=_x(o, 12, 8, 3, 3)), E, "weight must be on x's device"),
    ("tc-packed-shape", lambda d, o: _tc(d, packed=_x(d, 1, 72, 32)), E, "packed must be (1, 72, 64), got"),
    (
        "tc-pairs-for-fp32",
        lambda d, o: _tc(d, packed=_x(d, 1, 36, 64, 2)),
        E,
        "a weight packed in pairs is for bf16 inputs",
    ),
    # ---- conv_ffn's packed weights
    ("ffn-packed-one", lambda d, o: _ffn(d, fc1_packed=_x(d, 1, 4, 64)), E, "pass both fc1_packed and fc2_packed"),
    (
        "ffn-packed-shape",
        lambda d, o: _ffn(d, fc1_packed=_x(d, 1, 4, 64), fc2_packed=_x(d, 1, 4, 64)),
        E,
        "fc2_packed must be (1, 8, 64), got (1, 4, 64)",
    ),
    (
        "ffn-packed-dtype",
        lambda d, o: _ffn(d, fc1_packed=_x(d, 1, 4, 64, dtype=torch.half), fc2_packed=_x(d, 1, 8, 64)),
        E,
        "fc1_packed must have x's dtype",
    ),
    # ---- sra_layer
    ("sl-x-2d", lambda d, o: _sl(d, x=_x(d, 20, 8)), E, "sra_layer: x must be (B, N, C) tokens"),
    ("sl-not-a-map", lambda d, o: _sl(d, height=3), E, "20 tokens are not a 3x5 map"),
    ("sl-heads", lambda d, o: _sl(d, num_heads=3), E, "8 channels are not divisible into 3 heads"),
    ("sl-scale-inf", lambda d, o: _sl(d, scale=float("inf")), E, "scale must be finite"),
    ("sl-q-shape", lambda d, o: _sl(d, q_weight=_x(d, 8, 7)), E, "q_weight must be (8, 8), got (8, 7)"),
    ("sl-kv-shape", lambda d, o: _sl(d, kv_weight=_x(d, 8, 8)), E, "kv_weight must be (16, 8), got (8, 8)"),
    ("sl-kv-bias", lambda d, o: _sl(d, kv_bias=_x(d, 8)), E, "kv_bias must be (16,), got (8,)"),
    ("sl-proj-device", lambda d, o: _sl(d, proj_weight=_x(o, 8, 8)), E, "proj_weight must be on x's device"),
    ("sl-residual", lambda d, o: _sl(d, residual=_x(d, 2, 20, 4)), E, "residual must be (2, 20, 8), got"),
    ("sl-norm-no-sr", lambda d, o: _sl(d, s=1, norm_weight=_x(d, 8)), E, "belong to the spatial reduction"),
    ("sl-sr-rect", lambda d, o: _sl(d, sr_weight=_x(d, 8, 8, 2, 3)), E, "sr_weight must be (C, C, s, s)"),
    ("sl-sr-too-big", lambda d, o: _sl(d, s=5), E, "a 5x5 reduction does not fit in a 4x5 map"),
    ("sl-norm-dtype", lambda d, o: _sl(d, norm_bias=_x(d, 8, dtype=torch.half)), E, "norm_bias must have x's"),
    ("sl-eps-nan", lambda d, o: _sl(d, eps=float("nan")), E, "eps must be finite"),
    ("sl-packed-count", lambda d, o: _sl(d, packed=[_x(d, 1, 8, 64)] * 3), E, "packed must hold the 4 packed"),
    ("sl-packed-sr", lambda d, o: _sl(d, packed=[_x(d, 1, 8, 64)] * 4), E, "packed[3] (sr) must be (1, 32, 64)"),
    # ---- pvt_block
    ("blk-x-2d", lambda d, o: _blk(d, x=_x(d, 20, 8)), E, "pvt_block: x must be (B, N, C) tokens"),
    ("blk-att-count", lambda d, o: _blk(d, attention={}, ffn={}, packed=[]), E, "packed must hold 6 packed weights"),
    ("blk-eps", lambda d, o: _blk(d, eps=[1e-6]), E, "eps must hold 3 values"),
    ("blk-norm1", lambda d, o: _blk(d, norm1_weight=_x(d, 7)), E, "norm1_weight must be (8,), got (7,)"),
    ("blk-norm2-device", lambda d, o: _blk(d, norm2_bias=_x(o, 8)), E, "norm2_bias must be on x's device"),
    ("blk-q-missing", lambda d, o: _blk(d, attention={0: None}), E, "attention[0] (q_weight) is required"),
    ("blk-fc2-out", lambda d, o: _blk(d, ffn={4: _x(d, 4, 16), 5: None}), E, "fc2_weight (ffn[4]) must map back"),
    ("blk-dw", lambda d, o: _blk(d, ffn={2: _x(d, 16, 1, 3, 2)}), E, "dw_weight must be (16, 1, 3, 3)"),
    ("blk-heads", lambda d, o: _blk(d, num_heads=3), E, "8 channels are not divisible into 3 heads"),
    (
        "sl-packed-dtype",
        lambda d, o: _sl(d, packed=[_x(d, 1, 8, 64, dtype=torch.half)] + [_x(d, 1, 8, 64)] * 3),
        E,
        "packed[0] (q) must have x's dtype",
    ),
]


@pytest.mark.parametrize(
    "dev,other",
    [("cpu", "meta"), ("meta", "cpu"), pytest.param("cuda", "cpu", marks=needs_cuda)],
    ids=["cpu-kernel", "meta-kernel", "cuda-kernel"],
)
@pytest.mark.parametrize("make,error,fragment", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_raises_a_clear_error(make, error, fragment, dev, other):
    name, args = make(dev, other)
    if dev == "cuda" and not _ext.has_kernel(name, "cuda"):
        pytest.skip(f"{name} has no CUDA C++ kernel (Triton serves CUDA tensors)")
    with pytest.raises(error, match=re.escape(fragment)):
        _op(name)(*args)


def test_every_op_is_covered():
    covered = {c[1]("cpu", "meta")[0] for c in BAD_INPUT}
    assert covered == set(NATIVE_OPS)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _dw("cpu"),
        lambda: _pool("cpu"),
        lambda: _ffn("cpu"),
        lambda: _ln("cpu"),
        lambda: _attn("cpu"),
        lambda: _src("cpu"),
        lambda: _tc("cpu"),
        lambda: _sl("cpu"),
        lambda: _blk("cpu"),
    ],
    ids=[
        "dwconv_gelu",
        "linear_sra_pool",
        "conv_ffn",
        "layer_norm",
        "sra_attention",
        "sr_conv",
        "token_conv",
        "sra_layer",
        "pvt_block",
    ],
)
def test_sparse_input_is_refused_by_the_dispatcher(make):
    """Layouts other than dense never reach a kernel: no kernel is registered for them."""
    name, args = make()
    args = (args[0].to_sparse(),) + args[1:]
    with pytest.raises(NotImplementedError, match="SparseCPU"):
        _op(name)(*args)


@pytest.mark.parametrize("which", ["row", "col"])
@pytest.mark.parametrize("bad", [-1, 3])
def test_resampling_taps_outside_the_source_are_refused(which, bad):
    """On the CPU the taps are read and range-checked before any row is (a tap past the band would read memory
    outside it); the Python wrappers check the same before any backend runs."""
    index = torch.tensor([[0, 1], [1, bad]])
    kw = {f"{which}_index": index}
    for name, args in (_ua("cpu", **kw), _uacc("cpu", **{f"{which}_index": [index] * 2})):
        with pytest.raises(RuntimeError, match=re.escape(f"{which}_index reads source {which}s [")):
            _op(name)(*args)


# ------------------------------------------------------------------------------------------------ C = 0
# One rule across backends: the C++ ops do what the PyTorch reference (backend="torch") does (checks.h).
ZERO_CASES = [
    ("dw-C0", lambda: _dw("cpu", c=0)),
    ("dw-B0", lambda: _dw("cpu", x=torch.randn(0, 9, 4))),
    ("pool-C0", lambda: _pool("cpu", x=torch.randn(2, 9, 0))),
    ("pool-B0", lambda: _pool("cpu", x=torch.randn(0, 9, 4))),
    ("ffn-hidden0", lambda: _ffn("cpu", hidden=0)),
    ("ffn-cin0", lambda: _ffn("cpu", c_in=0)),
    ("ffn-cin0-no-bias", lambda: _ffn("cpu", c_in=0, fc1_bias=None)),
    ("ffn-cout0", lambda: _ffn("cpu", c_out=0)),
    ("ffn-B0", lambda: _ffn("cpu", x=torch.randn(0, 9, 4))),
]


@pytest.mark.parametrize("make", [c[1] for c in ZERO_CASES], ids=[c[0] for c in ZERO_CASES])
def test_zero_sizes_follow_the_reference(make):
    name, args = make()
    try:
        expected = getattr(ops, name)(*args, backend="torch")
    except (RuntimeError, ValueError):  # F.conv2d(groups=0): "non-positive groups is not supported"
        with pytest.raises(RuntimeError, match="a depthwise conv of no channels is an error"):
            _op(name)(*args)
        return
    out = _op(name)(*args)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ pool bins
def _bins(n: int, p: int):
    """AdaptiveAvgPool's bins in Python integers: [floor(i·n/p), ceil((i+1)·n/p)) for i < p."""
    return [((i * n) // p, -((-(i + 1) * n) // p)) for i in range(p)]


def _edge_marks(n: int, p: int):
    """Ones next to every bin edge (edge - 1 and edge), zeros elsewhere; and each bin's mean of them, exactly."""
    marks = sorted({e + k for b in _bins(n, p) for e in b for k in (-1, 0) if 0 <= e + k < n})
    line = torch.zeros(n, dtype=torch.float64)
    line[marks] = 1.0
    means = [float(sum(1 for m in marks if s <= m < t)) / (t - s) for s, t in _bins(n, p)]
    return line, torch.tensor(means, dtype=torch.float64)


@pytest.mark.parametrize(
    "height,width,pool,channels",
    [
        (2**20, 1, 7, 1),
        (1, 2**20, 7, 1),
        (3, 5, 7, 17),
        (49, 13, 7, 40),
        (1000003, 1, 13, 1),
        # i·H passes 2^31 for i >= 512: with 32-bit bins this read before the tensor (SIGSEGV) or pooled wrong rows
        (2**22, 1, 520, 1),
    ],
    ids=["H2^20-P7", "W2^20-P7", "H,W<P", "H=7P", "H-prime", "iH>2^31"],
)
def test_pool_bins_match_integer_arithmetic_at_large_sizes(height, width, pool, channels):
    """x[h, w] = rows[h]·cols[w] with ones only next to bin edges: a cell's mean is the product of its row and column
    bins' means, so a bin off by one row or column in the kernel's math (math.h, shared with CUDA) changes it.
    Expected values from Python integers; channels > 1 run the vector lanes, 1 the scalar tail."""
    rows, row_means = _edge_marks(height, pool)
    cols, col_means = _edge_marks(width, pool)
    x = torch.outer(rows, cols).float().view(1, height * width, 1).expand(1, height * width, channels)
    out = _op("linear_sra_pool")(x.contiguous(), height, width, pool).view(pool, pool, channels)
    expected = torch.outer(row_means, col_means).unsqueeze(-1).expand(pool, pool, channels)
    # fp32: 1/area rounded once, times an exact small count: 2 roundings of 2^-24
    torch.testing.assert_close(out.double(), expected, rtol=2.5e-7, atol=0)


# ------------------------------------------------------------------------------------------------ environment
# Each variable is read once per process, but a read that raises is retried on the next call (a C++ static whose
# initialiser throws), so one child process tries every bad value in turn and then a good one.
_CHILD = """
import json, os, sys, torch
from pvtv2_fast import _ext
_ext.available()
name, values = sys.argv[1], json.loads(sys.argv[2])
x, w = torch.randn(1, 12, 8), torch.randn(8, 1, 3, 3)
ffn = (torch.randn(16, 8), None, torch.randn(16, 1, 3, 3), None, torch.randn(8, 16), None)
results = []
for v in values:
    os.environ[name] = v
    try:
        torch.ops.pvtv2_fast_C.dwconv_gelu(x, w, None, 3, 4, False)
        torch.ops.pvtv2_fast_C.conv_ffn(x, *ffn, 3, 4, False)
        results.append("ok")
    except RuntimeError as e:
        results.append(str(e).splitlines()[0])
print(json.dumps(results))
"""
ENV_CASES = {
    "PVTV2_FAST_FFN_BAND_KB": (
        ["-1", "abc", "64kb", "0", " 8", "+8", "1e3", "8.5", "1048577", "99999999999999999999", "1048576"],
        ("PVTV2_FAST_FFN_BAND_KB must be a whole number of KB (1 to 1048576; unset: 512), got '{}'"),
    ),
    "PVTV2_FAST_FFN_WHOLE_KB": (
        ["-1", "abc", "64kb", " 8", "+8", "1e3", "8.5", "1073741825", "99999999999999999999", "0"],
        ("PVTV2_FAST_FFN_WHOLE_KB must be a whole number of KB (0 to 1073741824; unset: the measured rule), got '{}'"),
    ),
    "PVTV2_FAST_CPU_ISA": (
        ["sse9", "AVX2", " avx2", "avx2 ", "avx-512", "0", "avx2"],
        ("PVTV2_FAST_CPU_ISA must be one of default, avx2, avx512 (unset: the widest the CPU supports), got '{}'"),
    ),
}


@pytest.fixture(scope="module")
def env_results():
    results = {}
    for name, (values, _) in ENV_CASES.items():
        env = {k: v for k, v in os.environ.items() if k not in ENV_CASES}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, name, json.dumps(values)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        results[name] = dict(zip(values, json.loads(out.stdout.strip().splitlines()[-1])))
    return results


@pytest.mark.parametrize(
    "name,value",
    [(n, v) for n, (vs, _) in ENV_CASES.items() for v in vs],
    ids=[f"{n[11:]}={v!r}" for n, (vs, _) in ENV_CASES.items() for v in vs],
)
def test_environment_variables_are_parsed_strictly(env_results, name, value):
    """Every value but the last (a valid one) raises, naming the variable, the value and what is accepted."""
    values, message = ENV_CASES[name]
    got = env_results[name][value]
    assert got == ("ok" if value == values[-1] else message.format(value))


# ------------------------------------------------------------------------------------------------ CUDA kernels
# Run where a GPU is lent (skipped here): the CUDA C++ kernels against a float64 reference, on the vector path
# (C % 4 == 0, aligned), the scalar path (odd C, or a pointer off 16-byte alignment), 1-pixel and 1-row maps.


def _cuda_case(b, h, w, c, dtype, offset, seed):
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(b * h * w * c + offset, generator=g).to(dtype).cuda()
    x = flat[offset:].view(b, h * w, c)  # contiguous; offset > 0 puts data_ptr off 16-byte alignment
    weight = (0.3 * torch.randn(c, 1, 3, 3, generator=g)).to(dtype).cuda()
    bias = torch.randn(c, generator=g).to(dtype).cuda()
    return x, weight, bias


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "b,h,w,c,offset",
    [
        (2, 7, 9, 40, 0),
        (1, 1, 1, 3, 0),
        (3, 1, 23, 17, 0),
        (2, 25, 33, 64, 0),
        (1, 30, 2, 8, 0),
        (2, 13, 17, 64, 1),
        (2, 5, 7, 2048, 0),
    ],
)
def test_cuda_kernels_match_the_reference(b, h, w, c, offset, dtype):
    x, weight, bias = _cuda_case(b, h, w, c, dtype, offset, seed=h * w + c)
    for relu in (False, True):
        expected = ops.dwconv_gelu(x.double(), weight.double(), bias.double(), h, w, relu_input=relu, backend="torch")
        close(_op("dwconv_gelu")(x, weight, bias, h, w, relu), expected, dtype, f"dwconv_gelu relu={relu}")
    close(
        _op("dwconv_gelu")(x, weight, None, h, w, False),
        ops.dwconv_gelu(x.double(), weight.double(), None, h, w, backend="torch"),
        dtype,
        "dwconv_gelu no bias",
    )
    for pool in (1, 7, 40):
        close(
            _op("linear_sra_pool")(x, h, w, pool),
            ops.linear_sra_pool(x.double(), h, w, pool, backend="torch"),
            dtype,
            f"linear_sra_pool P={pool}",
        )


@needs_cuda
def test_cuda_kernels_on_a_4096_image_stage1_map_in_batch_8():
    """1024² tokens × 320 channels × batch 8 = 2.7e9 elements: offsets past 2^31, more column tiles and rows than a
    65535-capped grid axis holds. The first and last images are checked against float64 (the last one lies wholly
    past 2^31 elements)."""
    b, h, w, c = 8, 1024, 1024, 320
    x = torch.randn(b, h * w, c, device="cuda", dtype=torch.float16)
    weight = 0.3 * torch.randn(c, 1, 3, 3, device="cuda", dtype=torch.float16)
    bias = torch.randn(c, device="cuda", dtype=torch.float16)
    y = _op("dwconv_gelu")(x, weight, bias, h, w, False)
    p = _op("linear_sra_pool")(x, h, w, 7)
    for i in (0, b - 1):
        xi = x[i : i + 1].double()
        close(
            y[i : i + 1],
            ops.dwconv_gelu(xi, weight.double(), bias.double(), h, w, backend="torch"),
            torch.float16,
            f"dwconv_gelu image {i}",
        )
        close(p[i : i + 1], ops.linear_sra_pool(xi, h, w, 7, backend="torch"), torch.float16, f"pool image {i}")
