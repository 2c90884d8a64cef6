"""Bad input gets a clear error naming the problem, never a wrong answer: one table for every op, checked before any
backend runs, so every backend gives the same error."""

import pytest
import torch

from pvtv2_fast import ops

t = torch.randn
W3, W5 = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 5, 5)
FFN = (torch.randn(8, 4), None, torch.randn(8, 1, 3, 3), None, torch.randn(4, 8), None)
LONG = dict(dtype=torch.long)
TAPS = (torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0.5, 0.5], [1.0, 0.0]]))  # 2 output rows/cols of a 2-pixel axis


def up(x=None, rows=TAPS, cols=TAPS, **kw):
    return ops.upsample_argmax(t(1, 2, 2, 5) if x is None else x, *rows, *cols, **kw)


CASES = [
    # sra_attention
    ("attn-q-rank", lambda: ops.sra_attention(t(2, 5), t(1, 3, 4), t(1, 3, 4), 1), ValueError, "q must be"),
    ("attn-k-not-tensor", lambda: ops.sra_attention(t(1, 5, 4), [1], t(1, 3, 4), 1), ValueError, "k must be"),
    ("attn-kv-shapes", lambda: ops.sra_attention(t(1, 5, 4), t(1, 3, 4), t(1, 2, 4), 1), ValueError, "same shape"),
    ("attn-batch", lambda: ops.sra_attention(t(2, 5, 4), t(1, 3, 4), t(1, 3, 4), 1), ValueError, "agree in batch"),
    ("attn-heads", lambda: ops.sra_attention(t(1, 5, 6), t(1, 3, 6), t(1, 3, 6), 4), ValueError, "divisible"),
    ("attn-zero-heads", lambda: ops.sra_attention(t(1, 5, 6), t(1, 3, 6), t(1, 3, 6), 0), ValueError, "divisible"),
    ("attn-no-keys", lambda: ops.sra_attention(t(1, 5, 4), t(1, 0, 4), t(1, 0, 4), 1), ValueError, "M >= 1"),
    (
        "attn-int",
        lambda: ops.sra_attention(
            torch.ones(1, 5, 4, **LONG), torch.ones(1, 3, 4, **LONG), torch.ones(1, 3, 4, **LONG), 1
        ),
        TypeError,
        "floating",
    ),
    (
        "attn-mixed-dtype",
        lambda: ops.sra_attention(t(1, 5, 4), t(1, 3, 4).half(), t(1, 3, 4).half(), 1),
        ValueError,
        "share dtype",
    ),
    # layer_norm
    ("ln-rank", lambda: ops.layer_norm(t(9, 4), None, None), ValueError, r"\(B, L, C\)"),
    ("ln-int", lambda: ops.layer_norm(torch.ones(1, 9, 4, **LONG), None, None), TypeError, "floating"),
    ("ln-no-channels", lambda: ops.layer_norm(t(1, 9, 0), None, None), ValueError, "no channels"),
    (
        "ln-weight-shape",
        lambda: ops.layer_norm(t(1, 9, 4), t(5), None),
        ValueError,
        r"weight must be \(4,\), got \(5,\)",
    ),
    ("ln-bias-dtype", lambda: ops.layer_norm(t(1, 9, 4), None, t(4).half()), ValueError, "share x's dtype"),
    ("ln-eps", lambda: ops.layer_norm(t(1, 9, 4), None, None, -1.0), ValueError, "eps must be a finite number"),
    ("ln-eps-nan", lambda: ops.layer_norm(t(1, 9, 4), None, None, float("nan")), ValueError, "eps must be"),
    # linear_sra_pool
    ("pool-map", lambda: ops.linear_sra_pool(t(1, 10, 4), 3, 3), ValueError, "3×3 map"),
    ("pool-zero-height", lambda: ops.linear_sra_pool(t(1, 0, 4), 0, 5), ValueError, "0×5 map"),
    ("pool-size", lambda: ops.linear_sra_pool(t(1, 9, 4), 3, 3, 0), ValueError, "pool_size"),
    ("pool-rank", lambda: ops.linear_sra_pool(t(9, 4), 3, 3), ValueError, r"\(B, N, C\)"),
    ("pool-int", lambda: ops.linear_sra_pool(torch.ones(1, 9, 4, **LONG), 3, 3), TypeError, "floating"),
    # dwconv_gelu
    ("dw-weight", lambda: ops.dwconv_gelu(t(1, 9, 4), W5, None, 3, 3), ValueError, r"\(4, 1, 3, 3\)"),
    ("dw-bias", lambda: ops.dwconv_gelu(t(1, 9, 4), W3, t(5), 3, 3), ValueError, "bias"),
    ("dw-weight-dtype", lambda: ops.dwconv_gelu(t(1, 9, 4), W3.double(), None, 3, 3), ValueError, "share x's dtype"),
    ("dw-huge-map", lambda: ops.dwconv_gelu(t(1, 0, 4), W3, None, 2**32, 2**32), ValueError, "map"),
    ("dw-no-channels", lambda: ops.dwconv_gelu(t(1, 9, 0), t(0, 1, 3, 3), None, 3, 3), ValueError, "C = 0"),
    ("dw-relu-flag", lambda: ops.dwconv_gelu(t(1, 9, 4), W3, None, 3, 3, relu_input="no"), TypeError, "bool"),
    ("dw-backend", lambda: ops.dwconv_gelu(t(1, 9, 4), W3, None, 3, 3, backend="cuda!"), ValueError, "backend"),
    # conv_ffn
    ("ffn-map", lambda: ops.conv_ffn(t(1, 10, 4), *FFN, 3, 3), ValueError, "not a 3×3 map"),
    (
        "ffn-fc2",
        lambda: ops.conv_ffn(t(1, 9, 4), *FFN[:4], t(4, 7), None, 3, 3),
        ValueError,
        r"fc2_weight must be \(4, 8\)",
    ),
    (
        "ffn-fc1-in",
        lambda: ops.conv_ffn(t(1, 9, 5), *FFN, 3, 3),
        ValueError,
        r"fc1_weight must be \(8, 5\) for 5 input",
    ),
    (
        "ffn-dw-bias-dtype",
        lambda: ops.conv_ffn(t(1, 9, 4), *FFN[:3], t(8).double(), *FFN[4:], 3, 3),
        ValueError,
        "dw_bias must share x's dtype",
    ),
    ("ffn-int", lambda: ops.conv_ffn(torch.ones(1, 9, 4, dtype=torch.int32), *FFN, 3, 3), TypeError, "floating point"),
    (
        "ffn-no-hidden",
        lambda: ops.conv_ffn(t(1, 9, 4), t(0, 4), None, t(0, 1, 3, 3), None, t(4, 0), None, 3, 3),
        ValueError,
        "hidden = 0",
    ),
    ("ffn-budget", lambda: ops.conv_ffn(t(1, 9, 4), *FFN, 3, 3, max_hidden_bytes=0), ValueError, "max_hidden_bytes"),
    # upsample_argmax
    ("up-rank", lambda: up(t(2, 2, 5)), ValueError, r"\(B, R, W, L\)"),
    ("up-int", lambda: up(torch.ones(1, 2, 2, 5, **LONG)), TypeError, "float32, float16 or bfloat16"),
    ("up-no-labels", lambda: up(t(1, 2, 2, 0)), ValueError, "L = 0"),
    ("up-label-dtype", lambda: up(dtype=torch.float32), TypeError, "dtype must be one of"),
    ("up-too-many-labels", lambda: up(t(1, 2, 2, 257), dtype=torch.uint8), ValueError, "257 labels do not fit"),
    ("up-index-range", lambda: up(rows=(TAPS[0] + 1, TAPS[1])), IndexError, r"reads source rows \[1, 2\]"),
    ("up-negative-index", lambda: up(cols=(TAPS[0] - 1, TAPS[1])), IndexError, "reads source cols"),
    ("up-index-shape", lambda: up(rows=(TAPS[0][:, :1], TAPS[1])), ValueError, r"\(n, 2\) int64"),
    ("up-index-dtype", lambda: up(rows=(TAPS[0].int(), TAPS[1])), ValueError, r"\(n, 2\) int64"),
    ("up-weight-shape", lambda: up(cols=(TAPS[0], TAPS[1][:1])), ValueError, "col_weight must be"),
    ("up-weight-dtype", lambda: up(cols=(TAPS[0], TAPS[1].double())), ValueError, "float32 like col_index"),
    # upsample_accumulate
    ("acc-no-maps", lambda: ops.upsample_accumulate([], []), ValueError, "one .* per map"),
    ("acc-rank", lambda: ops.upsample_accumulate([t(2, 2, 5)], [(*TAPS, *TAPS)]), ValueError, r"\(B, R, W, C\)"),
    (
        "acc-channels",
        lambda: ops.upsample_accumulate([t(1, 2, 2, 5), t(1, 2, 2, 4)], [(*TAPS, *TAPS)] * 2),
        ValueError,
        "must share xs\\[0\\]'s batch, channels",
    ),
    (
        "acc-sizes",
        lambda: ops.upsample_accumulate([t(1, 2, 2, 5)] * 2, [(*TAPS, *TAPS), (TAPS[0][:1], TAPS[1][:1], *TAPS)]),
        ValueError,
        "same rows and columns",
    ),
    ("acc-bias", lambda: ops.upsample_accumulate([t(1, 2, 2, 5)], [(*TAPS, *TAPS)], t(4)), ValueError, "bias must be"),
    ("acc-index", lambda: ops.upsample_accumulate([t(1, 1, 2, 5)], [(*TAPS, *TAPS)]), IndexError, "reads source rows"),
    ("ffn-backend", lambda: ops.conv_ffn(t(1, 9, 4), *FFN, 3, 3, backend="nope"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("call,error,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()
