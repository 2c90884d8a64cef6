"""Parity of the fused Triton ops against the PyTorch reference.

On CPU the kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1 before they are imported);
on a CUDA machine the same tests run the compiled kernels. bf16 under the interpreter: ``tl.dot`` on bf16
operands is wrong there (it multiplies raw bits), so the attention kernel upcasts bf16 operands to fp32 before
its dots when interpreted; loads, stores (truncating, see op_cases), masking, indexing and the softmax are still
the kernel's own. The compiled bf16 dot is checked by tests/test_gpu.py on a GPU.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvtv2_fast import ops
from pvtv2_fast.ops import FallbackWarning
from op_cases import DTYPE_IDS, DTYPES, close, stage_cases

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = stage_cases()
CASE_IDS = [c[0] for c in CASES]


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def _attention(b, n, m, c, heads, dtype, seed=0):
    q = _randn(b, n, c, dtype=dtype, seed=seed)
    kv = _randn(b, m, 2 * c, dtype=dtype, seed=seed + 1)  # packed projection; K and V are strided views
    k, v = kv[..., :c], kv[..., c:]
    out = ops.sra_attention(q, k, v, heads, backend="triton")
    ref = ops.sra_attention_reference(q.float(), k.float(), v.float(), heads, (c // heads) ** -0.5)
    return out, ref


# ---------------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_sra_attention_preset_stages(case, dtype):
    _, c, heads, h, w, m, _, _ = case
    out, ref = _attention(2, h * w, m, c, heads, dtype)
    close(out, ref, dtype, "sra_attention")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n,m,c,heads", [
    (300, 200, 64, 1),    # streaming path, partial last key block
    (257, 129, 128, 2),   # one key past a block boundary
    (1, 300, 32, 1),      # a single query
    (70, 1, 64, 2),       # a single key (sr_ratio windows larger than the map)
    (33, 49, 320, 5),     # Linear SRA's 49 keys, b2 stage 3 heads
    (40, 30, 96, 2),      # head dim 48: not a power of two (padded and masked)
    (20, 20, 128, 1),     # head dim 128, the largest supported
])
def test_sra_attention_edges(n, m, c, heads, dtype):
    out, ref = _attention(3, n, m, c, heads, dtype, seed=n + m)
    close(out, ref, dtype, "sra_attention")


def test_sra_attention_arbitrary_strides():
    """q as a transposed view, k and v from separate non-contiguous buffers: read through strides, no copies."""
    b, n, m, c = 2, 45, 20, 64
    q = _randn(b, c, n, seed=3).transpose(1, 2)
    k = _randn(b, m, 3 * c, seed=4)[..., c: 2 * c]
    v = _randn(m, b, c, seed=5).transpose(0, 1)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    out = ops.sra_attention(q, k, v, 2, backend="triton")
    ref = ops.sra_attention_reference(q.contiguous(), k.contiguous(), v.contiguous(), 2, (c // 2) ** -0.5)
    close(out, ref, torch.float32, "strided")
    assert out.is_contiguous() and out.shape == (b, n, c)


def test_sra_attention_custom_scale():
    q, kv = _randn(1, 30, 64), _randn(1, 10, 128, seed=1)
    out = ops.sra_attention(q, kv[..., :64], kv[..., 64:], 2, scale=0.5, backend="triton")
    close(out, ops.sra_attention_reference(q, kv[..., :64], kv[..., 64:], 2, 0.5), torch.float32)


# ---------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("h,w", [(25, 33), (13, 17), (7, 9), (4, 5), (1, 1), (3, 11), (7, 7), (14, 14), (30, 17)])
def test_linear_sra_pool(h, w, dtype):
    for c in (64, 320):
        x = _randn(2, h * w, c, dtype=dtype, seed=h * w + c)
        out = ops.linear_sra_pool(x, h, w, backend="triton")
        close(out, ops.linear_sra_pool_reference(x.float(), h, w, 7), dtype, f"pool {h}×{w}×{c}")


def test_linear_sra_pool_other_sizes_and_strides():
    x = _randn(2, 9 * 13, 2 * 96, seed=7)[..., ::2]  # channel stride 2
    out = ops.linear_sra_pool(x, 9, 13, pool_size=4, backend="triton")
    close(out, ops.linear_sra_pool_reference(x.contiguous(), 9, 13, 4), torch.float32)


# ---------------------------------------------------------------------------------------------- dwconv + GELU
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_dwconv_gelu_preset_stages(case, dtype):
    _, _, _, h, w, _, ffn, linear = case
    x = _randn(2, h * w, ffn, dtype=dtype, seed=ffn)
    weight = 0.3 * _randn(ffn, 1, 3, 3, dtype=dtype, seed=1)
    bias = _randn(ffn, dtype=dtype, seed=2)
    out = ops.dwconv_gelu(x, weight, bias, h, w, relu_input=linear, backend="triton")
    ref = ops.dwconv_gelu_reference(x.float(), weight.float(), bias.float(), h, w, linear)
    close(out, ref, dtype, "dwconv_gelu")


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("h,w,c", [(7, 9, 40), (15, 17, 96), (1, 1, 8), (1, 23, 16), (19, 1, 24), (2, 2, 3)])
def test_dwconv_gelu_odd_maps(h, w, c, relu):
    x, weight, bias = _randn(3, h * w, c, seed=h), _randn(c, 1, 3, 3, seed=w), _randn(c, seed=c)
    out = ops.dwconv_gelu(x, weight, bias, h, w, relu_input=relu, backend="triton")
    close(out, ops.dwconv_gelu_reference(x, weight, bias, h, w, relu), torch.float32)


def test_dwconv_gelu_no_bias_and_strided_input():
    x = _randn(2, 2 * 63, 48, seed=8)[:, ::2]  # token stride 2
    weight = _randn(48, 1, 3, 3, seed=9)
    out = ops.dwconv_gelu(x, weight, None, 7, 9, backend="triton")
    close(out, ops.dwconv_gelu_reference(x.contiguous(), weight, None, 7, 9, False), torch.float32)


# ---------------------------------------------------------------------------------------------- properties
_hypothesis = settings(max_examples=25, deadline=None, derandomize=True,
                       suppress_health_check=[HealthCheck.too_slow])


@_hypothesis
@given(b=st.integers(1, 3), n=st.integers(1, 300), m=st.integers(1, 200), heads=st.sampled_from([1, 2, 5]),
       d=st.sampled_from([16, 32, 64]), seed=st.integers(0, 2**16))
def test_property_sra_attention(b, n, m, heads, d, seed):
    out, ref = _attention(b, n, m, heads * d, heads, torch.float32, seed=seed)
    close(out, ref, torch.float32, "sra_attention")


@_hypothesis
@given(b=st.integers(1, 2), h=st.integers(1, 40), w=st.integers(1, 40), c=st.integers(1, 130),
       p=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_property_linear_sra_pool(b, h, w, c, p, seed):
    x = _randn(b, h * w, c, seed=seed)
    close(ops.linear_sra_pool(x, h, w, p, backend="triton"), ops.linear_sra_pool_reference(x, h, w, p), torch.float32)


@_hypothesis
@given(b=st.integers(1, 2), h=st.integers(1, 30), w=st.integers(1, 30), c=st.integers(1, 130), relu=st.booleans(),
       seed=st.integers(0, 2**16))
def test_property_dwconv_gelu(b, h, w, c, relu, seed):
    x, weight, bias = _randn(b, h * w, c, seed=seed), _randn(c, 1, 3, 3, seed=seed + 1), _randn(c, seed=seed + 2)
    out = ops.dwconv_gelu(x, weight, bias, h, w, relu_input=relu, backend="triton")
    close(out, ops.dwconv_gelu_reference(x, weight, bias, h, w, relu), torch.float32)


# ---------------------------------------------------------------------------------------------- registration
def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementation and autograd registration are consistent (torch.library.opcheck)."""
    q, kv = _randn(1, 20, 64, seed=1), _randn(1, 6, 128, seed=2)
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(torch.ops.pvtv2_fast.sra_attention_triton.default,
                          (q, kv[..., :64].contiguous(), kv[..., 64:].contiguous(), 2, 0.125), test_utils=checks)
    torch.library.opcheck(torch.ops.pvtv2_fast.linear_sra_pool_triton.default, (_randn(1, 45, 16), 5, 9, 7),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.pvtv2_fast.dwconv_gelu_triton.default,
                          (_randn(1, 45, 16), _randn(16, 1, 3, 3), _randn(16), 5, 9, True), test_utils=checks)


def test_gradients_flow_through_fused_ops():
    q = _randn(2, 30, 64).requires_grad_()
    kv = _randn(2, 7, 128, seed=1).requires_grad_()
    ops.sra_attention(q, kv[..., :64], kv[..., 64:], 2, backend="triton").square().sum().backward()
    fused = (q.grad.clone(), kv.grad.clone())
    q.grad = kv.grad = None
    ops.sra_attention(q, kv[..., :64], kv[..., 64:], 2, backend="torch").square().sum().backward()
    torch.testing.assert_close(fused, (q.grad, kv.grad))
    x = _randn(1, 35, 16, seed=2).requires_grad_()
    weight = _randn(16, 1, 3, 3, seed=3).requires_grad_()
    ops.dwconv_gelu(x, weight, None, 5, 7, backend="triton").sum().backward()
    gx, gw = x.grad.clone(), weight.grad.clone()
    x.grad = weight.grad = None
    ops.dwconv_gelu(x, weight, None, 5, 7, backend="torch").sum().backward()
    torch.testing.assert_close((gx, gw), (x.grad, weight.grad))


def test_torch_compile_sees_one_opaque_node():
    q, kv = _randn(1, 50, 64), _randn(1, 9, 128, seed=1)
    fn = torch.compile(lambda a, b: ops.sra_attention(a, b[..., :64], b[..., 64:], 2, backend="triton"),
                       fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        close(fn(q, kv), ops.sra_attention_reference(q, kv[..., :64], kv[..., 64:], 2, 32 ** -0.5), torch.float32)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,error,match", [
    (lambda: ops.sra_attention(torch.randn(2, 5), torch.randn(1, 3, 4), torch.randn(1, 3, 4), 1), ValueError, "q must be"),
    (lambda: ops.sra_attention(torch.randn(1, 5, 4), torch.randn(1, 3, 4), torch.randn(1, 2, 4), 1), ValueError, "same shape"),
    (lambda: ops.sra_attention(torch.randn(1, 5, 6), torch.randn(1, 3, 6), torch.randn(1, 3, 6), 4), ValueError, "divisible"),
    (lambda: ops.sra_attention(torch.randn(1, 5, 4), torch.randn(1, 0, 4), torch.randn(1, 0, 4), 1), ValueError, "M >= 1"),
    (lambda: ops.sra_attention(torch.ones(1, 5, 4, dtype=torch.long), torch.ones(1, 3, 4, dtype=torch.long),
                               torch.ones(1, 3, 4, dtype=torch.long), 1), TypeError, "floating"),
    (lambda: ops.linear_sra_pool(torch.randn(1, 10, 4), 3, 3), ValueError, "3×3 map"),
    (lambda: ops.dwconv_gelu(torch.randn(1, 9, 4), torch.randn(4, 1, 5, 5), None, 3, 3), ValueError, r"\(4, 1, 3, 3\)"),
    (lambda: ops.dwconv_gelu(torch.randn(1, 9, 4), torch.randn(4, 1, 3, 3), torch.randn(5), 3, 3), ValueError, "bias"),
    (lambda: ops.dwconv_gelu(torch.randn(1, 9, 4), torch.randn(4, 1, 3, 3), None, 3, 3, backend="cuda!"), ValueError, "backend"),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_unsupported_dtype_falls_back_once_or_raises_when_explicit():
    ops.reset_warnings()
    x, weight = torch.randn(1, 9, 4, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="float64"):
        ops.dwconv_gelu(x, weight, None, 3, 3, backend="triton")
    with pytest.warns(FallbackWarning, match="float64"):
        out = ops.dwconv_gelu(x, weight, None, 3, 3)
    torch.testing.assert_close(out, ops.dwconv_gelu_reference(x, weight, None, 3, 3, False))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call does not warn again
        ops.dwconv_gelu(x, weight, None, 3, 3)


def test_head_dim_above_limit():
    """Triton takes head dims up to 128: an explicit request raises; "auto" on CPU tensors uses SDPA, which is the
    CPU attention kernel by design (no warning), and stays exact."""
    ops.reset_warnings()
    q, kv = torch.randn(1, 4, 256), torch.randn(1, 3, 512)
    with pytest.raises(NotImplementedError, match="head dim 256"):
        ops.sra_attention(q, kv[..., :256], kv[..., 256:], 1, backend="triton")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        out = ops.sra_attention(q, kv[..., :256], kv[..., 256:], 1)
    close(out, ops.sra_attention_reference(q, kv[..., :256], kv[..., 256:], 1, 256 ** -0.5), torch.float32)
