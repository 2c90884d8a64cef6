"""``make bench`` — the end-to-end report: forward latency (median, candidates interleaved in one process) and peak
memory (one fresh process per candidate) of this library (reference and fast=True) vs transformers vs timm vs
``torch.compile`` of timm vs the deployment peers ONNX Runtime and OpenVINO (timm's encoder exported to ONNX), plus
the fused CPU ops against their PyTorch compositions and a plain copy; written as Markdown and PNG plots under
``bench/results/``. Every candidate's output is checked against the first candidate's before timing.

    python -m bench.report [--configs b0:224 b0:512 ...] [--impls reference fast inference timm timm-cl openvino ...]
                           [--repeats 5] [--threads N] [--batch 1] [--dtype fp32|bf16] [--no-memory]
                           [--out bench/results/cpu_e2e]

Batched rows (issue 11): ``--configs b0:224 b2:224 --batch 8 --impls timm inference openvino openvino-tput
--no-memory --out bench/results/cpu_e2e_batch8``; bf16 (skipped with the reason on CPUs without AVX512-BF16/AMX):
``--configs b0:224 b2:224 b0:512 --dtype bf16 --impls timm fast openvino --no-memory --no-op-tables
--out bench/results/cpu_e2e_bf16``.

Use as many threads as the machine has idle cores: with a core taken by another process, every OpenMP region
of PyTorch waits for its descheduled thread (measured on 2 cores with one busy: fast=True b0 bf16 100 ms at 2 threads
against 27 ms at 1), and the comparison then measures the scheduler, not the candidates.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
from pathlib import Path

import torch
from tqdm import tqdm

from bench.candidates import PEERS, build, output_tensor
from bench.harness import (
    RESULTS,
    Candidate,
    machine_line,
    markdown_table,
    parse_configs,
    peak_memory_subprocess,
    time_interleaved,
)
from bench.roofline import blas_rate, forward_flops, rate_table

DEFAULT_IMPLS = [
    "reference",
    "fast",
    "inference",
    "transformers",
    "timm",
    "timm-cl",
    "compile:timm",
    "onnxruntime",
    "openvino",
]
# max |candidate - first candidate| allowed before timing, relative to max |first candidate| (fp32 rounding of
# different summation orders; bf16 runs are reported, not checked).
PARITY_RTOL = {"fp32": 1e-4}


def cpu_line() -> str:
    """The CPU the numbers come from: model, cores, and the ISA flags that matter to the kernels and peers."""
    import os
    import re
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return f"CPU: unknown (no lscpu), {os.cpu_count()} logical CPUs"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    isa = [
        f
        for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
        if f in flags
    ]
    model = re.sub(r"\s+", " ", fields.get("Model name", "unknown").strip())
    return (
        f"CPU: {model}, {os.cpu_count()} logical CPUs ({fields.get('Core(s) per socket', '?').strip()} cores per "
        f"socket, {fields.get('Thread(s) per core', '?').strip()} threads per core), ISA: {' '.join(isa)}"
    )


def bf16_skip_reason() -> str:
    """Why a bf16 CPU run is not meaningful here ('' when the CPU has native bf16 arithmetic)."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return "cannot read /proc/cpuinfo"
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return "this CPU has neither AVX512-BF16 nor AMX-BF16: bf16 would be emulated, slower than fp32"
    return ""


def check_parity(candidates, dtype: str) -> dict:
    """One forward of each candidate (this is also their first warm-up, where compiled ones compile); returns
    ``{name: max |output - first candidate's output|}`` and raises if an fp32 candidate is off."""
    with torch.inference_mode():
        outs = {c.name: output_tensor(c.fn()) for c in candidates}
    first = candidates[0].name
    ref = outs[first]
    scale = max(1.0, ref.abs().max().item())
    errors = {}
    for name, out in outs.items():
        if out.shape != ref.shape:
            raise AssertionError(f"parity: {name} returns {tuple(out.shape)}, {first} {tuple(ref.shape)}")
        errors[name] = (out - ref).abs().max().item()
        if dtype in PARITY_RTOL and not errors[name] <= PARITY_RTOL[dtype] * scale:
            raise AssertionError(
                f"parity: {name} differs from {first} by {errors[name]:.3g} "
                f"(> {PARITY_RTOL[dtype]} × {scale:.3g}); not timing a wrong answer"
            )
    return errors


DEFAULT_CONFIGS = ["b0:224", "b0:512", "b0:1024", "b2:224", "b2:512"]


def run(
    configs, impls, repeats, warmup, memory, threads, out: Path, device="cpu", dtype="fp32", batch=1, op_tables=True
):
    """``configs``: (preset, size) pairs. Returns one dict per (config, impl)."""
    torch.set_num_threads(threads)
    load_before = " ".join(f"{v:.2f}" for v in __import__("os").getloadavg())
    rows, results = [], []
    # The CPU report's arithmetic-rate table: FLOPs counted on the meta device (no arithmetic), the BLAS rate measured
    # here, on the threads the candidates get.
    flops = {(p, s): forward_flops(p, s, batch) for p, s in configs} if device == "cpu" else {}
    blas = blas_rate(dtype) if device == "cpu" else math.nan
    # The peers run on their own thread pools: settle each candidate before its timed call (time_interleaved).
    settle = 1 if device == "cpu" and any(i in PEERS for i in impls) else 0
    bar = tqdm(total=len(configs) * (repeats + (len(impls) if memory else 0)), desc="benchmark", unit="step")
    for preset, size in configs:
        specs = [
            dict(impl=i, preset=preset, size=size, batch=batch, dtype=dtype, device=device, threads=threads)
            for i in impls
        ]
        bar.set_postfix_str(f"{preset} @{size}² timing")
        candidates = [Candidate(s["impl"], build(s)[0], s) for s in specs]
        bar.set_postfix_str(f"{preset} @{size}² parity (compiles)")
        errors = check_parity(candidates, dtype)
        timings = time_interleaved(candidates, repeats, warmup, device, progress=bar, settle=settle)
        del candidates
        gc.collect()
        peaks = {}
        for spec in specs:
            # compiled candidates would recompile inside the probe, and the peers' arenas are not torch's: their
            # memory is not measured
            if memory and not unmeasured(spec["impl"]):
                bar.set_postfix_str(f"{preset} @{size}² memory {spec['impl']}")
                peaks[spec["impl"]] = peak_memory_subprocess(spec)
                bar.update(1)
            else:
                peaks[spec["impl"]] = float("nan")
        if memory:
            bar.update(sum(1 for s in specs if unmeasured(s["impl"])))
        ref = timings["reference"].median if "reference" in timings else math.nan
        hf = timings["transformers"].median if "transformers" in timings else math.nan
        tm = timings["timm"].median if "timm" in timings else math.nan
        for impl in impls:
            t = timings[impl].median
            row = dict(
                preset=preset,
                size=size,
                impl=impl,
                ms=t * 1e3,
                vs_reference=ref / t,
                vs_transformers=hf / t,
                vs_timm=tm / t,
                peak_mb=peaks[impl] / 2**20,
                max_err=errors[impl],
            )
            results.append(row)
            rows.append(
                [
                    preset,
                    f"{size}²",
                    impl,
                    row["ms"],
                    row["vs_reference"],
                    row["vs_transformers"],
                    row["vs_timm"],
                    row["peak_mb"],
                    row["max_err"],
                ]
            )
    bar.close()

    headers = [
        "preset",
        "input",
        "implementation",
        "median ms",
        "speed-up vs reference",
        "vs transformers",
        "vs timm",
        "peak MB (forward)",
        f"max |Δ| vs {impls[0]}",
    ]
    table = markdown_table(headers, rows)
    config_args = " ".join(f"{p}:{s}" for p, s in configs)
    peak_note = (
        "what one forward adds to the resident set in a fresh process, after a warm-up forward"
        if device == "cpu"
        else "torch.cuda.max_memory_allocated above the model, fresh process"
    )
    text = (
        f"# End-to-end forward latency and memory ({device}, {dtype}, batch {batch})\n\n"
        f"Machine: {machine_line()}.\n{cpu_line()}; load average before the run {load_before}.\n"
        f"Median of {repeats} interleaved runs after {warmup} warm-up"
        + (" (each timed call right after an untimed one of the same candidate: see bench.harness)" if settle else "")
        + "; "
        f"speed-ups are time ratios from this one run (> 1 = faster). Peak MB: {peak_note} "
        f"(not measured for compiled candidates and peers). Every output was checked against {impls[0]}'s "
        f"before timing (last column).\n"
        f"Reproduce: `python -m bench.report --configs {config_args} --impls {' '.join(impls)} --batch {batch} "
        f"--dtype {dtype} --threads {threads}`\n\n"
        + peer_summary(results, impls)
        + (rate_table(results, impls, flops, blas) if device == "cpu" else "")
        + (fast_summary(results, impls) if "fast" in impls else "")
        + f"{table}\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, impls, out.with_suffix(".png"), f"PVTv2 encoder forward, {device} {dtype}")
    if "fast" in impls:
        plot_speedup(results, impls, out.parent / (out.name + "_speedup.png"), f"fast=True speed-up, {device} {dtype}")
    if device == "cpu" and op_tables:
        text += "\n" + op_table(threads)
    out.with_suffix(".md").write_text(text)
    print(text)
    return results


def unmeasured(impl: str) -> bool:
    return impl.startswith(("compile:", "inference")) or impl in PEERS


def peer_summary(results, impls) -> str:
    """Issue 11's view: each candidate's time relative to timm eager (< 1 = faster than timm), and this library's
    modes against the fastest peer (OpenVINO), with the issue's targets."""
    if "timm" not in impls:
        return ""
    rows = []
    for preset, size in dict.fromkeys((r["preset"], r["size"]) for r in results):
        by_impl = {r["impl"]: r for r in results if (r["preset"], r["size"]) == (preset, size)}
        tm = by_impl["timm"]["ms"]
        row = [preset, f"{size}²", *(by_impl[i]["ms"] / tm for i in impls)]
        for mine in ("fast", "inference"):
            if mine in by_impl and "openvino" in by_impl:
                row.append(by_impl["openvino"]["ms"] / by_impl[mine]["ms"])
        rows.append(row)
    mine_cols = [f"{m} speed / OpenVINO's" for m in ("fast", "inference") if m in impls and "openvino" in impls]
    return (
        "Time relative to timm eager (< 1 = faster), and speed relative to OpenVINO (> 1 = faster). Issue 11's "
        "targets: fast ≥ 1.0× OpenVINO at 512²/1024² and ≤ 0.5 of timm at 224²; inference mode ≥ 1.1× "
        "OpenVINO everywhere; neither slower than timm-cl.\n\n"
        + markdown_table(["preset", "input", *impls, *mine_cols], rows)
        + "\n\n"
    )


def fast_summary(results, impls) -> str:
    """One row per config: fast=True's speed-up over every other candidate (time ratio, > 1 = fast is faster) and
    its peak forward memory relative to the reference's."""
    others = [i for i in impls if i != "fast"]
    rows = []
    for preset, size in dict.fromkeys((r["preset"], r["size"]) for r in results):
        by_impl = {r["impl"]: r for r in results if (r["preset"], r["size"]) == (preset, size)}
        fast = by_impl["fast"]
        memory = (fast["peak_mb"] / by_impl["reference"]["peak_mb"]) if "reference" in by_impl else math.nan
        rows.append([preset, f"{size}²", fast["ms"], *(by_impl[i]["ms"] / fast["ms"] for i in others), memory])
    headers = ["preset", "input", "fast ms", *(f"× {i}" for i in others), "peak memory / reference"]
    return (
        "fast=True at a glance: speed-up over each candidate (time ratio from the table below) and peak "
        "memory relative to the reference.\n\n" + markdown_table(headers, rows) + "\n\n"
    )


def op_table(threads: int, repeats: int = 15) -> str:
    """The fused CPU ops (dwconv + GELU, Linear-SRA pool, LayerNorm) vs PyTorch at the stage-1 shapes of b0 and b2
    at 512², with a plain copy of the same bytes as the bandwidth yardstick; then the conv FFN and attention tables."""
    from bench.harness import Candidate, time_interleaved
    from pvtv2_fast import PvtV2Config, _ext, ops, stage_sizes

    if not _ext.available():
        return "(C++ extension not built: no CPU op table)\n"
    rows = []
    for preset in ("b0", "b2"):
        cfg = PvtV2Config.from_preset(preset)
        h, w = stage_sizes(cfg, 512, 512)[0]
        c = cfg.hidden_sizes[0]
        ffn = int(c * cfg.mlp_ratios[0])
        x = torch.randn(1, h * w, ffn)
        wt, b = torch.randn(ffn, 1, 3, 3), torch.randn(ffn)
        y = torch.empty_like(x)
        tokens = torch.randn(1, h * w, c)
        ln_w, ln_b = torch.randn(c), torch.randn(c)
        cands = [
            Candidate("copy (same bytes)", lambda: y.copy_(x)),
            Candidate("dwconv+GELU torch", lambda: ops.dwconv_gelu(x, wt, b, h, w, backend="torch")),
            Candidate("dwconv+GELU cpu", lambda: ops.dwconv_gelu(x, wt, b, h, w, backend="cpu")),
            Candidate("pool 7×7 torch", lambda: ops.linear_sra_pool(tokens, h, w, backend="torch")),
            Candidate("pool 7×7 cpu", lambda: ops.linear_sra_pool(tokens, h, w, backend="cpu")),
            Candidate("LayerNorm torch", lambda: ops.layer_norm(tokens, ln_w, ln_b, 1e-6, backend="torch")),
            Candidate("LayerNorm cpu", lambda: ops.layer_norm(tokens, ln_w, ln_b, 1e-6, backend="cpu")),
        ]
        t = time_interleaved(cands, repeats=repeats, warmup=2)
        # (names, the baseline its speed-ups are against, tensor, bytes read + written)
        groups = (
            (("copy (same bytes)", "dwconv+GELU torch", "dwconv+GELU cpu"), "dwconv+GELU torch", f"{h}×{w}×{ffn}",
             2 * x.numel() * 4),
            (("pool 7×7 torch", "pool 7×7 cpu"), "pool 7×7 torch", f"{h}×{w}×{c}", tokens.numel() * 4),
            (("LayerNorm torch", "LayerNorm cpu"), "LayerNorm torch", f"{h}×{w}×{c}", 2 * tokens.numel() * 4),
        )  # fmt: skip
        for names, baseline, shape, nbytes in groups:
            for name in names:
                rows.append([preset, shape, name, t[name].median * 1e3, nbytes / t[name].median / 1e9,
                             t[baseline].median / t[name].median])  # fmt: skip
    headers = [
        "preset (stage 1 @512²)",
        "tensor",
        "op",
        "median ms",
        "GB/s (one read + one write)",
        "speed-up vs torch composition",
    ]
    return (
        f"## Fused CPU ops (C++ extension, ISA: {_ext.cpu_isa()}, {threads} threads)\n\n"
        + markdown_table(headers, rows)
        + "\n"
        + ffn_table(repeats)
        + attention_table(repeats)
    )


def attention_table(repeats: int) -> str:
    """Every stage's attention of b0 (32-wide heads) and b2 (64-wide) at 224² (49 keys) and 1024²: PyTorch's SDPA
    against the C++ kernel (fp32), and which of the two ``backend="auto"`` takes there (the kernel's measured
    ``slower`` rule)."""
    from bench.harness import Candidate, time_interleaved
    from pvtv2_fast import PvtV2Config, ops
    from pvtv2_fast.ops.registry import OPS
    from pvtv2_fast.validation import stage_shapes

    rows = []
    for preset, size in itertools.product(("b0", "b2"), (224, 1024)):
        for stage, shape in enumerate(stage_shapes(PvtV2Config.from_preset(preset), size, size)):
            n, m, c, heads = shape.height * shape.width, shape.keys, shape.channels, shape.heads
            q, kv = torch.randn(1, n, c), torch.randn(1, m, 2 * c)
            args = (q, kv[..., :c], kv[..., c:], heads, (c // heads) ** -0.5)  # the op's full arguments
            cands = [Candidate(b, lambda b=b: ops.sra_attention(*args, backend=b)) for b in ("torch", "cpu")]
            with torch.inference_mode():
                t = time_interleaved(cands, repeats=repeats, warmup=1)
            auto = OPS["sra_attention"].resolve("auto", args)
            flops = 4 * n * m * c  # q·kᵀ and p·v
            for cand in cands:
                med = t[cand.name].median
                rows.append([f"{preset} @{size}² stage {stage + 1}", f"{n} × {m}, {heads} × {c // heads}",
                             "SDPA (torch)" if cand.name == "torch" else "C++ (cpu)", med * 1e3, flops / med / 1e9,
                             t["torch"].median / med, "✓" if auto == cand.name else ""])  # fmt: skip
    headers = ["preset @size", "queries × keys, heads × dim", "attention", "median ms", "GFLOP/s", "× SDPA", "auto"]
    return (
        "\n### Attention: SDPA vs the C++ kernel (fp32)\n\n"
        "GFLOP/s counts q·kᵀ and p·v (4·N·M·C). `auto` takes the C++ kernel for fp32 / fp16 heads of ≤ 64 channels, "
        "SDPA otherwise (bf16, wider heads), as measured here.\n\n" + markdown_table(headers, rows) + "\n"
    )


def ffn_table(repeats: int) -> str:
    """The whole conv FFN at the stage-1 shapes of b0 and b2 at 512² and 1024²: the reference composition, the
    unfused fast path (fc1 → fused dwconv+GELU → fc2) and the band-streamed ``conv_ffn`` kernel."""
    from bench.harness import Candidate, time_interleaved
    from pvtv2_fast import PvtV2Config, ops, stage_sizes

    rows = []
    for preset, size in (("b0", 512), ("b2", 512), ("b0", 1024)):
        cfg = PvtV2Config.from_preset(preset)
        h, w = stage_sizes(cfg, size, size)[0]
        c = cfg.hidden_sizes[0]
        hid = int(c * cfg.mlp_ratios[0])
        x = torch.randn(1, h * w, c)
        args = (
            torch.randn(hid, c) * c**-0.5,
            torch.randn(hid),
            torch.randn(hid, 1, 3, 3),
            torch.randn(hid),
            torch.randn(c, hid) * hid**-0.5,
            torch.randn(c),
        )

        def unfused():
            hidden = torch.nn.functional.linear(x, args[0], args[1])
            hidden = ops.dwconv_gelu(hidden, args[2], args[3], h, w, backend="cpu")
            return torch.nn.functional.linear(hidden, args[4], args[5])

        cands = [
            Candidate("torch composition", lambda: ops.conv_ffn(x, *args, h, w, backend="torch")),
            Candidate("fc1 → dwconv+GELU cpu → fc2", unfused),
            Candidate("conv_ffn cpu (band-streamed)", lambda: ops.conv_ffn(x, *args, h, w, backend="cpu")),
        ]
        with torch.inference_mode():
            t = time_interleaved(cands, repeats=repeats, warmup=2)
        flops = 2 * h * w * c * hid * 2 + 2 * 9 * h * w * hid
        base = t["torch composition"].median
        for cand in cands:
            m = t[cand.name].median
            rows.append(
                [f"{preset} @{size}²", f"{h}×{w}: {c} → {hid} → {c}", cand.name, m * 1e3, flops / m / 1e9, base / m]
            )
    a = torch.randn(1024, 1024)
    out = torch.empty(1024, 1024)
    gemm = time_interleaved([Candidate("gemm", lambda: torch.mm(a, a, out=out))], repeats=repeats, warmup=2)["gemm"]
    headers = ["preset (stage 1)", "map: channels", "FFN implementation", "median ms", "GFLOP/s", "speed-up vs torch"]
    return (
        "\n### The whole conv FFN (fc1 → dwconv 3×3 → GELU → fc2)\n\n"
        "Stage 1 widens the tokens 8× (mlp_ratio); `conv_ffn` never materialises that hidden state. "
        f"GFLOP/s counts the two GEMMs and the 3×3 taps; the yardstick is this machine's fp32 GEMM rate "
        f"(1024³ `torch.mm`): {2 * 1024**3 / gemm.median / 1e9:.0f} GFLOP/s.\n\n" + markdown_table(headers, rows) + "\n"
    )


def plot_speedup(results, impls, path: Path, title: str) -> None:
    """fast=True's speed-up over each other candidate against resolution, one panel per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = sorted({r["preset"] for r in results})
    fig, axes = plt.subplots(1, len(presets), figsize=(5.5 * len(presets), 4), squeeze=False)
    for ax, preset in zip(axes[0], presets):
        sizes = sorted({r["size"] for r in results if r["preset"] == preset})
        fast = {r["size"]: r["ms"] for r in results if r["preset"] == preset and r["impl"] == "fast"}
        for impl in impls:
            if impl == "fast":
                continue
            other = {r["size"]: r["ms"] for r in results if r["preset"] == preset and r["impl"] == impl}
            ax.plot(sizes, [other[s] / fast[s] for s in sizes], marker="o", label=f"vs {impl}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [f"{s}²" for s in sizes])
        ax.set_xlabel("input resolution")
        ax.set_ylabel("speed-up of fast=True (×)")
        ax.set_title(preset)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results, impls, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["preset"], r["size"]) for r in results}, key=lambda g: (g[0], g[1]))
    # without memory measurements (--no-memory) only the latency panel is drawn
    with_memory = any(math.isfinite(r["peak_mb"]) for r in results)
    panels = 2 if with_memory else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    axes = axes[0]
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        ms = [next(r["ms"] for r in results if (r["preset"], r["size"]) == g and r["impl"] == impl) for g in groups]
        mb = [
            next(r["peak_mb"] for r in results if (r["preset"], r["size"]) == g and r["impl"] == impl) for g in groups
        ]
        xs = [i + k * width for i in range(len(groups))]
        axes[0].bar(xs, ms, width, label=impl)
        if with_memory:
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
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="preset:size pairs")
    parser.add_argument("--impls", nargs="+", default=DEFAULT_IMPLS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-op-tables", action="store_true", help="skip the fused-op and FFN tables")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_e2e")
    args = parser.parse_args(argv)
    configs = parse_configs(args.configs)
    if args.dtype == "bf16" and bf16_skip_reason():
        print(f"bf16 run skipped: {bf16_skip_reason()}")
        return
    if args.dtype != "fp32" and "onnxruntime" in args.impls:
        print("onnxruntime dropped from a bf16 run: it has no bf16 CPU path here")
        args.impls = [i for i in args.impls if i != "onnxruntime"]
    run(
        configs,
        args.impls,
        args.repeats,
        args.warmup,
        not args.no_memory,
        args.threads,
        args.out,
        dtype=args.dtype,
        batch=args.batch,
        op_tables=not args.no_op_tables,
    )


if __name__ == "__main__":
    main()
