"""The CPU kernels per instruction set: the AVX-512 build vs the AVX2 build (vs the portable one) of the fused
depthwise conv + GELU and of the whole conv FFN. The ISA is chosen once per process (``PVTV2_FAST_CPU_ISA`` caps
it), so each ISA runs in its own subprocess; the subprocesses alternate for ``--rounds`` rounds (so drift hits all
alike) and the report gives, per shape, the median over rounds of each round's median.

    python -m bench.isa [--isas default avx2 avx512] [--rounds 5] [--out bench/results/cpu_isa.md]

Shapes: a cache-resident map on one thread (the kernels' arithmetic rate) and the stage-1 maps of b0 and b2 at
512² on all threads (where writing a fresh output competes with the arithmetic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from bench.harness import RESULTS, Candidate, machine_line, markdown_table, time_interleaved

# (label, H, W, hidden channels, FFN input channels, threads: 0 = all)
SHAPES = [
    ("cache-resident 32×32×256", 32, 32, 256, 32, 1),
    ("b0 stage 1 @512²: 128×128×256", 128, 128, 256, 32, 0),
    ("b2 stage 1 @512²: 128×128×512", 128, 128, 512, 64, 0),
]


def child(repeats: int) -> dict:
    """Medians (s) of this process's ISA on every shape: {label: {"dwconv_gelu": t, "conv_ffn": t}}."""
    from pvtv2_fast import ops

    g = torch.Generator().manual_seed(0)
    all_threads = torch.get_num_threads()
    out = {}
    for label, h, w, hid, c, threads in SHAPES:
        torch.set_num_threads(threads or all_threads)
        x = torch.randn(1, h * w, hid, generator=g)
        wt, b = torch.randn(hid, 1, 3, 3, generator=g), torch.randn(hid, generator=g)
        tokens = torch.randn(1, h * w, c, generator=g)
        fc1, fc2 = torch.randn(hid, c, generator=g) * c**-0.5, torch.randn(c, hid, generator=g) * hid**-0.5
        cands = [
            Candidate("dwconv_gelu", lambda: ops.dwconv_gelu(x, wt, b, h, w, backend="cpu")),
            Candidate("conv_ffn", lambda: ops.conv_ffn(tokens, fc1, None, wt, b, fc2, None, h, w, backend="cpu")),
        ]
        t = time_interleaved(cands, repeats=repeats, warmup=3)
        out[label] = {name: timing.median for name, timing in t.items()}
    return out


def run(isas, rounds: int, repeats: int, out: Path) -> str:
    from tqdm import tqdm

    root = Path(__file__).resolve().parent.parent
    samples = {}  # (label, op, isa) -> per-round medians
    active = {}
    with tqdm(total=rounds * len(isas), desc="ISA rounds", unit="run") as bar:
        for _ in range(rounds):
            for isa in isas:
                env = dict(os.environ, PVTV2_FAST_CPU_ISA=isa)
                env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
                code = (
                    "import json; from pvtv2_fast import _ext; from bench.isa import child; "
                    f"print('RESULT', json.dumps([_ext.cpu_isa(), child({repeats})]))"
                )
                proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"ISA {isa} run failed:\n{proc.stderr[-2000:]}")
                active[isa], result = json.loads(line[len("RESULT ") :])
                for label, ops_t in result.items():
                    for op, t in ops_t.items():
                        samples.setdefault((label, op, isa), []).append(t)
                bar.update(1)
    base = "avx2" if "avx2" in isas else isas[0]
    rows = []
    for label, *_ in SHAPES:
        for op in ("dwconv_gelu", "conv_ffn"):
            ref = statistics.median(samples[(label, op, base)])
            for isa in isas:
                t = statistics.median(samples[(label, op, isa)])
                rows.append([label, op, f"{isa} (ran: {active[isa]})", t * 1e3, ref / t])
    text = (
        f"# CPU kernels per instruction set\n\nMachine: {machine_line()}. Each ISA in its own process "
        f"(`PVTV2_FAST_CPU_ISA`), processes alternating for {rounds} rounds of {repeats} timed calls; median "
        f'over rounds of each round\'s median. "ran" is the ISA the process really used (a cap above what the '
        f"CPU has runs the widest it has).\n"
        f"Reproduce: `python -m bench.isa --isas {' '.join(isas)} --rounds {rounds}`\n\n"
        + markdown_table(
            ["shape (threads: 1 for cache-resident, else all)", "op", "ISA", "median ms", f"speed-up vs {base}"], rows
        )
        + "\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isas", nargs="+", default=["default", "avx2", "avx512"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_isa.md")
    args = parser.parse_args(argv)
    run(args.isas, args.rounds, args.repeats, args.out)


if __name__ == "__main__":
    main()
