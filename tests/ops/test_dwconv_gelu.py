"""``ops.dwconv_gelu`` on every fused backend this machine has, against the PyTorch reference."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from op_cases import DTYPE_IDS, DTYPES, HYPOTHESIS, close, fused_backends, randn, require, stage_cases

from pvtv2_fast import ops

CASES = stage_cases()
BACKENDS = fused_backends("dwconv_gelu")


def _check(backend, device, x, weight, bias, h, w, relu, dtype=torch.float32, what="dwconv_gelu"):
    x, weight = x.to(device), weight.to(device)
    bias = None if bias is None else bias.to(device)
    require("dwconv_gelu", backend, (x, weight, bias, h, w, relu))
    out = ops.dwconv_gelu(x, weight, bias, h, w, relu_input=relu, backend=backend)
    ref = ops.dwconv_gelu_reference(x.float(), weight.float(), None if bias is None else bias.float(), h, w, relu)
    close(out, ref, dtype, what)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_preset_stages(backend, device, case, dtype):
    _, _, _, h, w, _, ffn, linear = case
    x = randn(2, h * w, ffn, dtype=dtype, seed=ffn)
    _check(
        backend,
        device,
        x,
        randn(ffn, 1, 3, 3, dtype=dtype, seed=1, scale=0.3),
        randn(ffn, dtype=dtype, seed=2),
        h,
        w,
        linear,
        dtype,
    )


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("h,w,c", [(7, 9, 40), (15, 17, 13), (1, 1, 8), (1, 23, 17), (19, 1, 7), (2, 2, 3)])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_odd_maps_and_channel_tails(backend, device, h, w, c, relu):
    """1-pixel maps (tap clipping), channel counts off the vector widths (scalar tails), batch 3."""
    _check(backend, device, 3 * randn(3, h * w, c, seed=h), randn(c, 1, 3, 3, seed=w), randn(c, seed=c), h, w, relu)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs_and_no_bias(backend, device):
    x = randn(2, 2 * 63, 48, seed=8)[:, ::2]  # token stride 2
    weight = randn(48, 1, 3, 6, seed=9)[..., ::2]  # (48, 1, 3, 3), column stride 2
    assert not (x.is_contiguous() or weight.is_contiguous())
    _check(backend, device, x, weight, None, 7, 9, False)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gelu_tails_are_exact_enough(backend, device):
    """GELU alone (identity conv) at large |x|, zero and around the bend: the kernels' erf is accurate there, and
    far out GELU is x or 0 to 1e-6 absolute however large |x| (an erf tail clamped too early leaves x·1e-8)."""
    values = torch.tensor([-1e3, -100.0, -30.0, -13.0, -8.0, -5.0, -3.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 8.0,
                           13.0, 30.0, 100.0, 1e3])  # fmt: skip
    weight = torch.zeros(values.numel(), 1, 3, 3)
    weight[:, 0, 1, 1] = 1.0
    out = _check(backend, device, values.view(1, 1, -1), weight, None, 1, 1, False)
    torch.testing.assert_close(out.cpu(), torch.nn.functional.gelu(values.view(1, 1, -1)), atol=1e-6, rtol=1e-6)


@HYPOTHESIS
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    c=st.integers(1, 130),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(b, h, w, c, relu, seed):
    for backend, device in [p.values for p in BACKENDS]:
        _check(
            backend,
            device,
            randn(b, h * w, c, seed=seed),
            randn(c, 1, 3, 3, seed=seed + 1),
            randn(c, seed=seed + 2),
            h,
            w,
            relu,
            what=f"{backend} {b}x{h}x{w}x{c}",
        )


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradients_are_the_references(backend, device):
    x = randn(1, 35, 16, seed=2, device=device).requires_grad_()
    weight = randn(16, 1, 3, 3, seed=3, device=device).requires_grad_()
    bias = randn(16, seed=4, device=device).requires_grad_()
    require("dwconv_gelu", backend, (x, weight, bias, 5, 7, True))
    got = torch.autograd.grad(
        ops.dwconv_gelu(x, weight, bias, 5, 7, True, backend=backend).square().sum(), (x, weight, bias)
    )
    ref = torch.autograd.grad(ops.dwconv_gelu_reference(x, weight, bias, 5, 7, True).square().sum(), (x, weight, bias))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_sees_one_opaque_node(backend, device):
    x, weight, bias = randn(1, 45, 16, device=device), randn(16, 1, 3, 3, seed=1, device=device), None
    require("dwconv_gelu", backend, (x, weight, bias, 5, 9, False))
    fn = torch.compile(
        lambda t: ops.dwconv_gelu(t, weight, bias, 5, 9, backend=backend), fullgraph=True, backend="aot_eager"
    )
    close(fn(x), ops.dwconv_gelu_reference(x, weight, bias, 5, 9, False), torch.float32)
