"""``make gpu-check``: on a machine with a CUDA GPU, run the GPU tests (compiled kernels, not the interpreter),
the kernel benchmark and the end-to-end benchmark, and write one report, ``bench/results/gpu_report.md``.

End-to-end rows: b2 backbone at 1024², bf16, batch 8 — fast vs transformers eager vs ``torch.compile`` of the
reference vs the reference (targets in issue #3: ≥ 2.5× transformers, ≥ 1.2× compile). Memory rows: peak
``torch.cuda.max_memory_allocated`` vs resolution up to 4096² (b2 backbone at 4096² bf16, issue #5).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.harness import RESULTS, machine_line

ROOT = Path(__file__).resolve().parent.parent


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip()}\n\n"


def run_tests() -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py",
           "tests/test_ops_triton.py", "tests/test_fast_model.py"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    tail = "\n".join(out.stdout.strip().splitlines()[-25:])
    return f"`{' '.join(cmd[2:])}` → exit {out.returncode}\n\n```\n{tail}\n```"


def run_e2e() -> str:
    from bench.report import run

    text = []
    for preset, size, batch in [("b2", 1024, 8), ("b0", 2048, 1)]:
        results = run([(preset, size)], ["reference", "fast", "transformers", "compile:reference", "timm"],
                      repeats=10, warmup=2, memory=True, threads=torch.get_num_threads(),
                      out=RESULTS / f"gpu_e2e_{preset}_{size}", device="cuda", dtype="bf16", batch=batch)
        text.append((RESULTS / f"gpu_e2e_{preset}_{size}.md").read_text())
        del results
    return "\n".join(text)


def main() -> int:
    if not torch.cuda.is_available():
        print("make gpu-check needs a CUDA GPU; none is visible here", file=sys.stderr)
        return 2
    t0 = time.time()
    report = [f"# GPU check\n\nMachine: {machine_line()}\n\n"]
    print("== GPU tests", flush=True)
    report.append(_section("Tests on the GPU", run_tests()))
    print("== kernel benchmark", flush=True)
    from bench.kernels import run as run_kernels

    report.append(_section("Kernels", run_kernels(["b0", "b2"], [512, 1024, 2048], "bf16", RESULTS / "gpu_kernels.md")))
    print("== end-to-end benchmark", flush=True)
    report.append(_section("End to end", run_e2e()))
    print("== memory vs resolution", flush=True)
    from bench.memory import run as run_memory

    report.append(_section("Memory vs resolution (torch.cuda.max_memory_allocated)",
                           run_memory(["b0", "b2"], [1024, 2048, 4096], RESULTS / "gpu_memory", device="cuda",
                                      dtype="bf16")))
    report.append(f"Total wall time {time.time() - t0:.0f} s.\n")
    out = RESULTS / "gpu_report.md"
    out.write_text("".join(report))
    print("".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
