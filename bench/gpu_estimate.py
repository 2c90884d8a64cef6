"""The GPU run time of ``bench.gpu_quick``, estimated from the per-phase counts of its plan (a dry run on the CPU
reports the same counts as the GPU run: cases, Triton compiles, autotune sweeps, processes, timed calls, models).

Unit costs on the GPU machine (one H200, 16 cores, cold caches: a fresh machine has no Triton cache):
"""

from __future__ import annotations

from typing import Dict

# seconds per unit, with where each comes from
COST = {
    "processes": (8.0, "python + torch + CUDA context + triton/pvtv2_fast imports (transformers/timm add ~3 s)"),
    "compiles": (
        2.0,
        "one Triton binary, source → PTX → cubin (ptxas); kernels/aot.py took 112 CPU-s for 54 "
        "variants on the 2-core CPU machine, cuobjdump included",
    ),
    "sweeps": (0.6, "one autotune key: 4 configs × do_bench (25 ms warm-up + 100 ms of runs)"),
    "small": (0.15, "one parity case at ≤ 2048²: random inputs, the kernel, a float64 reference, the comparison"),
    "big": (1.5, "one parity case at 4096² or past 2³¹ elements: GBs of inputs and a float64 reference"),
    "models": (4.0, "building a model on the CPU, moving it, its first forwards"),
    "timed": (0.05, "one timed call: 5 warm-up + 30 CUDA-event runs of ≤ 1 ms"),
}
PARALLEL = {"parity": 3}  # processes running side by side (compiles and sweeps overlap; GPU work does not)
BUILD_S = 120.0  # the extension for one arch with ninja on 16 cores (in the background from t = 0)
EXTRAS_S = {"torch.compile of the reference": 70.0, "memory at 4096²": 20.0, "segmentation image → labels": 20.0}
BUDGET_S = 420.0


def phase_seconds(phase: str, counts: Dict[str, int]) -> tuple:
    """(seconds, the arithmetic as text) for one phase's counts."""
    par = PARALLEL.get(phase, 1)
    terms, total = [], 0.0
    for key, (unit, _) in COST.items():  # counts without a cost (cpu_s, failed, cases) are not time
        n = counts.get(key, 0)
        if not n:
            continue
        # per-process work (imports, compiles, sweeps) overlaps across parallel processes; the GPU's does not
        div = par if key in ("processes", "compiles", "sweeps") else 1
        secs = n * unit / div
        total += secs
        terms.append(f"{n} {key} × {unit:g} s" + (f" / {div}" if div > 1 else ""))
    if phase == "extras":
        fixed = sum(EXTRAS_S.values())
        total += fixed
        terms.append(f"{fixed:g} s of compile, 4096² memory, Segformer (pytest takes what is left)")
    return total, " + ".join(terms) if terms else "—"


def estimate_markdown(counts_by_phase: Dict[str, Dict[str, int]]) -> str:
    if not any(counts_by_phase.values()):
        return "## Estimated GPU run time\n\n(no phase has reported counts yet)\n"
    lines = [
        "## Estimated GPU run time (from the plan's counts)",
        "",
        "| phase | arithmetic | seconds |",
        "|---|---|---|",
    ]
    total = 0.0
    clock = 0.0
    for phase, counts in counts_by_phase.items():
        if not counts:
            lines.append(f"| {phase} | no counts (not run) | — |")
            continue
        secs, text = phase_seconds(phase, counts)
        if phase == "parity_cuda" and clock < BUILD_S:  # waits for the background build
            wait = BUILD_S - clock
            secs += wait
            text += f" + {wait:.0f} s waiting for the {BUILD_S:.0f} s extension build"
        clock += secs
        total += secs
        lines.append(f"| {phase} | {text} | {secs:.0f} |")
    verdict = "within" if total <= BUDGET_S else "OVER"
    lines += [
        f"| **total** | | **{total:.0f} s = {total / 60:.1f} min** ({verdict} the {BUDGET_S:.0f} s budget) |",
        "",
        "Unit costs: " + "; ".join(f"{k} {v[0]:g} s ({v[1]})" for k, v in COST.items()) + ".",
    ]
    return "\n".join(lines) + "\n"
