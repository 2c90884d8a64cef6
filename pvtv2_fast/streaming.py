"""Row-band streaming for high-resolution dense outputs: PyTorch's bilinear resampling split into bands of rows,
and a cache that computes rows of a large map on demand.

Everything here works on **channels-last row bands** ``(B, rows, W, C)``: bands of rows are then contiguous
slices, the channel axis is the matmul's inner axis, and an argmax over channels reduces the innermost axis.

Bilinear resampling follows ``F.interpolate(x, size, mode="bilinear", align_corners=False)``: it is separable,
so an output row band needs only the source rows its indices touch, and resampling band by band gives the
same values as resampling the whole map (up to the order of two float additions: |Δ| ~ 1 ulp).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LinearAxis:
    """Source indices and weights of one axis of bilinear resampling ``in_size → out_size`` (align_corners=False).

    Output position ``d`` reads ``w0[d]·x[i0[d]] + w1[d]·x[i1[d]]``. ``identity`` when the sizes match (PyTorch
    then reads ``x[d]`` with weight 1, so skipping the arithmetic is exact).
    """

    i0: torch.Tensor  # (out_size,) int64
    i1: torch.Tensor  # (out_size,) int64
    w0: torch.Tensor  # (out_size,) float32
    w1: torch.Tensor  # (out_size,) float32
    identity: bool
    bounds: tuple  # (i0, i1) as Python lists: band bounds without a device round trip per band

    @classmethod
    def build(
        cls, in_size: int, out_size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> "LinearAxis":
        """``dtype``: the data's; PyTorch computes the weights in float32 for every dtype but float64."""
        if in_size < 1 or out_size < 1:
            raise ValueError(f"bilinear resampling needs positive sizes, got {in_size} → {out_size}")
        if dtype == torch.float64:
            # The same arithmetic in float64; the fused multiply-add's single rounding done exactly in rationals.
            scale = Fraction(in_size / out_size)
            src = torch.tensor(
                [float(scale * (d + Fraction(1, 2)) - Fraction(1, 2)) for d in range(out_size)], dtype=torch.float64
            ).clamp_min(0)
            return cls._from_source(src, in_size, out_size, device)
        # PyTorch's CPU and CUDA kernels (area_pixel_compute_source_index + guard_index_and_lambda), in float32:
        # scale = in/out; src = scale·(dst + 0.5) − 0.5 clamped at 0; i0 = min(floor(src), in − 1);
        # λ1 = clamp(src − i0, 0, 1); i1 = i0 + 1 unless i0 is the last row; λ0 = 1 − λ1.
        scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
        dst = torch.arange(out_size, dtype=torch.float32)
        # The compilers contract scale·(dst + 0.5) − 0.5 into one fused multiply-add (gcc's default
        # -ffp-contract=fast in the vectorised CPU kernels, nvcc's default on CUDA): one rounding, which float64
        # arithmetic reproduces exactly (the product of two floats is exact in a double).
        src = (scale.double() * (dst + 0.5).double() - 0.5).float().clamp_min(0)
        return cls._from_source(src, in_size, out_size, device)

    @classmethod
    def _from_source(cls, src: torch.Tensor, in_size: int, out_size: int, device) -> "LinearAxis":
        i0 = src.floor().long().clamp_max(in_size - 1)
        w1 = (src - i0.to(src.dtype)).clamp(0, 1)
        i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
        w0 = 1 - w1
        return cls(
            i0.to(device), i1.to(device), w0.to(device), w1.to(device), in_size == out_size, (i0.tolist(), i1.tolist())
        )

    def taps(self, start: int = 0, stop: int | None = None, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, weight)``, each ``(stop − start, 2)``: the two source taps (relative to source row ``offset``)
        and weights of outputs ``[start, stop)``, the form :func:`pvtv2_fast.ops.upsample_argmax` takes."""
        stop = self.i0.numel() if stop is None else stop
        index = torch.stack([self.i0[start:stop], self.i1[start:stop]], 1)
        return index - offset if offset else index, torch.stack([self.w0[start:stop], self.w1[start:stop]], 1)

    def source_range(self, start: int, stop: int) -> tuple[int, int]:
        """The source rows ``[lo, hi)`` that outputs ``[start, stop)`` read (indices are non-decreasing)."""
        return self.bounds[0][start], self.bounds[1][stop - 1] + 1

    def resample(
        self, x: torch.Tensor, dim: int, start: int = 0, stop: int | None = None, offset: int = 0
    ) -> torch.Tensor:
        """Outputs ``[start, stop)`` along ``dim`` of ``x``, whose index 0 along ``dim`` is source row ``offset``.

        ``x`` (any shape) → same shape with ``stop − start`` along ``dim``; computed in ``x``'s dtype.
        """
        stop = self.i0.numel() if stop is None else stop
        if self.identity:
            return x.narrow(dim, start - offset, stop - start)
        shape = [1] * x.ndim
        shape[dim] = stop - start
        w0 = self.w0[start:stop].to(x.dtype).view(shape)
        w1 = self.w1[start:stop].to(x.dtype).view(shape)
        out = x.index_select(dim, self.i0[start:stop] - offset).mul_(w0)
        return out.addcmul_(x.index_select(dim, self.i1[start:stop] - offset), w1)


def resample_band(
    x: torch.Tensor, rows: LinearAxis, cols: LinearAxis, start: int, stop: int, offset: int = 0
) -> torch.Tensor:
    """Channels-last band ``x (B, r, W_in, C)`` holding source rows ``[offset, offset + r)`` → output rows
    ``[start, stop)`` resampled to ``(B, stop − start, W_out, C)``.

    Rows first (here: a gather of whole rows, the band is narrow then); columns by PyTorch's own bilinear kernel
    on the channels-last view with the row axis left unchanged (size r → r copies rows exactly), which applies
    the same column weights as resampling the whole map and is ~10× faster than a gather along W."""
    x = rows.resample(x, 1, start, stop, offset)
    if cols.identity:
        return x
    out = F.interpolate(x.permute(0, 3, 1, 2), size=(x.shape[1], cols.i0.numel()), mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1)


class RowCache:
    """Rows of a large ``(B, R, ...)`` map produced on demand by ``produce(a, b) → (B, b − a, ...)``.

    Requests ``get(a, b)`` must not move backwards (``a`` and ``b`` non-decreasing); rows are computed at most
    once, ``chunk`` at a time, and rows before the last request's start are dropped. Memory: one chunk plus
    the rows a request overlaps with the previous one.
    """

    def __init__(self, produce: Callable[[int, int], torch.Tensor], num_rows: int, chunk: int) -> None:
        self.produce, self.num_rows, self.chunk = produce, num_rows, max(1, int(chunk))
        self.start = self.stop = 0
        self.rows: torch.Tensor | None = None

    def get(self, a: int, b: int) -> torch.Tensor:
        if not 0 <= a < b <= self.num_rows:
            raise IndexError(f"rows [{a}, {b}) out of [0, {self.num_rows})")
        if a < self.start:
            raise IndexError(f"RowCache requests must not move backwards: rows from {a}, cache starts at {self.start}")
        if b > self.stop:
            first = max(a, self.stop)
            last = min(self.num_rows, max(b, first + self.chunk))
            new = self.produce(first, last)
            if self.rows is None or a >= self.stop:
                self.rows, self.start = new, first
            else:
                self.rows = torch.cat([self.rows[:, a - self.start :], new], dim=1)
                self.start = a
            self.stop = last
        elif a > self.start:
            self.rows, self.start = self.rows[:, a - self.start :], a
        return self.rows[:, a - self.start : b - self.start]


def band_rows(row_bytes: int, budget_bytes: int, minimum: int = 1) -> int:
    """How many rows of ``row_bytes`` fit in ``budget_bytes`` (at least ``minimum``)."""
    return max(minimum, int(budget_bytes) // max(1, int(row_bytes)))
