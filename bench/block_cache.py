"""``fast=True`` on CPU with and without the block cache (``pvtv2_fast.ops.block_cache``), end to end.

``cache``: the encoder as shipped, its large buffers served from the pages of the previous call's. ``no cache``: the
same model with the scope removed, every large tensor from PyTorch's allocator (malloc). Both timed interleaved in one
process (bench.harness, medians) on one shared pool, so each keeps its steady state; per call also the system CPU
time and the minor page faults (``getrusage``: the kernel's share, mostly page faults, summed over threads). Peak
memory: what one forward adds in a fresh process either way (bench.memory_probe; the cache emptied before the
measured forward, ``PVTV2_FAST_CPU_CACHE_MB=0`` for the other).

    python -m bench.block_cache [--configs b0:224 b2:512 ...] [--dtype fp32|bf16] [--repeats 9] [--no-memory]
                                [--out bench/results/cpu_block_cache]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
from pathlib import Path
from unittest import mock

import torch
from tqdm import tqdm

from bench.candidates import build
from bench.harness import (
    RESULTS,
    Candidate,
    machine_line,
    markdown_table,
    peak_memory_subprocess,
    time_interleaved,
    write_markdown,
)
from bench.report import cpu_line
from pvtv2_fast import modeling
from pvtv2_fast.ops.block_cache import cpu_block_cache

CONFIGS = ["b0:224", "b2:224", "b0:512", "b2:512", "b0:1024", "b2:1024"]
MB = 1 << 20
WARMUP = 2


class _Counted:
    """``fn`` with the block cache on or off, adding up the system CPU seconds and minor faults of its calls after
    the first ``warmup`` (those fill the pool)."""

    def __init__(self, fn, cached: bool, warmup: int) -> None:
        self.fn, self.cached, self.warmup = fn, cached, warmup
        self.sys_s, self.faults, self.calls = 0.0, 0, 0

    def __call__(self):
        modeling.cpu_block_cache = cpu_block_cache if self.cached else contextlib.nullcontext
        try:
            before = resource.getrusage(resource.RUSAGE_SELF)
            out = self.fn()
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            modeling.cpu_block_cache = cpu_block_cache
        if self.warmup > 0:
            self.warmup -= 1
            return out
        self.sys_s += after.ru_stime - before.ru_stime
        self.faults += after.ru_minflt - before.ru_minflt
        self.calls += 1
        return out


def _peak_mb(spec: dict, cached: bool) -> float:
    # The probe's fresh process inherits the environment: "0" turns the cache off there.
    with mock.patch.dict(os.environ, {} if cached else {"PVTV2_FAST_CPU_CACHE_MB": "0"}):
        return peak_memory_subprocess(spec) / MB


def run(configs, dtype: str, repeats: int, memory: bool, out: Path) -> str:
    rows = []
    for config in tqdm(configs, desc="block cache", unit="config"):
        preset, size = config.split(":")
        spec = {"impl": "fast", "preset": preset, "size": int(size), "dtype": dtype, "batch": 1}
        fn, _ = build(spec)
        on, off = _Counted(fn, True, WARMUP), _Counted(fn, False, WARMUP)
        t = time_interleaved([Candidate("cache", on), Candidate("no cache", off)], repeats=repeats, warmup=WARMUP)
        ms_on, ms_off = t["cache"].median * 1e3, t["no cache"].median * 1e3
        row = [preset, f"{size}²", ms_on, ms_off, ms_off / ms_on]
        row += [1e3 * c.sys_s / c.calls for c in (on, off)] + [round(c.faults / c.calls) for c in (on, off)]
        if memory:
            spec["threads"] = torch.get_num_threads()
            row += [_peak_mb(spec, True), _peak_mb(spec, False)]
        rows.append(row)
    headers = ["preset", "input", "cache ms", "no cache ms", "speed-up", "cache sys ms", "no cache sys ms"]
    headers += ["cache faults", "no cache faults"] + (["cache peak MB", "no cache peak MB"] if memory else [])
    memory_note = (
        " Peak MB: what one forward adds to the resident set in a fresh process (the cache starts empty)."
        if memory
        else ""
    )
    text = (
        f"# fast=True on CPU with and without the block cache ({dtype}, batch 1, interleaved, median of {repeats})\n\n"
        f"Machine: {machine_line()}.\n{cpu_line()}.\n"
        f"Reproduce: `python -m bench.block_cache --dtype {dtype} --configs {' '.join(configs)}`\n\n"
        "Speed-up = no cache ms / cache ms (> 1: the cache is faster). Sys ms and faults are per call, all threads "
        f"(getrusage; the kernel's CPU time, mostly first-touch page faults, in 4 ms ticks).{memory_note}\n\n"
        + markdown_table(headers, rows)
        + "\n"
    )
    return write_markdown(out, text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    suffix = "" if a.dtype == "fp32" else f"_{a.dtype}"
    print(run(a.configs, a.dtype, a.repeats, not a.no_memory, a.out or RESULTS / f"cpu_block_cache{suffix}"))


if __name__ == "__main__":
    main()
