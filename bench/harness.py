"""One small benchmark harness shared by the end-to-end report, the kernel benchmarks and ``make gpu-check``.

* Latency: candidates are timed **interleaved** in one process (round-robin, so drift and thermal effects hit
  all alike) and reported as medians; ratios are taken within one run only. Where candidates run on different
  thread pools (the CPU peers), each timed call follows an untimed one of the same candidate (``settle``).
* Peak memory: each candidate runs one forward in a **fresh subprocess**. On CPU the peak resident set is reset
  (``/proc/self/clear_refs``) after the model is built, so the number is what the forward itself adds; on CUDA it
  is ``torch.cuda.max_memory_allocated`` above the allocation before the forward.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Candidate:
    """A named callable to time. ``spec`` rebuilds it in a subprocess for the memory measurement."""

    name: str
    fn: Callable[[], object]
    spec: Optional[dict] = None


@dataclass
class Timing:
    name: str
    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    candidates: Sequence[Candidate],
    repeats: int = 7,
    warmup: int = 1,
    device: str = "cpu",
    progress=None,
    settle: int = 0,
) -> Dict[str, Timing]:
    """Median wall time (s) of each candidate, run round-robin ``repeats`` times after ``warmup`` rounds.

    ``settle``: untimed calls of each candidate right before its timed one, every round. Needed where candidates
    run on different thread pools (PyTorch's OpenMP, ONNX Runtime's, OpenVINO's TBB): a pool's threads keep
    spinning for a while after its call and take the cores from whichever runs next (measured on 2 cores, b0 224²:
    fast=True 23 ms after itself, 55 ms right after an ONNX Runtime call; OpenVINO 12.9 ms after itself, 16.6 ms
    after fast=True, 22.5 ms after ONNX Runtime). One settle call absorbs that tail, so each timed call follows its
    own pool's."""
    timings = {c.name: Timing(c.name) for c in candidates}
    with torch.inference_mode():
        for _ in range(warmup):
            for c in candidates:
                c.fn()
            _sync(device)
        for _ in range(repeats):
            for c in candidates:
                for _ in range(settle):
                    c.fn()
                _sync(device)
                t0 = time.perf_counter()
                c.fn()
                _sync(device)
                timings[c.name].samples.append(time.perf_counter() - t0)
            if progress is not None:
                progress.update(1)
    return timings


def cuda_time(fn: Callable[[], object], repeats: int = 50, warmup: int = 10) -> float:
    """Median time (s) of ``fn`` on the GPU with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return statistics.median(samples)


# ---------------------------------------------------------------------------------------------- memory
def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def measure_forward_peak(fn: Callable[[], object], device: str = "cpu") -> float:
    """Peak bytes one call of ``fn`` adds over what is resident before it (call in a fresh process)."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.inference_mode():
            fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    # Idle blocks that pvtv2_fast's CPU block cache kept from a warm-up call would serve this forward and hide its
    # working set: return them first (as glibc returns freed tensors here, see run_fresh).
    from pvtv2_fast.ops.block_cache import empty_cpu_cache

    empty_cpu_cache()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    before = _rss_kib("VmRSS")
    with torch.inference_mode():
        fn()
    return float(_rss_kib("VmHWM") - before) * 1024


class FreshProcessTimeout(Exception):
    """A fresh-process measurement ran past its timeout."""


def run_fresh(
    args: Sequence[str], marker: str, timeout: float, what: str, pin_mmap_threshold: bool = True
) -> Optional[str]:
    """Run ``python -m ARGS`` in a fresh process (one measurement per process: peak RSS is per process) and return
    what follows ``marker`` on its last line that starts with it; None, with its stderr reported, when no line
    does. Raises :class:`FreshProcessTimeout` past ``timeout`` seconds. ``pin_mmap_threshold``: see below; False
    keeps glibc's default, as a user's process has it."""
    env = dict(os.environ)
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    # A fixed mmap threshold stops glibc from raising it dynamically, so large freed tensors return to the OS.
    if pin_mmap_threshold:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    try:
        out = subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=root
        )
    except subprocess.TimeoutExpired:
        raise FreshProcessTimeout(f"timed out after {timeout:.0f} s: {what}") from None
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith(marker):
            return line[len(marker) :]
    sys.stderr.write(f"{what} failed:\n{out.stderr[-2000:]}\n")
    return None


def peak_memory_subprocess(spec: dict, timeout: float = 1800) -> float:
    """Run ``python -m bench.memory_probe SPEC`` and return the bytes it reports (nan on failure)."""
    try:
        value = run_fresh(["bench.memory_probe", json.dumps(spec)], "PEAK_BYTES ", timeout, f"memory probe {spec}")
    except FreshProcessTimeout:
        return float("nan")
    return float("nan") if value is None else float(value.split()[0])


# ---------------------------------------------------------------------------------------------- output
def parse_configs(pairs: Sequence[str]) -> List[Tuple[str, int]]:
    """The benchmarks' ``--configs`` (``preset:size`` strings) as (preset, size) pairs."""
    return [(preset, int(size)) for preset, size in (pair.split(":") for pair in pairs)]


def write_markdown(out: Path, text: str) -> str:
    """Write ``text`` to ``out`` with the suffix ``.md`` (parent folders made as needed); returns ``text``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    return text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            if v != v:
                return "—"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    import platform

    line = (
        f"{platform.machine()}, {os.cpu_count()} CPU threads (torch uses {torch.get_num_threads()}), "
        f"torch {torch.__version__}"
    )
    if torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name()}"
    return line
