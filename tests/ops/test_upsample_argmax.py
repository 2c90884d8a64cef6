"""``ops.upsample_argmax`` on every fused backend this machine has, against ``F.interpolate(bilinear) + argmax``.

Exactness: backends round the resampled logits differently in the last bit (fused multiply-adds, summation order),
which can only change the label where the top two logits are within a few ulps. Every case therefore checks: every
label whose top-2 gap in the fp64 reference exceeds ``GAP`` is equal, and labels differ on at most 0.01% of pixels.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from op_cases import DTYPE_IDS, DTYPES, HYPOTHESIS, fused_backends, randn, require

from pvtv2_fast import ops
from pvtv2_fast.streaming import LinearAxis

BACKENDS = fused_backends("upsample_argmax")
GAP = 1e-4  # well above fp32 rounding of logits of magnitude ~5 (ulp 4.8e-7), the near-tie bound


def taps(in_size: int, out_size: int, start: int = 0, stop=None, offset: int = 0, device="cpu"):
    """``(index, weight)`` of output rows ``[start, stop)`` of bilinear ``in_size → out_size`` for a band whose
    first row is source row ``offset``."""
    return LinearAxis.build(in_size, out_size, device).taps(start, stop, offset)


def check_labels(got: torch.Tensor, x: torch.Tensor, size, what: str, rows=None) -> None:
    """``got`` (B, R, W) against the fp64 reference ``F.interpolate(x) → argmax`` (rows ``[r0, r1)`` of it)."""
    ref = F.interpolate(x.double().permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    if rows is not None:
        ref = ref[:, :, rows[0] : rows[1]]
    assert tuple(got.shape) == (ref.shape[0], ref.shape[2], ref.shape[3]), what
    top2 = ref.topk(min(2, ref.shape[1]), dim=1).values
    gap = top2[:, 0] - top2[:, -1] if ref.shape[1] > 1 else torch.full_like(top2[:, 0], float("inf"))
    differ = got.long().cpu() != ref.argmax(1).cpu()
    clear = (gap > GAP).cpu()
    assert not (differ & clear).any(), (
        f"{what}: {int((differ & clear).sum())} labels differ where the top-2 gap > {GAP}"
    )
    assert differ.float().mean() <= 1e-4, f"{what}: {int(differ.sum())} of {differ.numel()} labels differ"


def _run(backend, device, x, size, dtype=torch.int64, rows=None, offset=0):
    h_in = x.shape[1] + offset if rows is None else None
    ri, rw = taps(h_in or rows[2], size[0], *(rows[:2] if rows else (0, None)), offset=offset, device=device)
    ci, cw = taps(x.shape[2], size[1], device=device)
    args = (x, ri, rw, ci, cw, dtype)
    require("upsample_argmax", backend, args)
    return ops.upsample_argmax(*args, backend=backend)


# (in h, in w, out h, out w, labels): Segformer's ×4 at odd sizes, non-integer scales, down-sampling, identity,
# one label, more labels than a vector, label counts around the vector widths (8, 16).
SHAPES = [
    (13, 17, 52, 68, 150),
    (25, 33, 97, 131, 19),
    (5, 3, 20, 11, 7),
    (7, 9, 25, 33, 16),
    (9, 9, 9, 9, 17),
    (12, 10, 5, 7, 33),
    (4, 4, 16, 16, 1),
    (1, 1, 3, 5, 8),
    (6, 5, 23, 19, 300),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_labels_match_interpolate_argmax(backend, device, shape, dtype):
    h, w, oh, ow, labels = shape
    x = randn(2, h, w, labels, seed=h * w + labels, scale=3.0, device=device).to(dtype)
    got = _run(backend, device, x, (oh, ow))
    check_labels(got, x.float(), (oh, ow), f"{backend} {shape} {dtype}")


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_label_dtypes(backend, device, label_dtype):
    labels = 256 if label_dtype == torch.uint8 else 300
    x = randn(1, 6, 7, labels, seed=5, device=device)
    x[:, :3, :, -1] += 10.0  # the last label (past int8's range) wins the top half: it must survive the cast
    got = _run(backend, device, x, (24, 27), dtype=label_dtype)
    assert got.dtype == label_dtype
    assert got.long().max() == labels - 1
    check_labels(got, x, (24, 27), f"{backend} {label_dtype}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bands_of_rows_read_a_slice_in_place(backend, device):
    """Output rows [r0, r1) from the band of source rows they touch, sliced (not copied) out of a taller map with
    batch > 1: the band is then not contiguous, and the result equals the same rows of the whole resize."""
    full = randn(3, 25, 33, 150, seed=9, device=device)
    size = (100, 131)
    for r0, r1 in [(0, 7), (37, 61), (93, 100)]:
        axis = LinearAxis.build(25, size[0])
        lo, hi = axis.source_range(r0, r1)
        band = full[:, lo:hi]
        assert not band.is_contiguous()
        got = _run(backend, device, band, size, rows=(r0, r1, 25), offset=lo)
        check_labels(got, full, size, f"{backend} rows {r0}:{r1}", rows=(r0, r1))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ties_take_the_first_label_and_nan_wins(backend, device):
    x = torch.zeros(1, 4, 4, 20, device=device)
    x[..., 3] = x[..., 11] = 1.0  # exact tie: label 3
    got = _run(backend, device, x, (8, 8))
    assert (got == 3).all()
    x[0, 1, 2, 7] = float("nan")  # every output reading source pixel (1, 2) is NaN at label 7
    got = _run(backend, device, x, (8, 8))
    ref = F.interpolate(x.permute(0, 3, 1, 2), size=(8, 8), mode="bilinear", align_corners=False).argmax(1)
    assert (ref == 7).any()
    torch.testing.assert_close(got, ref)


@HYPOTHESIS
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    oh=st.integers(1, 70),
    ow=st.integers(1, 70),
    labels=st.integers(1, 70),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(b, h, w, oh, ow, labels, seed):
    for backend, device in [p.values for p in BACKENDS]:
        x = randn(b, h, w, labels, seed=seed, scale=3.0, device=device)
        check_labels(_run(backend, device, x, (oh, ow)), x, (oh, ow), f"{backend} {b}x{h}x{w}x{labels}→{oh}x{ow}")


def test_reference_is_interpolate_then_argmax():
    x = randn(2, 13, 17, 150, seed=3, scale=3.0, device="cpu")
    ri, rw = taps(13, 52)
    ci, cw = taps(17, 68)
    check_labels(ops.upsample_argmax_reference(x, ri, rw, ci, cw, torch.int64), x, (52, 68), "reference")
