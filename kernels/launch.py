"""Launch-grid rules shared by the kernel launchers (no kernels here).

CUDA allows 2³¹ − 1 programs on grid axis 0 but only 65535 on axes 1 and 2, so every launcher puts its
unbounded axis (token blocks: a 4096² image's stage-1 map has 1,048,576 tokens) on axis 0 and splits the batch
into chunks when batch × (programs per item on axis 1 or 2) could pass 65535.
"""

from __future__ import annotations

from typing import Iterator, Tuple

MAX_GRID_AXIS0 = 2**31 - 1
MAX_GRID_AXIS12 = 65535


def batch_chunks(batch: int, per_item: int = 1) -> Iterator[Tuple[int, int]]:
    """``(start, stop)`` batch ranges such that ``(stop - start) · per_item <= 65535`` (one range when it fits)."""
    if per_item > MAX_GRID_AXIS12:
        raise ValueError(f"{per_item} programs per batch item exceed CUDA's grid limit of {MAX_GRID_AXIS12}")
    step = MAX_GRID_AXIS12 // per_item
    for start in range(0, batch, step):
        yield start, min(batch, start + step)


def check_grid(grid: Tuple[int, ...]) -> Tuple[int, ...]:
    """``grid`` unchanged, or ``ValueError`` if an axis is beyond CUDA's limits (instead of a launch failure)."""
    limits = (MAX_GRID_AXIS0, MAX_GRID_AXIS12, MAX_GRID_AXIS12)
    for axis, (size, limit) in enumerate(zip(grid, limits)):
        if size > limit:
            raise ValueError(f"launch grid {grid}: axis {axis} has {size} programs, CUDA allows {limit}")
    return grid
