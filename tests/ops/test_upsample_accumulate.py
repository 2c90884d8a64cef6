"""``ops.upsample_accumulate`` on every fused backend this machine has, against a sum of ``F.interpolate``s: the
folded decode head's per-stage maps (odd, non-square stage sizes of every Segformer resolution ratio) resampled to
stage 1's size and summed, plus bias and ReLU."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from op_cases import DTYPE_IDS, DTYPES, HYPOTHESIS, close, fused_backends, randn, require

from pvtv2_fast import ops
from pvtv2_fast.streaming import LinearAxis

BACKENDS = fused_backends("upsample_accumulate")
STAGES = [(25, 33), (13, 17), (7, 9), (4, 5)]  # the stage maps of a 97×131 image


def taps_for(x: torch.Tensor, size):
    return (
        *LinearAxis.build(x.shape[1], size[0], x.device).taps(),
        *LinearAxis.build(x.shape[2], size[1], x.device).taps(),
    )


def expected(xs, size, bias, relu):
    """fp64: Σ F.interpolate(x) + bias, ReLU — the unfolded head's upsample-and-add, channels last."""
    acc = sum(
        F.interpolate(x.double().permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False) for x in xs
    ).permute(0, 2, 3, 1)
    acc = acc + (0 if bias is None else bias.double())
    return acc.relu() if relu else acc


def _run(backend, device, xs, size, bias=None, relu=True):
    taps = [taps_for(x, size) for x in xs]
    args = (xs, *[[t[k] for t in taps] for k in range(4)], bias, relu)
    require("upsample_accumulate", backend, args)
    return ops.upsample_accumulate(xs, taps, bias, relu, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("channels", [256, 19])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_decode_head_stages_sum(backend, device, channels, dtype):
    """Deepest stage first, as the folded head passes them; stage 1 is at the output size (identity taps)."""
    xs = [randn(2, h, w, channels, seed=h + channels, device=device, dtype=dtype) for h, w in reversed(STAGES)]
    bias = randn(channels, seed=1, device=device, dtype=dtype)
    got = _run(backend, device, xs, STAGES[0], bias)
    close(got, expected(xs, STAGES[0], bias, True).to(dtype), dtype, f"{backend} C={channels}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_band_of_rows_without_bias_or_relu(backend, device):
    """Output rows [r0, r1) from the source rows they touch, sliced in place out of taller maps (not contiguous
    for batch > 1), no bias, no ReLU: the same rows of the whole sum."""
    xs = [randn(3, h, w, 40, seed=h, device=device) for h, w in STAGES]
    size, (r0, r1) = (99, 131), (37, 61)
    bands, taps = [], []
    for x in xs:
        rows = LinearAxis.build(x.shape[1], size[0], device)
        lo, hi = rows.source_range(r0, r1)
        bands.append(x[:, lo:hi])
        taps.append((*rows.taps(r0, r1, lo), *LinearAxis.build(x.shape[2], size[1], device).taps()))
    args = (bands, *[[t[k] for t in taps] for k in range(4)], None, False)
    require("upsample_accumulate", backend, args)
    got = ops.upsample_accumulate(bands, taps, None, False, backend=backend)
    close(got, expected(xs, size, None, False)[:, r0:r1].float(), torch.float32, backend)


@HYPOTHESIS
@given(
    b=st.integers(1, 2),
    n=st.integers(1, 4),
    oh=st.integers(1, 40),
    ow=st.integers(1, 40),
    c=st.integers(1, 70),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(b, n, oh, ow, c, relu, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = [
        (int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))) for _ in range(n)
    ]
    for backend, device in [p.values for p in BACKENDS]:
        xs = [randn(b, h, w, c, seed=seed + i, device=device) for i, (h, w) in enumerate(sizes)]
        bias = randn(c, seed=seed, device=device)
        close(
            _run(backend, device, xs, (oh, ow), bias, relu),
            expected(xs, (oh, ow), bias, relu).float(),
            torch.float32,
            f"{backend} {sizes}→{oh}x{ow} C={c}",
        )


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_calls_needing_gradients_run_the_differentiable_reference(backend, device):
    xs = [randn(1, h, w, 8, seed=h, device=device).requires_grad_() for h, w in STAGES]
    bias = randn(8, device=device).requires_grad_()
    taps = [taps_for(x, STAGES[0]) for x in xs]
    out = ops.upsample_accumulate(xs, taps, bias, True, backend=backend)
    grads = torch.autograd.grad(out.square().sum(), xs + [bias])
    ref = expected(xs, STAGES[0], bias, True).float()  # differentiable: casts and interpolate
    ref_grads = torch.autograd.grad(ref.square().sum(), xs + [bias])
    close(out.detach(), ref.detach(), torch.float32, "forward with grad")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4, msg=lambda m, i=i: f"grad {i}: {m}")
