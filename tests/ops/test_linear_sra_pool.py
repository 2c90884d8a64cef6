"""``ops.linear_sra_pool`` on every fused backend this machine has, against ``F.adaptive_avg_pool2d``."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from op_cases import DTYPE_IDS, DTYPES, HYPOTHESIS, close, fused_backends, randn, require

from pvtv2_fast import ops

BACKENDS = fused_backends("linear_sra_pool")


def _check(backend, device, x, h, w, p=7, dtype=torch.float32, what="linear_sra_pool"):
    x = x.to(device)
    require("linear_sra_pool", backend, (x, h, w, p))
    close(
        ops.linear_sra_pool(x, h, w, p, backend=backend), ops.linear_sra_pool_reference(x.float(), h, w, p), dtype, what
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("h,w", [(25, 33), (13, 17), (7, 9), (4, 5), (1, 1), (3, 11), (7, 7), (14, 14), (30, 17)])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_stage_maps_and_maps_smaller_than_the_pool(backend, device, h, w, dtype):
    """Every preset's stage maps at an odd image size, and maps smaller than 7×7 (bins then overlap)."""
    for c in (13, 64, 320):
        _check(backend, device, randn(2, h * w, c, dtype=dtype, seed=h * w + c), h, w, dtype=dtype, what=f"{h}×{w}×{c}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_other_pool_sizes_and_strides(backend, device):
    _check(backend, device, randn(2, 9 * 13, 2 * 96, seed=7)[..., ::2], 9, 13, p=4)  # channel stride 2


@HYPOTHESIS
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    c=st.integers(1, 130),
    p=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(b, h, w, c, p, seed):
    for backend, device in [p_.values for p_ in BACKENDS]:
        _check(backend, device, randn(b, h * w, c, seed=seed), h, w, p, what=f"{backend} {b}x{h}x{w}x{c} P={p}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradients_are_the_references(backend, device):
    x = randn(2, 45, 16, seed=2, device=device).requires_grad_()
    require("linear_sra_pool", backend, (x, 5, 9, 7))
    got = torch.autograd.grad(ops.linear_sra_pool(x, 5, 9, backend=backend).square().sum(), x)
    ref = torch.autograd.grad(ops.linear_sra_pool_reference(x, 5, 9, 7).square().sum(), x)
    torch.testing.assert_close(got, ref)
