"""The fused ops and the fast model on a real GPU (compiled Triton kernels). Skipped without CUDA.

Tolerances on the GPU: fp32 attention uses tf32x3 dots (error ~1e-6 relative), so fp32 keeps 1e-5 on op outputs
of magnitude ~1 and 1e-4 on full-model logits; fp16/bf16 as in op_cases (now with the real bf16 dot).
"""

import pytest
import torch

from pvtv2_fast import PvtV2Config, PvtV2Model, ops
from op_cases import DTYPE_IDS, DTYPES, close, stage_cases

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CASES = stage_cases()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n,m,c,heads", [(65536, 1024, 64, 1), (16384, 256, 32, 1), (4096, 49, 320, 5), (1000, 1000, 512, 8)])
def test_attention_segmentation_shapes(n, m, c, heads, dtype):
    q = torch.randn(2, n, c, device="cuda", dtype=dtype)
    kv = torch.randn(2, m, 2 * c, device="cuda", dtype=dtype)
    out = ops.sra_attention(q, kv[..., :c], kv[..., c:], heads, backend="triton")
    ref = ops.sra_attention_reference(q.float(), kv[..., :c].float(), kv[..., c:].float(), heads, (c // heads) ** -0.5)
    close(out, ref, dtype, "sra_attention")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dwconv_and_pool_preset_stages(case, dtype):
    _, c, _, h, w, _, ffn, linear = case
    x = torch.randn(2, h * w, ffn, device="cuda", dtype=dtype)
    weight, bias = torch.randn(ffn, 1, 3, 3, device="cuda", dtype=dtype), torch.randn(ffn, device="cuda", dtype=dtype)
    out = ops.dwconv_gelu(x, weight, bias, h, w, relu_input=linear, backend="triton")
    close(out, ops.dwconv_gelu_reference(x.float(), weight.float(), bias.float(), h, w, linear), dtype, "dwconv")
    y = torch.randn(2, h * w, c, device="cuda", dtype=dtype)
    close(ops.linear_sra_pool(y, h, w, backend="triton"), ops.linear_sra_pool_reference(y.float(), h, w, 7), dtype)


@pytest.mark.parametrize("preset", ["b0", "b2", "b2_linear"])
def test_fast_backbone_matches_reference(preset):
    model = PvtV2Model(PvtV2Config.from_preset(preset)).eval().cuda()
    x = torch.randn(2, 3, 517, 389, device="cuda")
    with torch.no_grad():
        ref = model(x, output_hidden_states=True).hidden_states
        fast = model.set_fast(True)(x, output_hidden_states=True).hidden_states
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
