"""How close a forward runs to the machine's arithmetic rate: the model's FLOPs per forward (counted on the
reference, every convolution, linear and attention product) over each candidate's median time, against the rate of
the BLAS's own large GEMM on the same threads (the "GEMM ceiling": what MKL / oneDNN reach on a 2048³ matmul, not
the FMA units' peak, which no whole network reaches). A candidate near the ceiling has little left to gain from
faster kernels; one well below it loses time outside its GEMMs (memory-bound ops, idle threads, per-op Python).
"""

from __future__ import annotations

import statistics
import time
from typing import Dict, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.candidates import DTYPES, reference_model
from bench.harness import markdown_table

_aten = torch.ops.aten


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's CPU SDPA kernel, which FlopCounterMode does not count by itself: q kᵀ and p v, 2 FLOPs per
    multiply-add (the counter hands over shapes, not tensors)."""
    b, h, n, d = query
    return 2 * b * h * n * key[-2] * (d + value[-1])


def forward_flops(preset: str, size: int, batch: int = 1) -> int:
    """FLOPs of one reference forward of ``preset`` on a ``batch`` × 3 × ``size``² input (2 per multiply-add; the
    norms, GELU and softmax, a few % of it, not counted). Run on the meta device: shapes only, no arithmetic."""
    model = reference_model(preset).eval().to("meta")
    x = torch.empty(batch, 3, size, size, device="meta")
    mapping = {_aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return counter.get_total_flops()


def gemm_ceiling(dtype: str = "fp32", n: int = 2048, repeats: int = 7) -> float:
    """FLOP/s of ``torch.mm`` on two n × n matrices in ``dtype`` on the current CPU threads (median of ``repeats``)."""
    dt = DTYPES[dtype]
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def rate_table(results: Sequence[dict], impls: Sequence[str], flops: Dict[tuple, int], ceiling: float) -> str:
    """One row per (preset, size): GFLOP per forward, then each candidate's GFLOP/s and its % of ``ceiling``."""
    rows = []
    for key in dict.fromkeys((r["preset"], r["size"]) for r in results):
        by_impl = {r["impl"]: r for r in results if (r["preset"], r["size"]) == key}
        rates = [flops[key] / (by_impl[i]["ms"] / 1e3) for i in impls]
        cells = [f"{r / 1e9:.0f} ({100 * r / ceiling:.0f}%)" for r in rates]
        rows.append([key[0], f"{key[1]}²", flops[key] / 1e9, *cells])
    return (
        f"Arithmetic rate: GFLOP per forward (counted on the reference: convolutions, linears, attention products), "
        f"then each candidate's GFLOP/s and, in brackets, its share of the GEMM ceiling measured in this run: "
        f"torch.mm 2048³ at {ceiling / 1e9:.0f} GFLOP/s on the same threads (bench.roofline).\n\n"
        + markdown_table(["preset", "input", "GFLOP", *impls], rows)
        + "\n\n"
    )
