"""Resident memory of a whole process as a user runs it: build one candidate, run a few forwards, read the process's
resident set (fresh process per cell, glibc's allocator left at its defaults). Where ``bench.memory`` measures what
one forward adds, this measures what a deployment pays: torch, the model, the compiled graphs, what compiling left.

    python -m bench.process_memory [--configs b0:224 b2:224] [--impls reference fast inference inference-compile]
                                   [--forwards 3] [--threads 2] [--out bench/results/cpu_process_memory]

Columns: resident MB once the candidate is built (nothing run yet), the peak after the forwards (the inference
mode's compile included), and the peak of the compile process the AOTInductor engine starts (it adds to the
caller's while it runs). The deployment peers are left out: their candidates export an ONNX model with torch in
the same process, which a deployment would not.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from tqdm import tqdm

from bench.candidates import PEERS
from bench.harness import (
    RESULTS,
    FreshProcessTimeout,
    machine_line,
    markdown_table,
    parse_configs,
    run_fresh,
    write_markdown,
)
from bench.report import cpu_line

IMPLS = ["reference", "fast", "inference", "inference-compile"]


def measure(spec: dict, timeout: float = 1800) -> Tuple[float, float, float]:
    """(loaded, peak, compile process's peak) MB of one candidate in a fresh process; nan where it failed."""
    try:
        value = run_fresh(
            ["bench.memory_probe", json.dumps(dict(spec, process=True))],
            "PROCESS_MB ",
            timeout,
            f"process memory {spec}",
            pin_mmap_threshold=False,
        )
    except FreshProcessTimeout:
        value = None
    return tuple(float(v) for v in value.split()) if value else (math.nan,) * 3


def run(configs: Sequence[Tuple[str, int]], impls: Sequence[str], forwards: int, threads: int, out: Path) -> str:
    if any(impl in PEERS for impl in impls):
        raise ValueError(f"the deployment peers {PEERS} are not measured here (see this module's docstring)")
    rows: List[list] = []
    cells = [(preset, size, impl) for preset, size in configs for impl in impls]
    results: Dict[Tuple[str, int, str], Tuple[float, float, float]] = {}
    for preset, size, impl in tqdm(cells, desc="process memory", unit="process"):
        spec = dict(impl=impl, preset=preset, size=size, forwards=forwards, threads=threads)
        results[(preset, size, impl)] = measure(spec)
    for preset, size, impl in cells:
        loaded, peak, child = results[(preset, size, impl)]
        reference = results.get((preset, size, "reference"), (math.nan,) * 3)[1]
        rows.append([preset, f"{size}²", impl, loaded, peak, peak / reference, child if child else math.nan])
    text = (
        "# Resident memory of the whole process (cpu, fp32, batch 1)\n\n"
        f"Machine: {machine_line()}.\n{cpu_line()}.\n"
        f"A fresh process per row builds the candidate, then runs {forwards} forwards; glibc's allocator at its "
        "defaults. Compile process: the peak of the AOTInductor engine's compile process, which adds to the "
        "caller's resident set while it runs.\n"
        f"Reproduce: `python -m bench.process_memory --configs {' '.join(f'{p}:{s}' for p, s in configs)} "
        f"--impls {' '.join(impls)} --forwards {forwards} --threads {threads}`\n\n"
        + markdown_table(
            ["preset", "input", "implementation", "loaded MB", "peak MB", "peak / reference", "compile process MB"],
            rows,
        )
        + "\n"
    )
    return write_markdown(out, text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["b0:224", "b2:224"])
    parser.add_argument("--impls", nargs="+", default=IMPLS)
    parser.add_argument("--forwards", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_process_memory")
    args = parser.parse_args(argv)
    print(run(parse_configs(args.configs), args.impls, args.forwards, args.threads, args.out))


if __name__ == "__main__":
    main()
