"""``ops.layer_norm`` over token channels, on every fused backend this machine has (the C++ CPU kernel; on CUDA
PyTorch's own kernel stands in), against PyTorch's ``F.layer_norm`` in fp32."""

import pytest
import torch
from op_cases import DTYPE_IDS, DTYPES, check_compile_and_export, close, fused_backends, randn, require, stage_cases

from pvtv2_fast import ops
from pvtv2_fast.modules import TokenLayerNorm
from pvtv2_fast.modules.layer_norm import FUSED_MIN_TOKENS

CASES = stage_cases()
BACKENDS = fused_backends("layer_norm")


def _check(backend, device, x, weight, bias, eps=1e-6, dtype=torch.float32, what="layer_norm"):
    x, weight, bias = (None if t is None else t.to(device) for t in (x, weight, bias))
    require("layer_norm", backend, (x, weight, bias, eps))
    out = ops.layer_norm(x, weight, bias, eps, backend=backend)
    ref = ops.layer_norm_reference(x.float(), *(None if t is None else t.float() for t in (weight, bias)), eps)
    close(out, ref, dtype, what)


# Inputs of mean 1 and spread 3 (a residual stream's scale), so the centring matters; fp32: the moments are fp32
# sums over C <= 512 values, ~1e-6 of outputs of order one.
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_preset_stages(backend, device, case, dtype):
    _, c, _, h, w, *_ = case
    x = 1 + 3 * randn(2, h * w, c, seed=c, dtype=dtype)
    _check(backend, device, x, randn(c, seed=1, dtype=dtype), randn(c, seed=2, dtype=dtype), dtype=dtype, what=case[0])


@pytest.mark.parametrize("affine", ["weight-bias", "weight", "none"])
@pytest.mark.parametrize("b,n,c", [(1, 1, 1), (3, 7, 5), (2, 19, 17), (1, 4, 33), (2, 3, 100), (1, 2, 1000)])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_odd_shapes(backend, device, b, n, c, affine):
    """C = 1 (variance 0: the output is the bias), channel counts off the 8/16-lane vectors (scalar tails), one
    token, batch > 1, a long row; with and without weight and bias."""
    weight = randn(c, seed=3) if affine != "none" else None
    bias = randn(c, seed=4) if affine == "weight-bias" else None
    _check(backend, device, 5 * randn(b, n, c, seed=n * c), weight, bias, eps=1e-5)


@pytest.mark.parametrize("c", [32, 40, 64, 128, 320])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_a_rows_result_does_not_depend_on_its_neighbours(backend, device, c):
    """The C++ kernel normalises rows in groups (4, 2 or 1 at a time, by width): each row's bits are those it gets
    alone, whatever group it falls in."""
    x = (3 * randn(2, 11, c) + 1).to(device)
    w, b = randn(c, seed=1).to(device), randn(c, seed=2).to(device)
    require("layer_norm", backend, (x, w, b, 1e-6))
    whole = ops.layer_norm(x, w, b, 1e-6, backend=backend)
    rows = torch.cat([ops.layer_norm(x[:, i : i + 1], w, b, 1e-6, backend=backend) for i in range(11)], dim=1)
    assert torch.equal(whole, rows)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_and_constant_rows(backend, device):
    x = randn(2, 30, 48, seed=5)[:, ::3, 8:40]  # strided tokens and channels
    x[0, 0] = 7.0  # a constant row: variance 0, normalised to 0, eps keeps it finite
    _check(backend, device, x, randn(32, seed=6), randn(32, seed=7))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradients_are_the_references(backend, device):
    x = randn(2, 11, 24, seed=8, device=device).requires_grad_()
    w, b = randn(24, seed=9, device=device).requires_grad_(), randn(24, seed=10, device=device).requires_grad_()
    grad = randn(2, 11, 24, seed=11, device=device)
    got = torch.autograd.grad(ops.layer_norm(x, w, b, 1e-6, backend=backend), [x, w, b], grad)
    expected = torch.autograd.grad(ops.layer_norm_reference(x, w, b, 1e-6), [x, w, b], grad)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_and_export_keep_the_fused_node(backend, device):
    x, w, b = randn(1, 35, 16, seed=12, device=device), randn(16, seed=13, device=device), None
    check_compile_and_export(lambda t: ops.layer_norm(t, w, b, 1e-6, backend=backend), x, "pvtv2_fast_C.layer_norm")


@pytest.mark.parametrize("tokens", [FUSED_MIN_TOKENS - 1, FUSED_MIN_TOKENS])
def test_module_routes_large_maps_to_the_op(tokens, monkeypatch):
    """TokenLayerNorm is nn.LayerNorm (same state_dict); in fast mode maps of FUSED_MIN_TOKENS tokens and more go
    through ops.layer_norm, smaller ones (where its call overhead loses) through PyTorch's."""
    ln = TokenLayerNorm(64, eps=1e-6)
    assert isinstance(ln, torch.nn.LayerNorm) and set(ln.state_dict()) == {"weight", "bias"}
    ln.fast = True
    calls = []
    real = ops.layer_norm
    monkeypatch.setattr(ops, "layer_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = randn(1, tokens, 64, device="cpu")
    with torch.no_grad():
        out = ln(x)
    assert calls == ([1] if tokens >= FUSED_MIN_TOKENS else [])
    close(out, torch.nn.functional.layer_norm(x, (64,), ln.weight, ln.bias, 1e-6), torch.float32)
