"""``make bench`` — the end-to-end report: forward latency (median, candidates interleaved in one process) and peak
memory (one fresh process per candidate) of this library vs transformers vs timm, written as Markdown and PNG
under ``bench/results/``.

    python -m bench.report [--presets b0 b2] [--sizes 224 512] [--impls reference transformers timm]
                           [--repeats 5] [--threads N] [--no-memory] [--out bench/results/cpu_e2e]
"""

from __future__ import annotations

import argparse
import gc
import math
from pathlib import Path

import torch
from tqdm import tqdm

from bench.candidates import build
from bench.harness import (RESULTS, Candidate, machine_line, markdown_table, peak_memory_subprocess,
                           time_interleaved)

# On CPU, fast=True has no fused kernels yet (Triton needs CUDA) and would repeat the reference row.
DEFAULT_IMPLS = ["reference", "transformers", "timm"] + (["fast"] if torch.cuda.is_available() else [])


def run(presets, sizes, impls, repeats, warmup, memory, threads, out: Path, device="cpu", dtype="fp32", batch=1):
    torch.set_num_threads(threads)
    rows, results = [], []
    configs = [(p, s) for p in presets for s in sizes]
    bar = tqdm(total=len(configs) * (repeats + (len(impls) if memory else 0)), desc="benchmark", unit="step")
    for preset, size in configs:
        specs = [dict(impl=i, preset=preset, size=size, batch=batch, dtype=dtype, device=device, threads=threads)
                 for i in impls]
        bar.set_postfix_str(f"{preset} @{size}² timing")
        candidates = [Candidate(s["impl"], build(s)[0], s) for s in specs]
        timings = time_interleaved(candidates, repeats=repeats, warmup=warmup, device=device, progress=bar)
        del candidates
        gc.collect()
        peaks = {}
        for spec in specs:
            if memory:
                bar.set_postfix_str(f"{preset} @{size}² memory {spec['impl']}")
                peaks[spec["impl"]] = peak_memory_subprocess(spec)
                bar.update(1)
            else:
                peaks[spec["impl"]] = float("nan")
        ref = timings["reference"].median if "reference" in timings else math.nan
        hf = timings["transformers"].median if "transformers" in timings else math.nan
        tm = timings["timm"].median if "timm" in timings else math.nan
        for impl in impls:
            t = timings[impl].median
            row = dict(preset=preset, size=size, impl=impl, ms=t * 1e3, vs_reference=ref / t, vs_transformers=hf / t,
                       vs_timm=tm / t, peak_mb=peaks[impl] / 2**20)
            results.append(row)
            rows.append([preset, f"{size}²", impl, row["ms"], row["vs_reference"], row["vs_transformers"],
                         row["vs_timm"], row["peak_mb"]])
    bar.close()

    headers = ["preset", "input", "implementation", "median ms", "speed-up vs reference", "vs transformers",
               "vs timm", "peak MB (forward)"]
    table = markdown_table(headers, rows)
    text = (f"# End-to-end forward latency and memory ({device}, {dtype}, batch {batch})\n\n"
            f"Machine: {machine_line()}. Median of {repeats} interleaved runs after {warmup} warm-up; "
            f"speed-ups are time ratios from this one run (> 1 = faster). Peak MB: what one forward adds to the "
            f"resident set (CPU) in a fresh process, after a warm-up forward.\n"
            f"Reproduce: `python -m bench.report --presets {' '.join(presets)} --sizes {' '.join(map(str, sizes))}`\n\n"
            f"{table}\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    plot(results, impls, out.with_suffix(".png"), f"PVTv2 encoder forward, {device} {dtype}")
    print(text)
    return results


def plot(results, impls, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["preset"], r["size"]) for r in results}, key=lambda g: (g[0], g[1]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        ms = [next(r["ms"] for r in results if (r["preset"], r["size"]) == g and r["impl"] == impl) for g in groups]
        mb = [next(r["peak_mb"] for r in results if (r["preset"], r["size"]) == g and r["impl"] == impl) for g in groups]
        xs = [i + k * width for i in range(len(groups))]
        axes[0].bar(xs, ms, width, label=impl)
        axes[1].bar(xs, mb, width, label=impl)
    for ax, label in zip(axes, ["median latency (ms, log)", "peak forward memory (MB, log)"]):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [f"{p}\n{s}²" for p, s in groups])
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["b0", "b2"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--impls", nargs="+", default=DEFAULT_IMPLS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_e2e")
    args = parser.parse_args(argv)
    run(args.presets, args.sizes, args.impls, args.repeats, args.warmup, not args.no_memory, args.threads, args.out)


if __name__ == "__main__":
    main()
