"""Large CPU buffers kept between eager inference calls (the C++ block cache, ``csrc/cpu/block_cache.h``).

PyTorch's CPU allocator gives large tensors back to the OS when they die, so every forward pays a page fault per
4 KB of its large intermediates: for ``fast=True`` on 2 cores, 6,100 faults and 19 ms of system time per b2 forward
at 512², 42,500 and 115 ms at 1024² (``bench/results/cpu_block_cache.md``). Inside :func:`cpu_block_cache`, on the
calling thread, allocations of 256 KB and more reuse the pages of earlier calls' blocks instead, as OpenVINO's and
ONNX Runtime's arenas keep theirs; everything else goes to PyTorch's allocator. Fresh pages are mapped only when
the idle ones run out, so a forward's peak memory is what it was without the cache.

Idle pages stay mapped up to ``PVTV2_FAST_CPU_CACHE_MB`` (default 1024; ``0`` turns the cache off), so the
process keeps the forward's working set resident between calls; :func:`empty_cpu_cache` returns it to the OS.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch

from .. import _ext


def _usable() -> bool:
    return _ext.available() and hasattr(torch.ops.pvtv2_fast_C, "block_cache_enter")


@contextlib.contextmanager
def cpu_block_cache() -> Iterator[None]:
    """Serve this thread's large CPU allocations from the block cache while inside (nestable). A no-op without the
    C++ extension and under ``torch.compile`` tracing (compiled graphs allocate through their own paths)."""
    if torch.compiler.is_compiling() or not _usable():
        yield
        return
    torch.ops.pvtv2_fast_C.block_cache_enter()
    try:
        yield
    finally:
        torch.ops.pvtv2_fast_C.block_cache_exit()


def cpu_block_cache_on(device: torch.device):
    """:func:`cpu_block_cache` for work on ``device`` if it is the CPU; a no-op context on other devices."""
    return cpu_block_cache() if torch.device(device).type == "cpu" else contextlib.nullcontext()


def empty_cpu_cache() -> int:
    """Unmap every idle page of the CPU block cache; returns the bytes released (0 without the extension)."""
    return int(torch.ops.pvtv2_fast_C.block_cache_release()) if _usable() else 0


def cpu_cache_stats() -> Dict[str, int]:
    """Since the process started: ``idle_bytes`` (kept for reuse), ``live_bytes`` (in tensors alive now), and how
    many blocks were ``reused`` (from one idle range), ``gathered`` (several idle ranges moved together) or
    ``fresh`` (new pages); all 0 without the extension."""
    keys = ("idle_bytes", "live_bytes", "reused", "gathered", "fresh")
    values = torch.ops.pvtv2_fast_C.block_cache_stats() if _usable() else [0] * len(keys)
    return dict(zip(keys, (int(v) for v in values)))
