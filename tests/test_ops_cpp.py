"""The C++ extension (csrc/): CPU kernels against the PyTorch reference, registration, build contents.

The extension must be built here (``make test`` builds it): a missing build fails, it is never skipped, unless
PVTV2_FAST_NO_EXT=1 says the build was turned off on purpose.
"""

import os
import subprocess
import sys

import pytest
import torch

from pvtv2_fast import PvtV2Config, PvtV2ForImageClassification, _ext, ops
from conftest import randomize_
from op_cases import close, stage_cases

pytestmark = pytest.mark.skipif(os.environ.get("PVTV2_FAST_NO_EXT") == "1", reason="extension build turned off")
CASES = stage_cases()
CPU_DTYPES = [torch.float32, torch.bfloat16]


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_extension_is_built():
    assert _ext.available(), _ext.unavailable_reason()
    assert _ext.has_kernel("dwconv_gelu", "cpu") and _ext.has_kernel("adaptive_pool_tokens", "cpu")


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dwconv_gelu_preset_stages(case, dtype):
    _, c, _, h, w, _, ffn, linear = case
    x = _randn(2, h * w, ffn, dtype=dtype, seed=ffn)
    weight, bias = (0.3 * _randn(ffn, 1, 3, 3, seed=1)).to(dtype), _randn(ffn, dtype=dtype, seed=2)
    out = ops.dwconv_gelu(x, weight, bias, h, w, relu_input=linear, backend="cpu")
    close(out, ops.dwconv_gelu_reference(x.float(), weight.float(), bias.float(), h, w, linear), dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("h,w", [(25, 33), (7, 9), (4, 5), (1, 1), (3, 11), (14, 14), (30, 17)])
def test_adaptive_pool(h, w, dtype):
    for c in (13, 64, 320):
        x = _randn(2, h * w, c, dtype=dtype, seed=h + w + c)
        close(ops.linear_sra_pool(x, h, w, backend="cpu"), ops.linear_sra_pool_reference(x.float(), h, w, 7), dtype)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("h,w,c", [(7, 9, 40), (15, 17, 13), (1, 1, 8), (1, 23, 17), (19, 1, 7), (2, 2, 3)])
def test_dwconv_gelu_odd_maps_and_channel_tails(h, w, c, relu):
    """C not a multiple of 8 exercises the scalar tail after the AVX2 lanes; 1-pixel maps the tap clipping."""
    x, weight, bias = 3 * _randn(3, h * w, c, seed=h), _randn(c, 1, 3, 3, seed=w), _randn(c, seed=c)
    close(ops.dwconv_gelu(x, weight, bias, h, w, relu, backend="cpu"),
          ops.dwconv_gelu_reference(x, weight, bias, h, w, relu), torch.float32)


def test_non_contiguous_inputs_and_no_bias():
    x = _randn(2, 2 * 63, 48, seed=8)[:, ::2]
    weight = _randn(48, 3, 3, 1, seed=9).permute(0, 3, 1, 2)  # (48, 1, 3, 3), non-contiguous
    close(ops.dwconv_gelu(x, weight, None, 7, 9, backend="cpu"),
          ops.dwconv_gelu_reference(x.contiguous(), weight.contiguous(), None, 7, 9, False), torch.float32)
    y = _randn(2, 9 * 13, 2 * 40, seed=3)[..., ::2]
    close(ops.linear_sra_pool(y, 9, 13, backend="cpu"), ops.linear_sra_pool_reference(y.contiguous(), 9, 13, 7),
          torch.float32)


def test_gelu_tails_are_exact_enough():
    """The polynomial erf (|err| <= 3e-7) at large |x|, zero and around the GELU bend."""
    values = torch.tensor([-30.0, -8.0, -3.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 8.0, 30.0])
    c = values.numel()
    x = values.view(1, 1, c)
    weight = torch.zeros(c, 1, 3, 3)
    weight[:, 0, 1, 1] = 1.0  # identity conv: the op is GELU alone
    close(ops.dwconv_gelu(x, weight, None, 1, 1, backend="cpu"), torch.nn.functional.gelu(x), torch.float32)


ISA_ORDER = ("default", "avx2", "avx512")


@pytest.mark.parametrize("cap", ISA_ORDER)
def test_every_isa_path_matches(cap):
    """PVTV2_FAST_CPU_ISA caps the instruction set, so every compiled path runs here (those the CPU has): the
    portable one, AVX2 and AVX-512. Channel counts put work in each path's paired, single-vector and scalar-tail
    loops (8- and 16-lane); checked in a subprocess, since the ISA is chosen once per process."""
    native = _ext.cpu_isa()
    expected = ISA_ORDER[min(ISA_ORDER.index(native), ISA_ORDER.index(cap))]
    code = (f"import torch; from pvtv2_fast import ops, _ext; assert _ext.cpu_isa() == {expected!r}, _ext.cpu_isa()\n"
            "for c in (21, 40, 67):\n"
            "    x = torch.randn(2, 63, c); w = torch.randn(c, 1, 3, 3); b = torch.randn(c)\n"
            "    e = (ops.dwconv_gelu(x, w, b, 7, 9, True, backend='cpu') - "
            "ops.dwconv_gelu_reference(x, w, b, 7, 9, True)).abs().max().item()\n"
            "    p = (ops.linear_sra_pool(x, 7, 9, backend='cpu') - "
            "ops.linear_sra_pool_reference(x, 7, 9, 7)).abs().max().item()\n"
            "    assert e < 1e-5 and p < 1e-6, (c, e, p)\n"
            "print('ok')")
    env = dict(os.environ, PVTV2_FAST_CPU_ISA=cap)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_unknown_isa_name_is_an_error():
    code = "from pvtv2_fast import _ext; _ext.cpu_isa()"
    env = dict(os.environ, PVTV2_FAST_CPU_ISA="sse9")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "PVTV2_FAST_CPU_ISA must be one of default, avx2, avx512" in out.stderr


def test_registration_opcheck():
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(torch.ops.pvtv2_fast_C.dwconv_gelu.default,
                          (_randn(1, 45, 16), _randn(16, 1, 3, 3), _randn(16), 5, 9, True), test_utils=checks)
    torch.library.opcheck(torch.ops.pvtv2_fast_C.adaptive_pool_tokens.default, (_randn(1, 45, 16), 5, 9, 7),
                          test_utils=checks)


def test_bad_input_is_rejected_by_the_kernel():
    with pytest.raises(RuntimeError, match="not a 3x3 map"):
        torch.ops.pvtv2_fast_C.dwconv_gelu(torch.randn(1, 10, 4), torch.randn(4, 1, 3, 3), None, 3, 3, False)
    with pytest.raises(RuntimeError, match="supports float32, bfloat16 and float16, got Double"):
        torch.ops.pvtv2_fast_C.adaptive_pool_tokens(torch.randn(1, 9, 4, dtype=torch.float64), 3, 3, 7)


@pytest.mark.parametrize("preset,overrides", [("b0", {}), ("b2_linear", dict(depths=[1, 2, 1, 1]))],
                         ids=["b0", "b2_linear"])
def test_fast_model_on_cpu_backend(preset, overrides):
    model = randomize_(PvtV2ForImageClassification(PvtV2Config.from_preset(preset, num_labels=5, **overrides)))
    model.eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        ref = model(x, output_hidden_states=True)
        fast = model.set_fast(True, backend="cpu")(x, output_hidden_states=True)
    torch.testing.assert_close(fast.logits, ref.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x).logits, fast.logits)
    exported = torch.export.export(model, (x,))
    assert any("pvtv2_fast_C.conv_ffn" in str(n.target) for n in exported.graph.nodes)


def test_cuda_sources_were_compiled_for_sm80_and_sm90():
    """When built with CUDA (the CI build is), the extension carries sm_80 and sm_90 machine code."""
    if not _ext.has_kernel("dwconv_gelu", "cuda"):
        pytest.skip("extension built without CUDA (no nvcc or CPU-only torch)")
    import triton

    from pvtv2_fast import _C

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    out = subprocess.run([tool, "--list-elf", _C.__file__], capture_output=True, text=True)
    assert "sm_80" in out.stdout and "sm_90" in out.stdout, out.stdout + out.stderr
