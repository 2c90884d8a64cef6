"""The phases of ``bench.gpu_quick``, each run in its own process (``run_child``).

Every phase appends its result rows to its Markdown file as they are produced (a killed phase leaves what it
measured) and stops starting new work when its deadline is near. The case lists are the real GPU plan; a dry run
(``--dry-run``: CPU tensors, Triton interpreter, the C++ CPU kernels standing in for the CUDA C++ ones) runs the
same lists shrunk to tiny shapes (``shrink``), and both report the plan's counts, from which
``bench.gpu_estimate`` estimates the GPU run time.

Nothing heavy is imported at module level: the driver imports ``SECTIONS`` from here without torch.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

# Max |error| ≤ atol + rtol·|reference| against float64 on the same rounded inputs (tests/op_cases.py's values):
# fp32 keeps 1e-5 (tf32x3 dots and fp32 accumulation: ~1e-6 seen); fp16 is four ulps at magnitude 1; bf16 two
# ulps relative plus an absolute floor. conv_ffn adds two GEMMs that round their own outputs: twice that.
TOL = {"fp32": (1e-5, 1e-5), "fp16": (2e-3, 2e-3), "bf16": (1e-2, 1.6e-2)}
TOL_FACTOR = {"conv_ffn": 2.0}
MODEL_ATOL = 1e-4  # fast=True vs the fp32 reference model, TF32 off (tests/test_fast_model.py's GPU contract)
REF_CHUNK_BYTES = 1 << 30  # the float64 attention reference is computed in query chunks of this many score bytes

PARITY_HEADERS = [
    "case",
    "op",
    "backend",
    "dtype",
    "shape (B×…)",
    "checked",
    "max abs err",
    "err / tol",
    "NaN left",
    "result",
]
SECTIONS = {
    "env": ("Environment", "", None),
    "parity": (
        "Parity against float64",
        'Inputs rounded to the dtype, reference in float64 on the same values (`backend="torch"`), '
        "outputs pre-filled with NaN (deterministic mode fills `torch.empty`), so unwritten elements "
        "show as `NaN left`. `checked`: which batch items and query rows were compared (all elements are "
        "scanned for NaN). TF32 off for the models.",
        PARITY_HEADERS,
    ),
    "parity_cuda": ("Parity against float64: CUDA C++ ops", "", PARITY_HEADERS),
    "kernels": ("Kernel timings", "", None),
    "e2e": ("End to end", "", None),
    "extras": ("If time is left", "", None),
}


# ---------------------------------------------------------------------------------------------- output
class Results:
    """One phase's Markdown file; every line is appended (and flushed) when written."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, text: str) -> None:
        with open(self.path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def table(self, headers: List[str]) -> None:
        self.write("\n| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))

    def row(self, values) -> None:
        self.write("| " + " | ".join(_fmt(v) for v in values) + " |")


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "—"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def section_header(phase: str) -> str:
    title, intro, headers = SECTIONS[phase]
    text = f"\n## {title}\n\n{intro}\n" if intro else f"\n## {title}\n"
    if headers:
        text += "\n| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n"
    return text


@dataclass
class Ctx:
    phase: str
    worker: str
    dry: bool
    deadline: float
    out: Results
    device: str
    counts: Dict[str, int] = field(default_factory=lambda: {"processes": 1})
    plan_compiles: set = field(default_factory=set)  # Triton binaries the real plan needs (see triton_compile_keys)
    plan_sweeps: set = field(default_factory=set)

    def left(self) -> float:
        return self.deadline - time.time()

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def time(self, fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> float:
        """Median seconds of ``fn``: CUDA events on the GPU, wall clock on the CPU (dry run)."""
        import statistics

        import torch

        repeats, warmup = (2, 1) if self.dry else (repeats, warmup)
        for _ in range(warmup):
            fn()
        self.sync()
        samples = []
        for _ in range(repeats):
            if self.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        return statistics.median(samples)


# ---------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Case:
    """One parity case. ``op``: attention ``(n, m, c, heads)``, dwconv ``(h, w, c, relu)``, pool ``(h, w, c)``,
    conv_ffn ``(h, w, c, hidden)``. ``items``: batch items compared with the reference (all are NaN-checked)."""

    name: str
    op: str
    batch: int
    shape: Tuple
    items: Tuple[int, ...] = (0,)
    big: bool = False  # > 2³¹ elements or a 4096² map: half precision only, counted as a big case

    def describe(self) -> str:
        return f"{self.batch}×" + "×".join(str(s) for s in self.shape)


def _stage_shapes(preset: str, height: int, width: int):
    from pvtv2_fast import PvtV2Config, stage_sizes

    cfg = PvtV2Config.from_preset(preset)
    for i, (h, w) in enumerate(stage_sizes(cfg, height, width)):
        c, heads, sr = cfg.hidden_sizes[i], cfg.num_attention_heads[i], cfg.sr_ratios[i]
        m = 49 if cfg.linear_attention else ((h // sr) * (w // sr) if sr > 1 else h * w)
        yield i + 1, h, w, c, heads, m, int(c * cfg.mlp_ratios[i]), cfg.linear_attention


def parity_plan(dtype: str) -> List[Case]:
    """The Triton parity cases for one dtype: b0/b2 stage maps at 512² and 2048² (batch 2 / 1), odd maps
    (517×389), the 4096² stage-1 map, Linear SRA (49 keys, ReLU'd FFN input), and in half precision the batch
    items whose offsets pass 2³¹ elements (batch 8 of b2's 4096² FFN map; batch 40 of its 4096² tokens)."""
    cases: List[Case] = []
    for preset, sizes in (
        ("b0", ((512, 512), (2048, 2048))),
        ("b2", ((512, 512), (2048, 2048), (517, 389))),
        ("b2_linear", ((2048, 2048), (517, 389))),
    ):
        for size in sizes:
            batch = 2 if size[0] <= 517 else 1
            items = (0, batch - 1)
            for stage, h, w, c, heads, m, ffn, linear in _stage_shapes(preset, *size):
                tag = f"{preset}@{size[0]}×{size[1]} s{stage}"
                cases.append(Case(f"{tag}", "attention", batch, (h * w, m, c, heads), items))
                cases.append(Case(f"{tag}", "dwconv", batch, (h, w, ffn, linear), items))
                if linear and stage == 1:
                    cases.append(Case(f"{tag}", "pool", batch, (h, w, c), items))
    for preset in ("b0", "b2"):  # a 4096² image's stage-1 map: 1,048,576 tokens
        stage, h, w, c, heads, m, ffn, linear = next(_stage_shapes(preset, 4096, 4096))
        cases.append(Case(f"{preset}@4096² s1", "attention", 1, (h * w, m, c, heads), big=True))
        cases.append(Case(f"{preset}@4096² s1", "dwconv", 1, (h, w, ffn, False), big=True))
    stage, h, w, c, heads, m, ffn, linear = next(_stage_shapes("b2_linear", 4096, 4096))
    cases.append(Case("b2_linear@4096² s1", "pool", 1, (h, w, c), big=True))
    cases.append(Case("b2@1024² s1 FFN", "conv_ffn", 1, (256, 256, 64, 512)))
    if dtype != "fp32":  # offsets past 2³¹: fp32 would only double the memory, the indexing is the same
        cases.append(Case("b2@4096² s1 batch 8", "dwconv", 8, (1024, 1024, 512, False), (7,), big=True))
        cases.append(Case("b2_linear@4096² s1 batch 40", "attention", 40, (1024 * 1024, 49, 64, 1), (39,), big=True))
        cases.append(Case("b2_linear@4096² s1 batch 40", "pool", 40, (1024, 1024, 64), (39,), big=True))
    return cases


def cuda_parity_plan(dtype: str) -> List[Case]:
    """The CUDA C++ ops (dwconv+GELU, pooling) at the Triton plan's maps; the big maps and batches in bf16 only
    (the indexing is dtype-independent, and they are the costly cases)."""
    return [c for c in parity_plan("bf16") if c.op in ("dwconv", "pool") and (dtype == "bf16" or not c.big)]


def shrink(case: Case) -> Case:
    """The dry run's stand-in: the same op, path and channel count on a tiny map. Odd sizes stay odd, attention
    keeps its one-block (≤ 128 keys) or streaming path, batch items past the first stay (batch ≤ 3)."""
    batch = min(case.batch, 3)
    items = tuple(sorted({min(i, batch - 1) for i in case.items}))
    if case.op == "attention":
        n, m, c, heads = case.shape
        m = m if m <= 128 and m < 64 else (min(m, 100) if m <= 128 else 130 + m % 3)
        shape = (min(n, 40 + n % 7), m, c, heads)
    else:
        h, w = case.shape[:2]
        shape = (min(h, 5 + h % 4), min(w, 6 + w % 3), *case.shape[2:])
    return replace(case, batch=batch, shape=shape, items=items)


# ---------------------------------------------------------------------------------------------- compile counts
def triton_compile_keys(case: Case, dtype: str) -> Tuple[set, set]:
    """The Triton binaries (compiles) and autotune sweeps the real ``case`` needs on the GPU: one binary per
    kernel, dtype, constexpr tile and integer-argument specialisation (Triton specialises ints on ``== 1`` and
    on divisibility by 16), one sweep per distinct autotune key (N, M, D)."""
    from pvtv2_fast.kernels import dwconv_gelu as dw
    from pvtv2_fast.kernels import linear_sra_pool as pl
    from pvtv2_fast.kernels import sra_attention as at

    def spec(*ints):
        return tuple("1" if v == 1 else "16" if v % 16 == 0 else "" for v in ints)

    compiles, sweeps = set(), set()
    if case.op == "attention":
        n, m, c, heads = case.shape
        d = c // heads
        bd = at.block_d(d)
        sp = spec(heads, d, n * c, c, m * 2 * c, 2 * c)  # N and M are not specialised (do_not_specialize)
        if m <= (at.ONE_BLOCK_MAX_KEYS_FP32 if dtype == "fp32" else at.ONE_BLOCK_MAX_KEYS):
            compiles.add(("attn", dtype, at.one_block_tile(dtype == "fp32", bd, m), bd, sp))
        else:
            configs = at.AUTOTUNE_CONFIGS_FP32 if dtype == "fp32" else at.AUTOTUNE_CONFIGS
            compiles.update(("attn-stream", dtype, i, bd, sp) for i in range(len(configs)))
            sweeps.add((dtype, n, m, d))
    elif case.op in ("dwconv", "conv_ffn"):
        h, w, c = case.shape[:3]
        if case.op == "conv_ffn":
            c = case.shape[3]
        relu = bool(case.shape[3]) if case.op == "dwconv" else False
        compiles.add(("dwconv", dtype, relu, dw.tile(h * w, c, False), spec(c, h * w * c)))  # H, W: not specialised
    elif case.op == "pool":
        h, w, c = case.shape
        max_bin = (-(-h // 7) + 1) * (-(-w // 7) + 1)
        tile = (min(pl.MAX_BLOCK_BIN, 1 << (max_bin - 1).bit_length()), min(pl.MAX_BLOCK_C, 1 << (c - 1).bit_length()))
        compiles.add(("pool", dtype, tile, spec(c, h * w * c)))
    return compiles, sweeps


def measured_compiles() -> Optional[int]:
    """Binaries in the Triton kernels' JIT caches of this process (None under the interpreter)."""
    try:
        from pvtv2_fast.kernels import dwconv_gelu, linear_sra_pool, sra_attention

        total = 0
        for fn in (
            sra_attention.sra_attention_kernel,
            dwconv_gelu.dwconv_gelu_kernel,
            linear_sra_pool.linear_sra_pool_kernel,
        ):
            caches = getattr(fn, "device_caches", None)
            if caches is None:
                return None
            total += sum(len(entry[0]) for entry in caches.values())
        return total
    except Exception:  # noqa: BLE001 - a count, not a result
        return None


# ---------------------------------------------------------------------------------------------- parity
def _randn(shape, dtype, device, seed: int):
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=dtype)


def _compare(out, ref, dtype: str, op: str):
    """(max abs error, max error / tolerance) of ``out`` vs the float64 ``ref``."""
    atol, rtol = TOL[dtype]
    factor = TOL_FACTOR.get(op, 1.0)
    diff = (out.double() - ref).abs()
    bound = (atol + rtol * ref.abs()) * factor
    return diff.max().item(), (diff / bound).max().item()


def _query_rows(n: int, device) -> Tuple[object, str]:
    """All query rows up to 16384, else the first and last 4096 and 8192 spread between (index errors show in
    whole tiles, so they are caught; the NaN scan covers every row)."""
    import torch

    if n <= 16384:
        return torch.arange(n, device=device), "all rows"
    rows = torch.cat([torch.arange(4096), torch.linspace(4096, n - 4097, 8192).long(), torch.arange(n - 4096, n)])
    return rows.to(device), "16384 rows"


def run_case(ctx: Ctx, case: Case, dtype_name: str, backend: str) -> bool:
    import torch

    from pvtv2_fast import ops

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    dev, b, seed = ctx.device, case.batch, zlib.crc32(f"{case.name} {case.op}".encode())
    items = list(case.items)
    checked = f"items {','.join(map(str, items))}"
    if case.op == "attention":
        n, m, c, heads = case.shape
        q = _randn((b, n, c), dtype, dev, seed)
        kv = _randn((b, m, 2 * c), dtype, dev, seed + 1)
        k, v = kv[..., :c], kv[..., c:]
        out = ops.sra_attention(q, k, v, heads, backend=backend)
        rows, what = _query_rows(n, dev)
        checked += f", {what}"
        got = out[items][:, rows]
        qd, kd, vd = q[items][:, rows].double(), k[items].double(), v[items].double()
        chunk = max(1, REF_CHUNK_BYTES // (8 * m * heads * len(items)))
        ref = torch.cat(
            [
                ops.sra_attention(qd[:, i : i + chunk], kd, vd, heads, backend="torch")
                for i in range(0, qd.shape[1], chunk)
            ],
            dim=1,
        )
    elif case.op == "dwconv":
        h, w, c, relu = case.shape
        x = _randn((b, h * w, c), dtype, dev, seed)
        wt, bias = _randn((c, 1, 3, 3), dtype, dev, seed + 1), _randn((c,), dtype, dev, seed + 2)
        out = ops.dwconv_gelu(x, wt, bias, h, w, relu_input=relu, backend=backend)
        got = out[items]
        ref = ops.dwconv_gelu(x[items].double(), wt.double(), bias.double(), h, w, relu_input=relu, backend="torch")
    elif case.op == "pool":
        h, w, c = case.shape
        x = _randn((b, h * w, c), dtype, dev, seed)
        out = ops.linear_sra_pool(x, h, w, backend=backend)
        got = out[items]
        ref = ops.linear_sra_pool(x[items].double(), h, w, backend="torch")
    elif case.op == "conv_ffn":
        h, w, c, hidden = case.shape
        x = _randn((b, h * w, c), dtype, dev, seed)
        fc1_w, fc1_b = _randn((hidden, c), dtype, dev, seed + 1) * c**-0.5, _randn((hidden,), dtype, dev, seed + 2)
        dw_w, dw_b = _randn((hidden, 1, 3, 3), dtype, dev, seed + 3) / 3, _randn((hidden,), dtype, dev, seed + 4)
        fc2_w, fc2_b = _randn((c, hidden), dtype, dev, seed + 5) * hidden**-0.5, _randn((c,), dtype, dev, seed + 6)
        weights = (fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b)
        out = ops.conv_ffn(x, *weights, h, w, backend=backend)
        got = out[items]
        ref = ops.conv_ffn(x[items].double(), *(t.double() for t in weights), h, w, backend="torch")
    else:
        raise ValueError(f"unknown op {case.op!r}")
    nan_left = int(torch.isnan(out).sum().item())
    err, ratio = _compare(got, ref, dtype_name, case.op)
    ok = nan_left == 0 and ratio <= 1.0 and math.isfinite(err)
    ctx.out.row(
        [
            case.name,
            case.op,
            backend,
            dtype_name,
            case.describe(),
            checked,
            err,
            ratio,
            nan_left,
            "ok" if ok else "**FAIL**",
        ]
    )
    del out, ref, got
    return ok


def _fill_empty_with_nan() -> None:
    """``torch.empty`` (the kernels' outputs) comes back NaN-filled, so elements a kernel never writes show.
    Deterministic mode does it; warn_only keeps ops without a deterministic kernel running."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True


def _tf32_off() -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def dry_key(case: Case) -> tuple:
    """Cases with the same key take the same code path (op, kernel path, batch past the first, ReLU): the dry
    run executes one of each and counts them all."""
    path = case.shape[1] <= 128 if case.op == "attention" else case.shape[3] if case.op == "dwconv" else None
    return case.op, path, case.batch > 2, case.big


def _run_cases(ctx: Ctx, cases: List[Case], dtype: str, backend: str) -> None:
    seen = set()
    for case in cases:
        compiles, sweeps = triton_compile_keys(case, dtype) if backend == "triton" else (set(), set())
        ctx.plan_compiles |= compiles
        ctx.plan_sweeps |= sweeps
        ctx.count("cases")
        ctx.count("big" if case.big else "small")
        if ctx.dry:
            if dry_key(case) in seen:
                continue
            seen.add(dry_key(case))
        elif ctx.left() < (30 if case.big else 5):
            ctx.out.row(
                [case.name, case.op, backend, dtype, case.describe(), "—", "—", "—", "—", "not run: phase time up"]
            )
            continue
        run = shrink(case) if ctx.dry else case
        try:
            if not run_case(ctx, run, dtype, backend):
                ctx.count("failed")
        except Exception as e:  # noqa: BLE001 - one row per case, the phase goes on
            ctx.count("failed")
            ctx.out.row(
                [
                    case.name,
                    case.op,
                    backend,
                    dtype,
                    run.describe(),
                    "—",
                    "—",
                    "—",
                    "—",
                    f"**ERROR** {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                ]
            )
        finally:
            if ctx.device == "cuda":
                import torch

                torch.cuda.empty_cache()


def phase_parity(ctx: Ctx) -> None:
    dtype = ctx.worker or "fp32"
    _tf32_off()
    _fill_empty_with_nan()
    _run_cases(ctx, parity_plan(dtype), dtype, "triton")
    if dtype == "fp32":
        model_parity(ctx)


def phase_parity_cuda(ctx: Ctx) -> None:
    _tf32_off()
    _fill_empty_with_nan()
    backend = "cpu" if ctx.dry else "cuda"  # the dry run's stand-in: the C++ CPU kernels
    for dtype in ("fp32", "fp16", "bf16"):
        _run_cases(ctx, cuda_parity_plan(dtype), dtype, backend)


def model_parity(ctx: Ctx) -> None:
    """fast=True vs the reference model (fp32, TF32 off) at an odd size, batch 2; both also against float64."""
    import torch

    from pvtv2_fast import PvtV2Config, PvtV2Model

    size = (67, 45) if ctx.dry else (517, 389)
    for preset in ("b0", "b2", "b2_linear"):
        ctx.count("cases")
        ctx.count("models")
        name = f"{preset}@{size[0]}×{size[1]} model"
        if ctx.left() < 20 and not ctx.dry:
            ctx.out.row([name, "fast=True", "auto", "fp32", "2×3×…", "—", "—", "—", "—", "not run: phase time up"])
            continue
        torch.manual_seed(0)
        model = PvtV2Model(PvtV2Config.from_preset(preset)).eval().to(ctx.device)
        x = _randn((2, 3, *size), torch.float32, ctx.device, 0)
        with torch.no_grad():
            ref = model.set_fast(False)(x, output_hidden_states=True).hidden_states
            fast = model.set_fast(True)(x, output_hidden_states=True).hidden_states
            ref64 = model.set_fast(False).double()(x.double(), output_hidden_states=True).hidden_states
        err = max((a.double() - r.double()).abs().max().item() for a, r in zip(fast, ref))
        err_fast64 = max((a.double() - r).abs().max().item() for a, r in zip(fast, ref64))
        err_ref64 = max((a.double() - r).abs().max().item() for a, r in zip(ref, ref64))
        nan_left = sum(int(torch.isnan(a).sum().item()) for a in fast)
        ok = nan_left == 0 and err <= MODEL_ATOL
        ctx.out.row(
            [
                name,
                "fast=True vs reference",
                "auto",
                "fp32",
                f"2×3×{size[0]}×{size[1]}",
                f"all stages; vs fp64: fast {err_fast64:.2e}, reference {err_ref64:.2e}",
                err,
                err / MODEL_ATOL,
                nan_left,
                "ok" if ok else "**FAIL**",
            ]
        )
        if not ok:
            ctx.count("failed")
        del model


# ---------------------------------------------------------------------------------------------- env
def phase_env(ctx: Ctx) -> None:
    import platform
    import subprocess
    import sys

    import torch

    def cmd(args) -> str:
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unavailable ({type(e).__name__})"

    rows = [
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("CPU cores", os.cpu_count()),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda})"),
    ]
    try:
        import triton

        rows.append(("triton", triton.__version__))
    except ImportError as e:
        rows.append(("triton", f"not importable: {e}"))
    from importlib import metadata

    for dist in ("transformers", "timm", "numpy"):
        try:
            rows.append((dist, metadata.version(dist)))  # without importing: transformers takes seconds
        except metadata.PackageNotFoundError:
            rows.append((dist, "not installed"))
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rows += [
            (
                "GPU",
                f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs",
            ),
            ("driver", cmd(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])),
        ]
    else:
        rows.append(("GPU", "none (dry run)" if ctx.dry else "none visible to torch"))
    nvcc = cmd(["nvcc", "--version"]).splitlines()
    rows.append(("nvcc", nvcc[-1] if nvcc else "not found"))
    from bench.report import cpu_line

    rows.append(("CPU", cpu_line()[len("CPU: ") :]))
    # the compiler torch's cpp_extension builds with ($CXX, else c++), its default std::string ABI against torch's
    cxx = os.environ.get("CXX", "c++")
    version = cmd([cxx, "--version"]).splitlines()
    macros = f"echo '#include <string>' | {cxx} -x c++ -dM -E -"
    abi = cmd(["bash", "-c", f"{macros} | grep -o '_GLIBCXX_USE_CXX11_ABI [01]'"])
    kind = cmd(["bash", "-c", f'file -L "$(command -v {cxx})"'])
    rows.append(
        (
            "C++ compiler",
            f"{cxx}: {version[0] if version else 'not found'}; default {abi or 'ABI macro not found'}, torch's "
            f"{int(torch._C._GLIBCXX_USE_CXX11_ABI)}; {kind[:160]}",
        )
    )
    if "script" in kind:  # a wrapper: which flags it adds decides how the extension links the C++ runtime
        script = cmd(["bash", "-c", f"grep -v '^#' \"$(command -v {cxx})\" | head -c 400"])
        rows.append(("C++ compiler wrapper", script.replace("\n", " ⏎ ").replace("|", "\\|")))
    # what decides where a C++ throw lands: an interposed library, and the C++ runtime(s) this process has mapped
    rows.append(("LD_PRELOAD", os.environ.get("LD_PRELOAD") or "unset"))
    try:
        with open("/proc/self/maps") as f:
            runtimes = sorted({line.split()[-1] for line in f if "libstdc++" in line or "libgcc_s" in line})
    except OSError as e:
        runtimes = [f"unreadable ({e})"]
    rows.append(("C++ runtime mapped", ", ".join(runtimes) or "none"))
    from pvtv2_fast import _ext

    rows.append(("pvtv2_fast._C", "loads" if _ext.available() else _ext.unavailable_reason()))
    rows.append(
        (
            "TF32 defaults",
            f"matmul {torch.backends.cuda.matmul.allow_tf32}, "
            f"cudnn {torch.backends.cudnn.allow_tf32} (parity phases turn both off)",
        )
    )
    ctx.out.table(["item", "value"])
    for k, v in rows:
        ctx.out.row([k, v])


# ---------------------------------------------------------------------------------------------- kernels
KERNEL_SIZES = [(512, 512), (1024, 1024), (2048, 2048)]


def kernel_plan(ctx: Ctx, dtype: str):
    """(preset, size to run, real size) for b0/b2 at 512², 1024², 2048²; counts the real plan's timed calls,
    Triton compiles and autotune sweeps (the dry run runs a 64² image in place of each real size)."""
    for preset in ("b0", "b2"):
        for real in KERNEL_SIZES:
            for stage, h, w, c, heads, m, ffn, linear in _stage_shapes(preset, *real):
                ctx.count("timed", 2 + 4 + (3 if stage == 1 else 0))  # attention 2, dwconv 4, pool 3
                plan_model_stage(ctx, dtype, h, w, c, heads, m, ffn, linear, pool=stage == 1)
            yield preset, ((64, 64) if ctx.dry else real), real


def plan_model_stage(ctx: Ctx, dtype: str, h, w, c, heads, m, ffn, linear, pool: bool, batch: int = 1) -> None:
    """Count the Triton work one stage's ops need in a new process: autotune sweeps (their results are not kept
    across processes) and binaries the parity phase has not compiled (Triton's on-disk cache serves those)."""
    if not hasattr(plan_model_stage, "cached"):
        plan_model_stage.cached = {
            dt: set().union(*(triton_compile_keys(case, dt)[0] for case in parity_plan(dt))) for dt in TOL
        }
    cases = [Case("", "attention", batch, (h * w, m, c, heads)), Case("", "dwconv", batch, (h, w, ffn, linear))]
    for case in cases + ([Case("", "pool", batch, (h, w, c))] if pool else []):
        compiles, sweeps = triton_compile_keys(case, dtype)
        ctx.plan_compiles |= compiles - plan_model_stage.cached[dtype]
        ctx.plan_sweeps |= sweeps


def device_ceilings(ctx: Ctx, dtype, n_copy: int, n_mm: int) -> Tuple[float, float]:
    """(copy bytes read + written per second, matmul FLOP/s in ``dtype``), measured now; buffers freed on return."""
    import torch

    src = torch.empty(n_copy, dtype=torch.uint8, device=ctx.device).random_()
    dst = torch.empty_like(src)
    bandwidth = 2 * n_copy / ctx.time(lambda: dst.copy_(src))
    a, b = (torch.randn(n_mm, n_mm, device=ctx.device, dtype=dtype) for _ in range(2))
    return bandwidth, 2 * n_mm**3 / ctx.time(lambda: a @ b, repeats=10, warmup=3)


def phase_kernels(ctx: Ctx) -> None:
    """Ceilings first (copy bandwidth, GEMM rate) so every row's '% of floor' uses this run's numbers."""
    import torch

    from bench.kernels import attention_versus_sdpa_table, versus_table
    from pvtv2_fast import _ext, ops

    dev, dtype = ctx.device, (torch.float32 if ctx.dry else torch.bfloat16)
    elt = torch.finfo(dtype).bits // 8
    n_mm = 256 if ctx.dry else 8192
    bandwidth, rate = device_ceilings(ctx, dtype, 2**22 if ctx.dry else 2**28, n_mm)
    ctx.out.write(
        f"\nMeasured here: copy {bandwidth / 1e9:.0f} GB/s (read + write), {str(dtype)[6:]} matmul "
        f"{rate / 1e12:.1f} TFLOP/s ({n_mm}³). '% of floor': max(bytes / copy rate, flops / matmul "
        f"rate) over the time; times include the layout copies the PyTorch compositions need."
    )
    ctx.out.table(["kernel", "shape", "median µs", "GB/s", "% of floor", "× torch"])
    cuda_backend = "cpu" if ctx.dry else "cuda"
    versus: Dict[str, List[float]] = {"dwconv_gelu": [], "linear_sra_pool": []}
    attention_ratios: List[float] = []  # Triton / SDPA
    has_cpp = {
        op: _ext.has_kernel(native, cuda_backend)
        for op, native in (("dwconv_gelu", "dwconv_gelu"), ("linear_sra_pool", "linear_sra_pool"))
    }

    def row(name, shape, t, nbytes, flops, t_ref=None):
        floor = max(nbytes / bandwidth, flops / rate)
        ctx.out.row([name, shape, t * 1e6, nbytes / t / 1e9, 100 * floor / t, t_ref / t if t_ref else float("nan")])

    for preset, size, real in kernel_plan(ctx, "bf16"):
        if ctx.dry and (preset, real) != ("b0", KERNEL_SIZES[0]):
            continue  # the dry run times one preset at one (tiny) size; the plan's counts cover all
        for stage, h, w, c, heads, m, ffn, _linear in _stage_shapes(preset, *size):
            if ctx.left() < 10:
                ctx.out.row([f"{preset}@{size[0]}² s{stage}", "not run: phase time up", "", "", "", ""])
                continue
            tag, n = f"{preset}@{size[0]}² s{stage}", h * w
            q = torch.randn(1, n, c, device=dev, dtype=dtype)
            kv = torch.randn(1, m, 2 * c, device=dev, dtype=dtype)
            k, v = kv[..., :c], kv[..., c:]
            nbytes, flops = (2 * n * c + 2 * m * c) * elt, 4 * n * m * c
            shape = f"N={n} M={m} C={c} D={c // heads}"
            t_ref = ctx.time(lambda: ops.sra_attention(q, k, v, heads, backend="torch"))
            t_tr = ctx.time(lambda: ops.sra_attention(q, k, v, heads, backend="triton"))
            row(f"{tag} attention SDPA+copies", shape, t_ref, nbytes, flops)
            row(f"{tag} attention Triton", shape, t_tr, nbytes, flops, t_ref)
            attention_ratios.append(t_tr / t_ref)
            x = torch.randn(1, n, ffn, device=dev, dtype=dtype)
            wt, bias = torch.randn(ffn, 1, 3, 3, device=dev, dtype=dtype), torch.randn(ffn, device=dev, dtype=dtype)
            y = torch.empty_like(x)
            nbytes, flops, shape = 2 * n * ffn * elt, 18 * n * ffn, f"{h}×{w}×{ffn}"
            t_copy = ctx.time(lambda: y.copy_(x))
            t_ref = ctx.time(lambda: ops.dwconv_gelu(x, wt, bias, h, w, backend="torch"))
            t_tr = ctx.time(lambda: ops.dwconv_gelu(x, wt, bias, h, w, backend="triton"))
            row(f"{tag} copy (same bytes)", shape, t_copy, nbytes, 0, t_ref)
            row(f"{tag} dwconv+GELU torch", shape, t_ref, nbytes, flops)
            row(f"{tag} dwconv+GELU Triton", shape, t_tr, nbytes, flops, t_ref)
            if has_cpp["dwconv_gelu"]:
                t_cpp = ctx.time(lambda: ops.dwconv_gelu(x, wt, bias, h, w, backend=cuda_backend))
                row(
                    f"{tag} dwconv+GELU CUDA C++" + (" (dry run: CPU C++)" if ctx.dry else ""),
                    shape,
                    t_cpp,
                    nbytes,
                    flops,
                    t_ref,
                )
                versus["dwconv_gelu"].append(t_cpp / t_tr)
            if stage == 1:
                nbytes, shape = n * c * elt, f"{h}×{w}×{c}"
                t_ref = ctx.time(lambda: ops.linear_sra_pool(q, h, w, backend="torch"))
                t_tr = ctx.time(lambda: ops.linear_sra_pool(q, h, w, backend="triton"))
                row(f"{tag} pool 7×7 torch", shape, t_ref, nbytes, 0)
                row(f"{tag} pool 7×7 Triton", shape, t_tr, nbytes, 0, t_ref)
                if has_cpp["linear_sra_pool"]:
                    t_cpp = ctx.time(lambda: ops.linear_sra_pool(q, h, w, backend=cuda_backend))
                    row(f"{tag} pool 7×7 CUDA C++", shape, t_cpp, nbytes, 0, t_ref)
                    versus["linear_sra_pool"].append(t_cpp / t_tr)
    ctx.out.write(versus_table(versus))
    ctx.out.write(attention_versus_sdpa_table(attention_ratios))


# ---------------------------------------------------------------------------------------------- end to end
def _e2e_candidates(ctx: Ctx, preset: str, size: int, batch: int, dtype: str):
    from bench.candidates import build

    bands = 64 << 20  # the CPU's default budget: what the CUDA default replaced (measured 1.7x slower at b2 1024²)
    specs = [
        ("reference", dict(impl="reference")),
        ("fast (default budgets)", dict(impl="fast")),
        ("fast, 64 MB bands", dict(impl="fast", lean=bands)),
        ("fast, memory-lean off", dict(impl="fast", lean=False)),
        ("reference, 64 MB bands", dict(impl="reference", lean=bands)),
        ("transformers", dict(impl="transformers")),
        ("timm", dict(impl="timm")),
    ]
    out = []
    for name, spec in specs:
        lean = spec.pop("lean", None)
        run, model = build(dict(spec, preset=preset, size=size, batch=batch, dtype=dtype, device=ctx.device))
        if lean is False:
            model.set_memory_lean(False)
        elif lean is not None:
            model.set_memory_lean(True, max_hidden_bytes=lean)
        ctx.count("models")
        out.append((name, run, model))
    return out


def phase_e2e(ctx: Ctx) -> None:
    import torch

    from bench.harness import Candidate, time_interleaved

    preset, size, batch, dtype = ("b0", 32, 1, "fp32") if ctx.dry else ("b2", 1024, 8, "bf16")
    for _stage, h, w, c, heads, m, ffn, linear in _stage_shapes("b2", 1024, 1024):  # the GPU plan's Triton work
        plan_model_stage(ctx, "bf16", h, w, c, heads, m, ffn, linear, pool=False, batch=8)
    peak = "not measured on the CPU dry run" if ctx.dry else "torch.cuda.max_memory_allocated above the resident models"
    ctx.out.write(
        f"\n{preset} backbone at {size}², batch {batch}, {dtype}: median of interleaved runs "
        f"(CUDA-synchronised), peak memory of one forward after warm-up ({peak})."
    )
    cands = _e2e_candidates(ctx, preset, size, batch, dtype)
    repeats, warmup = (1, 1) if ctx.dry else (10, 2)
    timings = time_interleaved(
        [Candidate(n, r) for n, r, _ in cands], repeats=repeats, warmup=warmup, device=ctx.device
    )
    peaks = {}
    for name, run, _ in cands:
        if ctx.device == "cuda":
            from bench.harness import measure_forward_peak

            peaks[name] = measure_forward_peak(run, "cuda") / 2**20
        else:
            peaks[name] = float("nan")
    ref = timings["reference"].median
    hf, tm = timings["transformers"].median, timings["timm"].median
    ctx.out.table(["implementation", "median ms", "× reference", "× transformers", "× timm", "peak MB"])
    for name, _, _ in cands:
        t = timings[name].median
        ctx.out.row([name, t * 1e3, ref / t, hf / t, tm / t, peaks[name]])
    del cands
    if ctx.device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- extras
def phase_extras(ctx: Ctx) -> None:
    """Each item only when enough time is left for it; the pytest subset takes what remains."""
    import subprocess
    import sys

    import torch

    from bench.candidates import build

    ctx.out.table(["item", "result", "seconds"])
    dev = ctx.device

    details: List[str] = []  # lines an item adds below the table (pytest's failures), written as they come

    def item(name: str, need_s: float, fn: Callable[[], str]) -> None:
        if ctx.left() < need_s:
            ctx.out.row([name, f"skipped: {ctx.left():.0f} s left, needs ~{need_s:.0f} s", ""])
            return
        t0 = time.time()
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - reported, the next item runs
            result = f"**ERROR** {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            ctx.count("failed")
        ctx.count("cases")
        ctx.out.row([name, result, time.time() - t0])
        if details:  # a block between tables, so a kill in the next item still leaves it
            ctx.out.write("\n```\n" + "\n".join(details) + "\n```")
            details.clear()
            ctx.out.table(["item", "result", "seconds"])

    def compiled_reference() -> str:
        """Inductor on the GPU; the dry run traces with the eager backend (a cold inductor compile takes minutes
        on 2 CPU cores), so only dynamo's capture of the whole model is rehearsed there."""
        preset, size, batch = ("b0", 64, 1) if ctx.dry else ("b2", 1024, 8)
        dtype = torch.float32 if ctx.dry else torch.bfloat16
        _, model = build(
            dict(impl="reference", preset=preset, size=size, batch=1, device=dev, dtype="fp32" if ctx.dry else "bf16")
        )
        fn = torch.compile(model, backend="eager" if ctx.dry else "inductor")
        x = torch.randn(batch, 3, size, size, device=dev, dtype=dtype)
        t0 = time.time()
        with torch.inference_mode():
            fn(x)
            ctx.sync()
            first = time.time() - t0
            t = ctx.time(lambda: fn(x), repeats=10, warmup=1)
        backend = "eager backend (dry run)" if ctx.dry else "inductor"
        return (
            f"{preset}@{size}² batch {batch} {str(dtype)[6:]}, {backend}: first call {first:.1f} s, then "
            f"{t * 1e3:.1f} ms"
        )

    def memory_4096() -> str:
        from bench.harness import measure_forward_peak

        preset, size = ("b0", 64) if ctx.dry else ("b2", 4096)
        parts = []
        for impl in ("fast", "reference", "timm"):
            run, model = build(
                dict(impl=impl, preset=preset, size=size, batch=1, dtype="fp32" if ctx.dry else "bf16", device=dev)
            )
            with torch.inference_mode():
                run()  # warm-up: autotuning and workspaces stay out of the peak
            peak = measure_forward_peak(run, dev) / 2**20
            parts.append(f"{impl} {peak:.0f} MB")
            del run, model
            if dev == "cuda":
                torch.cuda.empty_cache()
        return f"{preset}@{size}² peak forward memory: " + ", ".join(parts)

    def segformer() -> str:
        """Image → labels end to end (folded head + Triton upsample_argmax) against the unstreamed reference path
        (full-size logits + argmax): time, peak memory and label agreement."""
        from bench.harness import measure_forward_peak
        from pvtv2_fast import PvtV2Config, PvtV2ForSemanticSegmentation
        from pvtv2_fast.segmentation import segment, segment_reference

        preset, (h, w) = ("b0", (64, 96)) if ctx.dry else ("b2", (2048, 2048))
        torch.manual_seed(0)
        model = PvtV2ForSemanticSegmentation(PvtV2Config.from_preset(preset), fast=True).eval().to(dev)
        x = torch.randn(1, 3, h, w, device=dev)
        parts = []
        with torch.inference_mode():
            for name, fn in (
                ("labels", lambda: segment(model, x, output="labels")),
                ("unstreamed", lambda: segment_reference(model, x).argmax(1)),
            ):
                t = ctx.time(fn, repeats=3, warmup=1)
                peak = measure_forward_peak(fn, dev) / 2**20
                parts.append(f"{name} {t * 1e3:.1f} ms, peak {peak:.0f} MB")
            agree = (segment(model, x, output="labels").long() == segment_reference(model, x).argmax(1)).float()
        return f"Segformer-{preset} fp32 {h}×{w} → labels: " + "; ".join(parts) + f"; labels agree {agree.mean():.6f}"

    def pytest_subset(budget: float) -> str:
        """The GPU-touching tests (Triton on CUDA tensors, the CUDA C++ ops, tests marked gpu), in parallel workers
        when pytest-xdist is there; every failure's one-line summary goes below the table."""
        import importlib.util

        if ctx.dry:
            files = ["tests/test_bench_harness.py", "-k", "markdown"]
        else:
            files = ["tests/test_fast_model.py", "tests/ops", "-m", "gpu or not slow", "-k", "triton or cuda or gpu"]
            if importlib.util.find_spec("xdist") is not None:
                files += ["-n", "4"]
        env = {k: v for k, v in os.environ.items() if not (k == "TRITON_INTERPRET" and not ctx.dry)}
        env["COLUMNS"] = "400"  # the failure summaries whole, not cut to 80 columns

        def failures(text: str) -> List[str]:
            return [line[:300] for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))][:60]

        try:
            out = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=no", "-p", "no:cacheprovider", *files],
                capture_output=True,
                text=True,
                timeout=max(10.0, budget),
                env=env,
            )
        except subprocess.TimeoutExpired as e:
            text = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            details.extend(failures(text))
            return f"`pytest {' '.join(files)}` stopped after {budget:.0f} s (time left)"
        details.extend(failures(out.stdout))
        lines = out.stdout.strip().splitlines()
        tail = lines[-1] if lines else out.stderr[-200:]
        if out.returncode != 0:
            ctx.count("failed")
        return f"`pytest {' '.join(files)}` exit {out.returncode}: {tail}"

    item("memory at 4096²", 5 if ctx.dry else 30, memory_4096)
    item("segmentation image → labels", 5 if ctx.dry else 30, segformer)
    ctx.count("processes")
    # the tests before the cold compile, but leaving it its ~90 s when there is room for both
    compile_s = 0 if ctx.dry else 95
    item(
        "pytest subset",
        5 if ctx.dry else 30,
        lambda: pytest_subset(ctx.left() - 5 - (compile_s if ctx.left() > compile_s + 120 else 0)),
    )
    if ctx.dry:  # dynamo's trace of a whole model alone takes ~10 s of 2 CPU cores: not rehearsed
        ctx.out.row(["torch.compile of the reference (cold)", "not rehearsed in the dry run", ""])
    else:
        item("torch.compile of the reference (cold)", 90, compiled_reference)


# ---------------------------------------------------------------------------------------------- child entry
PHASE_FNS = {
    "env": phase_env,
    "parity": phase_parity,
    "parity_cuda": phase_parity_cuda,
    "kernels": phase_kernels,
    "e2e": phase_e2e,
    "extras": phase_extras,
}


def _exit_with_parent() -> None:
    """A phase must not outlive the driver (SIGKILLed at the machine's limit): poll the parent, exit if gone."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def run_child(
    phase: str, worker: str, out: Path, dry: bool, deadline: Optional[float], counts_dir: Optional[Path]
) -> int:
    _exit_with_parent()
    if dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from bench.gpu_quick import PHASES

    file = next(p.file for p in PHASES if p.name == phase)
    ctx = Ctx(phase, worker, dry, deadline or time.time() + 3600, Results(out / file), "cpu" if dry else "cuda")
    t0 = time.time()
    label = f"{phase}{' ' + worker if worker else ''}"
    print(f"[{label}] start", flush=True)
    try:
        if dry:
            import torch

            torch.set_num_threads(1 if phase == "parity" else 2)
        PHASE_FNS[phase](ctx)
        code = 0
    finally:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        ctx.counts["cpu_s"] = round(usage.ru_utime + usage.ru_stime)  # with this machine's load, wall time misleads
        ctx.counts["compiles"] = len(ctx.plan_compiles)
        ctx.counts["sweeps"] = len(ctx.plan_sweeps)
        measured = measured_compiles() if not dry else None
        if measured is not None:
            ctx.counts["compiled"] = measured
        if counts_dir is not None:
            (counts_dir / f"{phase}-{worker or 'main'}.json").write_text(json.dumps(ctx.counts))
        print(f"[{label}] done in {time.time() - t0:.1f} s: {ctx.counts}", flush=True)
    return code
