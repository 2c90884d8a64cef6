"""``ops.sra_attention`` on every fused backend this machine has, against the PyTorch reference (SDPA).

bf16 under the Triton interpreter: ``tl.dot`` on bf16 operands is wrong there (it multiplies raw bits), so the
kernel upcasts bf16 operands to fp32 before its dots when interpreted; loads, stores (truncating, see op_cases),
masking, indexing and the softmax are still the kernel's own. On a GPU the compiled bf16 dot runs.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from op_cases import DEVICE, DTYPE_IDS, DTYPES, HYPOTHESIS, close, fused_backends, randn, require, stage_cases

from pvtv2_fast import ops

CASES = stage_cases()
BACKENDS = fused_backends("sra_attention")


def _run(backend, device, q, k, v, heads, scale=None):
    q, k, v = q.to(device), k.to(device), v.to(device)
    require("sra_attention", backend, (q, k, v, heads))
    out = ops.sra_attention(q, k, v, heads, scale=scale, backend=backend)
    scale = (q.shape[2] // heads) ** -0.5 if scale is None else scale
    return out, ops.sra_attention_reference(q.float(), k.float(), v.float(), heads, scale)


def _packed(backend, device, b, n, m, c, heads, dtype, seed=0):
    """K and V as strided views of one packed (B, M, 2C) projection, as the fast model passes them."""
    q = randn(b, n, c, dtype=dtype, seed=seed)
    kv = randn(b, m, 2 * c, dtype=dtype, seed=seed + 1)
    return _run(backend, device, q, kv[..., :c], kv[..., c:], heads)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_preset_stages(backend, device, case, dtype):
    _, c, heads, h, w, m, _, _ = case
    close(*_packed(backend, device, 2, h * w, m, c, heads, dtype), dtype, "sra_attention")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "n,m,c,heads",
    [
        (300, 200, 64, 1),  # streaming path, partial last key block
        (257, 129, 128, 2),  # one key past a block boundary
        (1, 300, 32, 1),  # a single query
        (70, 1, 64, 2),  # a single key (sr_ratio windows larger than the map)
        (33, 49, 320, 5),  # Linear SRA's 49 keys, b2 stage 3 heads
        (40, 30, 96, 2),  # head dim 48: not a power of two (padded and masked)
        (20, 20, 128, 1),  # head dim 128, the largest supported
    ],
)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_edges(backend, device, n, m, c, heads, dtype):
    close(*_packed(backend, device, 3, n, m, c, heads, dtype, seed=n + m), dtype, "sra_attention")


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU (segmentation-size maps)")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "n,m,c,heads", [(65536, 1024, 64, 1), (16384, 256, 32, 1), (4096, 49, 320, 5), (1000, 1000, 512, 8)]
)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_segmentation_sizes(backend, device, n, m, c, heads, dtype):
    close(*_packed(backend, device, 2, n, m, c, heads, dtype), dtype, "sra_attention")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_arbitrary_strides(backend, device):
    """q as a transposed view, k and v from separate non-contiguous buffers: read through strides, no copies."""
    b, n, m, c = 2, 45, 20, 64
    q = randn(b, c, n, seed=3).transpose(1, 2)
    k = randn(b, m, 3 * c, seed=4)[..., c : 2 * c]
    v = randn(m, b, c, seed=5).transpose(0, 1)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    out, ref = _run(backend, device, q, k, v, 2)
    close(out, ref, torch.float32, "strided")
    assert out.is_contiguous() and out.shape == (b, n, c)


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_finite_inputs_give_the_references_non_finite_outputs(backend, device, where, value):
    """A NaN or inf in q, k or v makes exactly the rows the reference makes non-finite, and leaves the others
    (per head) within tolerance: no masking of the padded keys or rescaling step may hide or spread it."""
    t = {"q": randn(2, 37, 64, seed=1), "k": randn(2, 70, 64, seed=2), "v": randn(2, 70, 64, seed=3)}
    t[where][1, 5, 3] = value
    out, ref = _run(backend, device, t["q"], t["k"], t["v"], 2)
    out, ref = out.float().cpu(), ref.cpu()
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    finite = ref.isfinite()
    close(out[finite], ref[finite], torch.float32, f"{where}={value}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_custom_scale(backend, device):
    kv = randn(1, 10, 128, seed=1)
    close(*_run(backend, device, randn(1, 30, 64), kv[..., :64], kv[..., 64:], 2, scale=0.5), torch.float32)


@HYPOTHESIS
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 300),
    m=st.integers(1, 200),
    heads=st.sampled_from([1, 2, 5]),
    d=st.sampled_from([16, 32, 64]),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(b, n, m, heads, d, seed):
    for backend, device in [p.values for p in BACKENDS]:
        close(
            *_packed(backend, device, b, n, m, heads * d, heads, torch.float32, seed=seed),
            torch.float32,
            f"{backend} b={b} n={n} m={m} heads={heads} d={d}",
        )


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradients_are_the_references(backend, device):
    q = randn(2, 30, 64, device=device).requires_grad_()
    kv = randn(2, 7, 128, seed=1, device=device).requires_grad_()
    require("sra_attention", backend, (q, kv[..., :64], kv[..., 64:], 2))
    got = torch.autograd.grad(
        ops.sra_attention(q, kv[..., :64], kv[..., 64:], 2, backend=backend).square().sum(), (q, kv)
    )
    ref = torch.autograd.grad(
        ops.sra_attention(q, kv[..., :64], kv[..., 64:], 2, backend="torch").square().sum(), (q, kv)
    )
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_sees_one_opaque_node(backend, device):
    q, kv = randn(1, 50, 64, device=device), randn(1, 9, 128, seed=1, device=device)
    require("sra_attention", backend, (q, kv[..., :64], kv[..., 64:], 2))
    fn = torch.compile(
        lambda a, b: ops.sra_attention(a, b[..., :64], b[..., 64:], 2, backend=backend),
        fullgraph=True,
        backend="aot_eager",
    )
    close(fn(q, kv), ops.sra_attention_reference(q, kv[..., :64], kv[..., 64:], 2, 32**-0.5), torch.float32)
