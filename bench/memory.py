"""Peak memory and time of one forward vs resolution (512² … 4096²): this library's reference, its memory-lean
reference, fast=True, timm and transformers (up to 2048²: its eager N×M attention needs 9 GB there and ~150 GB at
4096²). One fresh process per point (``bench.memory_probe``), written as Markdown + a memory-vs-pixels plot.

    python -m bench.memory [--presets b0 b2_linear] [--sizes 512 1024 2048 4096] [--out bench/results/cpu_memory]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from bench.harness import RESULTS, machine_line, markdown_table, peak_memory_subprocess, write_markdown

IMPLS = ["reference", "lean", "fast", "timm", "transformers"]
MAX_SIZE = {"transformers": 2048}


def run(presets, sizes, out: Path, device: str = "cpu", dtype: str = "fp32") -> str:
    points = [(p, s, i) for p in presets for s in sizes for i in IMPLS if s <= MAX_SIZE.get(i, 10**9)]
    results = {}
    for preset, size, impl in tqdm(points, desc="memory vs resolution", unit="run"):
        # A warm-up forward keeps one-time buffers out of the peak: on CUDA always (Triton's autotuning allocates
        # scratch tensors on a shape's first call); on the CPU nothing is one-time, and from 2048² up the extra
        # forward would double the run.
        spec = dict(
            impl=impl, preset=preset, size=size, device=device, dtype=dtype, warmup=device == "cuda" or size < 2048
        )
        results[(preset, size, impl)] = peak_memory_subprocess(spec, timeout=3600)
    rows = []
    for preset in presets:
        for size in sizes:
            timm = results.get((preset, size, "timm"), float("nan"))
            for impl in IMPLS:
                if (preset, size, impl) in results:
                    peak = results[(preset, size, impl)]
                    rows.append([preset, f"{size}²", impl, peak / 2**20, peak / timm])
    text = (
        f"# Peak forward memory vs resolution ({device}, {dtype}, batch 1)\n\n"
        f"Machine: {machine_line()}. Peak: what one forward adds to the resident set (fresh process; a warm-up "
        f"forward first {'always' if device == 'cuda' else 'below 2048²'}). "
        f"`lean` = the reference with `set_memory_lean()`; `fast` = `fast=True` "
        f"(memory-lean by default). transformers is not run above 2048².\n"
        f"Reproduce: `python -m bench.memory --presets {' '.join(presets)} --sizes {' '.join(map(str, sizes))}`\n\n"
        + markdown_table(["preset", "input", "implementation", "peak MB", "vs timm"], rows)
        + "\n"
    )
    write_markdown(out, text)
    plot(results, presets, sizes, out.with_suffix(".png"))
    return text


def plot(results, presets, sizes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4.5), squeeze=False)
    for ax, preset in zip(axes[0], presets):
        for impl in IMPLS:
            pts = [(s * s / 1e6, results[(preset, s, impl)] / 2**30) for s in sizes if (preset, s, impl) in results]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
        ax.set_xlabel("megapixels")
        ax.set_ylabel("peak forward memory (GiB)")
        ax.set_title(f"{preset}: memory vs pixels")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["b0", "b2_linear"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_memory")
    args = parser.parse_args(argv)
    print(run(args.presets, args.sizes, args.out))


if __name__ == "__main__":
    main()
