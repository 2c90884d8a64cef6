"""``ops.conv_ffn``: the whole convolutional FFN as one op. The C++ CPU kernel (band-streamed, csrc/cpu/conv_ffn.cpp)
and the compositions of the other backends against the PyTorch reference, plus registration and bad input."""

import os
import subprocess
import sys

import pytest
import torch

from pvtv2_fast import _ext, ops
from pvtv2_fast.modules import ConvFeedForward
from op_cases import DTYPE_IDS, DTYPES, close, stage_cases

needs_ext = pytest.mark.skipif(os.environ.get("PVTV2_FAST_NO_EXT") == "1", reason="extension build turned off")
CASES = stage_cases()


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


def _weights(c_in, hidden, c_out, seed=0, bias=True, dtype=torch.float32):
    """Weights scaled like a trained layer's (outputs of order one), so tolerances are relative to O(1) values."""
    w = dict(fc1_weight=_randn(hidden, c_in, seed=seed, scale=c_in ** -0.5),
             fc1_bias=_randn(hidden, seed=seed + 1, scale=0.5) if bias else None,
             dw_weight=_randn(hidden, 1, 3, 3, seed=seed + 2, scale=0.3),
             dw_bias=_randn(hidden, seed=seed + 3, scale=0.5) if bias else None,
             fc2_weight=_randn(c_out, hidden, seed=seed + 4, scale=hidden ** -0.5),
             fc2_bias=_randn(c_out, seed=seed + 5, scale=0.5) if bias else None)
    return {k: None if v is None else v.to(dtype) for k, v in w.items()}


def _args(w):
    return (w["fc1_weight"], w["fc1_bias"], w["dw_weight"], w["dw_bias"], w["fc2_weight"], w["fc2_bias"])


def _reference(x, w, h, width, relu):
    """fp32 reference from the same (possibly rounded) inputs."""
    f = {k: None if v is None else v.float() for k, v in w.items()}
    return ops.conv_ffn_reference(x.float(), *_args(f), h, width, relu)


@needs_ext
def test_kernel_is_registered():
    assert _ext.has_kernel("conv_ffn", "cpu"), "torch's BLAS (sgemm_) did not resolve: no CPU conv_ffn kernel"


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpu_kernel_preset_stages(case, dtype):
    _, c, _, h, w, _, ffn, linear = case
    x = _randn(2, h * w, c, seed=ffn, dtype=dtype)
    weights = _weights(c, ffn, c, seed=c, dtype=dtype)
    out = ops.conv_ffn(x, *_args(weights), h, w, relu_input=linear, backend="cpu")
    close(out, _reference(x, weights, h, w, linear), dtype, f"{case[0]} {dtype}")


@needs_ext
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("b,h,w,c_in,hidden,c_out", [
    (1, 1, 1, 8, 16, 8), (3, 1, 23, 5, 13, 7), (2, 19, 1, 17, 40, 3), (1, 2, 2, 3, 9, 3), (2, 7, 9, 40, 100, 40),
    (1, 64, 3, 16, 24, 16),
])
def test_cpu_kernel_odd_shapes(b, h, w, c_in, hidden, c_out, bias, relu):
    """1-pixel and 1-row maps (tap clipping, one band), channel counts off the 8-lane width (scalar tails), c_out
    different from c_in, batch > 1 (bands of several images), tall maps (many bands per thread)."""
    x = _randn(b, h * w, c_in, seed=h * w + c_in)
    weights = _weights(c_in, hidden, c_out, seed=hidden, bias=bias)
    close(ops.conv_ffn(x, *_args(weights), h, w, relu, backend="cpu"), _reference(x, weights, h, w, relu),
          torch.float32)


@needs_ext
def test_band_sizes_and_thread_counts():
    """One-row bands (a 3-row ring that wraps every band), odd band sizes and one band per image, on 1 and 3
    threads: every way a thread's bands can carry fc1 rows over (PVTV2_FAST_FFN_BAND_KB is read once, so each
    setting runs in its own process)."""
    code = ("import sys, torch; from pvtv2_fast import ops; torch.set_num_threads(int(sys.argv[1])); "
            "g = torch.Generator().manual_seed(0); r = lambda *s: torch.randn(*s, generator=g) * 0.3; "
            "x = r(3, 37 * 11, 24); a = (r(72, 24), r(72), r(72, 1, 3, 3), r(72), r(20, 72), r(20)); "
            "y = ops.conv_ffn(x, *a, 37, 11, True, backend='cpu'); e = ops.conv_ffn_reference(x, *a, 37, 11, True); "
            "d = (y - e).abs().max().item(); assert d < 1e-5, d; print('ok')")
    for kb in ("1", "7", "1000000"):
        for threads in ("1", "3"):
            env = dict(os.environ, PVTV2_FAST_FFN_BAND_KB=kb)
            out = subprocess.run([sys.executable, "-c", code, threads], capture_output=True, text=True, env=env)
            assert out.returncode == 0 and "ok" in out.stdout, (kb, threads, out.stderr[-2000:])


@needs_ext
def test_non_contiguous_inputs():
    x = _randn(2, 2 * 63, 24, seed=3)[:, ::2]
    w = _weights(24, 48, 24, seed=4)
    w["fc1_weight"] = w["fc1_weight"].t().contiguous().t()  # (48, 24) with transposed strides
    w["dw_weight"] = w["dw_weight"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    close(ops.conv_ffn(x, *_args(w), 7, 9, backend="cpu"), _reference(x.contiguous(), w, 7, 9, False), torch.float32)


@needs_ext
def test_gradients_match_the_reference():
    x = _randn(2, 35, 16, seed=5).requires_grad_()
    w = {k: v.requires_grad_() for k, v in _weights(16, 32, 16, seed=6).items()}
    grad = _randn(2, 35, 16, seed=7)
    out = ops.conv_ffn(x, *_args(w), 5, 7, True, backend="cpu")
    got = torch.autograd.grad(out, [x, *w.values()], grad)
    ref = ops.conv_ffn_reference(x, *_args(w), 5, 7, True)
    expected = torch.autograd.grad(ref, [x, *w.values()], grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_ext
def test_registration_opcheck():
    w = _weights(16, 24, 8, seed=8)
    torch.library.opcheck(torch.ops.pvtv2_fast_C.conv_ffn.default, (_randn(2, 45, 16), *_args(w), 5, 9, True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@needs_ext
def test_compile_and_export_keep_one_node():
    w = _weights(16, 32, 16, seed=9)

    def f(x):
        return ops.conv_ffn(x, *_args(w), 5, 7)

    x = _randn(1, 35, 16, seed=10)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="eager")(x), f(x))

    class M(torch.nn.Module):
        def forward(self, x):
            return f(x)

    exported = torch.export.export(M(), (x,))
    assert [n for n in exported.graph.nodes if "pvtv2_fast_C.conv_ffn" in str(n.target)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_composition_backends(backend):
    """Off the C++ kernel the op is fc1 → dwconv_gelu(backend) → fc2 (on CPU, "triton" runs interpreted)."""
    if backend == "triton" and not ops.triton_status()[1]:
        pytest.skip("Triton kernels not interpreted in this process")
    x = _randn(2, 7 * 9, 24, seed=11)
    w = _weights(24, 40, 24, seed=12)
    close(ops.conv_ffn(x, *_args(w), 7, 9, True, backend=backend), _reference(x, w, 7, 9, True), torch.float32)


def test_bad_input_names_the_problem():
    w = _weights(16, 32, 16)
    with pytest.raises(ValueError, match="not a 5×7 map"):
        ops.conv_ffn(torch.randn(1, 36, 16), *_args(w), 5, 7)
    with pytest.raises(ValueError, match=r"fc2_weight must be \(16, 32\)"):
        bad = dict(w, fc2_weight=torch.randn(16, 31))
        ops.conv_ffn(torch.randn(1, 35, 16), *_args(bad), 5, 7)
    with pytest.raises(ValueError, match=r"fc1_weight must be \(32, 15\) for 15 input"):
        ops.conv_ffn(torch.randn(1, 35, 15), *_args(w), 5, 7)
    with pytest.raises(ValueError, match="dw_bias must share x's dtype"):
        ops.conv_ffn(torch.randn(1, 35, 16), *_args(dict(w, dw_bias=w["dw_bias"].double())), 5, 7)
    with pytest.raises(TypeError, match="floating point"):
        ops.conv_ffn(torch.ones(1, 35, 16, dtype=torch.int32), *_args(w), 5, 7)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.conv_ffn(torch.randn(1, 35, 16), *_args(w), 5, 7, backend="nope")


@needs_ext
def test_kernel_rejects_bad_input_itself():
    w = _weights(16, 32, 16)
    with pytest.raises(RuntimeError, match="dw_weight must be \\(32, 1, 3, 3\\)"):
        torch.ops.pvtv2_fast_C.conv_ffn(torch.randn(1, 35, 16), w["fc1_weight"], None, torch.randn(31, 1, 3, 3), None,
                                        w["fc2_weight"], None, 5, 7, False)
    with pytest.raises(RuntimeError, match="supports float32, bfloat16 and float16, got Double"):
        d = {k: v.double() for k, v in w.items()}
        torch.ops.pvtv2_fast_C.conv_ffn(torch.randn(1, 35, 16, dtype=torch.float64), *_args(d), 5, 7, False)


def test_module_keeps_dropout_unfused_when_training():
    """Active dropout needs the widened state: the fast FFN then runs unfused (and still trains)."""
    ffn = ConvFeedForward(16, 32, dropout=0.5)
    ffn.fast = True
    x = _randn(2, 35, 16, seed=13)
    torch.manual_seed(0)
    a = ffn(x, 5, 7)
    ffn.fast = False
    torch.manual_seed(0)
    b = ffn(x, 5, 7)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ffn.eval()
    ffn.fast = True
    torch.testing.assert_close(ffn(x, 5, 7), ops.conv_ffn_reference(
        x, ffn.dense1.weight, ffn.dense1.bias, ffn.dwconv.dwconv.weight, ffn.dwconv.dwconv.bias, ffn.dense2.weight,
        ffn.dense2.bias, 5, 7, False), atol=1e-5, rtol=1e-5)
