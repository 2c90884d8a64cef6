"""How close a forward runs to the machine's arithmetic rate: the model's FLOPs per forward (counted on the
reference: every convolution, linear and attention product) over each candidate's median time, against the rate the
BLAS reaches on a large square GEMM on the same threads (``torch.mm`` 2048³, "the BLAS rate"). That rate is a yardstick,
not the FMA units' peak: this library's packed-weight GEMM passes it by up to 18% on the FFN's shapes
(bench/results/cpu_gemm_rates.md). A candidate near it spends nearly all its time in GEMMs running as fast as the BLAS
runs its best case; one well below it loses time outside them (memory-bound ops, idle threads, per-op Python).

``python -m bench.roofline`` writes the GEMM side of it: the FFN's fc1 / fc2 GEMMs of every stage (fp32, batch 1) on
the C++ packed-weight GEMM (``ops.sr_conv`` with a 1×1 kernel: rows × a prepacked weight, what the C++ block runs)
and on the BLAS (``torch.addmm``), interleaved, in GFLOP/s and % of the BLAS rate, on 1 thread and on all.

    python -m bench.roofline [--configs b0:224 b2:224 b2:512] [--repeats 15] [--out bench/results/cpu_gemm_rates]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.candidates import DTYPES, reference_model
from bench.harness import (
    RESULTS,
    Candidate,
    machine_line,
    markdown_table,
    parse_configs,
    time_interleaved,
    write_markdown,
)
from pvtv2_fast import PvtV2Config, ops, stage_sizes

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


def blas_rate(dtype: str = "fp32", n: int = 2048, repeats: int = 7) -> float:
    """FLOP/s of ``torch.mm`` on two n × n matrices in ``dtype`` on the current CPU threads (median of ``repeats``)."""
    dt = DTYPES[dtype]
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    timing = time_interleaved([Candidate("mm", lambda: a @ b)], repeats, warmup=2)["mm"]
    return 2 * n**3 / timing.median


def rate_table(results: Sequence[dict], impls: Sequence[str], flops: Dict[tuple, int], blas: float) -> str:
    """One row per (preset, size): GFLOP per forward, then each candidate's GFLOP/s and its % of ``blas`` (FLOP/s)."""
    rows = []
    for key in dict.fromkeys((r["preset"], r["size"]) for r in results):
        by_impl = {r["impl"]: r for r in results if (r["preset"], r["size"]) == key}
        rates = [flops[key] / (by_impl[i]["ms"] / 1e3) for i in impls]
        cells = [f"{r / 1e9:.0f} ({100 * r / blas:.0f}%)" for r in rates]
        rows.append([key[0], f"{key[1]}²", flops[key] / 1e9, *cells])
    return (
        f"Arithmetic rate: GFLOP per forward (counted on the reference: convolutions, linears, attention products), "
        f"then each candidate's GFLOP/s and, in brackets, that as a share of the BLAS rate measured in this run: "
        f"torch.mm 2048³ at {blas / 1e9:.0f} GFLOP/s on the same threads (a yardstick, not the FMA peak: "
        f"bench.roofline).\n\n" + markdown_table(["preset", "input", "GFLOP", *impls], rows) + "\n\n"
    )


def gemm_table(configs: Sequence[tuple], blas_rates: Dict[int, float], repeats: int) -> str:
    """The FFN GEMMs of each stage of each (preset, size): packed-weight C++ GEMM vs ``torch.addmm``, on each thread
    count of ``blas_rates`` (its :func:`blas_rate`, FLOP/s), in GFLOP/s (% of that rate). Whole-map GEMMs with their
    output in memory: the C++ FFN runs large maps in bands whose hidden rows stay in cache (b2's 16384 × 64 → 512 at
    512² is memory-bound here)."""
    rows = []
    for threads, blas in blas_rates.items():
        torch.set_num_threads(threads)
        for preset, size in configs:
            config = PvtV2Config.from_preset(preset)
            maps = stage_sizes(config, size, size)
            for stage, ((h, w), c, ratio) in enumerate(zip(maps, config.hidden_sizes, config.mlp_ratios)):
                hidden = int(c * ratio)
                for name, k, n in (("fc1", c, hidden), ("fc2", hidden, c)):
                    x = torch.randn(1, h * w, k)
                    weight = torch.randn(n, k, 1, 1) * k**-0.5
                    bias = torch.randn(n)
                    packed, matrix = ops.pack_weight(weight), weight.view(n, k)
                    candidates = [
                        Candidate("packed", lambda: ops.sr_conv(x, weight, bias, h, w, packed, backend="cpu")),
                        Candidate("blas", lambda: torch.addmm(bias, x[0], matrix.t())),
                    ]
                    timings = time_interleaved(candidates, repeats, warmup=3)
                    flops = 2 * h * w * k * n
                    rates = [flops / timings[c.name].median for c in candidates]
                    rows.append(
                        [threads, preset, f"{size}²", stage, name, f"{h * w}×{k}→{n}"]
                        + [f"{r / 1e9:.0f} ({100 * r / blas:.0f}%)" for r in rates]
                        + [rates[0] / rates[1]]
                    )
    headers = ["threads", "preset", "input", "stage", "GEMM", "rows×K→N", "packed", "BLAS (addmm)", "packed / BLAS"]
    return markdown_table(headers, rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["b0:224", "b2:224", "b2:512"], help="preset:size pairs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_gemm_rates")
    args = parser.parse_args(argv)
    from bench.report import cpu_line

    configs = parse_configs(args.configs)
    blas_rates = {}
    for t in sorted({1, args.threads}):
        torch.set_num_threads(t)
        blas_rates[t] = blas_rate()
    rates = [f"{r / 1e9:.0f} GFLOP/s on {t} thread{'s' if t > 1 else ''}" for t, r in blas_rates.items()]
    text = (
        "# The FFN's GEMMs: packed-weight C++ GEMM vs the BLAS (fp32, batch 1)\n\n"
        f"Machine: {machine_line()}.\n{cpu_line()}.\n"
        f"Median of {args.repeats} interleaved calls; in brackets the share of the BLAS rate (torch.mm 2048³: "
        f"{', '.join(rates)}). Whole-map GEMMs, output written to memory (the C++ FFN runs large maps in bands).\n"
        f"Reproduce: `python -m bench.roofline --configs {' '.join(args.configs)} --threads {args.threads}`\n\n"
        + gemm_table(configs, blas_rates, args.repeats)
        + "\n"
    )
    print(write_markdown(args.out, text))


if __name__ == "__main__":
    main()
