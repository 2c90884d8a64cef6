"""Ahead-of-time compilation of every kernel for real GPU targets, without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` runs the whole pipeline down to PTX and a
cubin (the wheel's ptxas), catching what the interpreter forgives: ``tl.dot`` shape rules for fp16/bf16
(K >= 16), shared-memory overruns, type errors. It also reports each kernel's shared memory, registers and spills.

    python -m pvtv2_fast.kernels.aot [--arch 80 90] [--full] [--out report.md]

Must run without ``TRITON_INTERPRET=1`` (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import itertools
from typing import Dict, Iterator, List, Tuple

_PTR = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


def _attention_variants(full: bool) -> Iterator[Tuple[str, object, Dict[str, str], Dict[str, object], int, int]]:
    from .sra_attention import (
        AUTOTUNE_CONFIGS,
        AUTOTUNE_CONFIGS_FP32,
        ONE_BLOCK_WARPS,
        one_block_max_keys,
        one_block_tile,
        sra_attention_kernel,
    )

    def largest(configs):
        return max(configs, key=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_M"] * c.num_stages)

    scalars = ["N", "M", "H", "D"] + [f"stride_{t}{a}" for t in "qkvo" for a in ("b", "n" if t in "qo" else "m", "c")]
    for dtype, block_d in itertools.product(("fp32", "fp16", "bf16"), (32, 64, 128) if full else (64, 128)):
        sig = {"Q": _PTR[dtype], "K": _PTR[dtype], "V": _PTR[dtype], "O": _PTR[dtype], "sm_scale": "fp32"}
        sig.update({s: "i32" for s in scalars})
        configs = AUTOTUNE_CONFIGS_FP32 if dtype == "fp32" else AUTOTUNE_CONFIGS
        # the one-block tiles the launcher picks (one_block_tile) for Linear SRA's 49 keys and for the most keys
        # the path takes; then the streaming path at each autotune config (or the largest)
        variants = []
        for block_n, block_m in dict.fromkeys(
            one_block_tile(dtype == "fp32", block_d, keys) for keys in (49, one_block_max_keys(dtype == "fp32"))
        ):
            variants.append(
                dict(BLOCK_N=block_n, BLOCK_M=block_m, ONE_BLOCK=True, num_warps=ONE_BLOCK_WARPS, num_stages=3)
            )
        variants += [
            dict(**c.kwargs, ONE_BLOCK=False, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in (configs if full else [largest(configs)])
        ]
        for v in variants:
            consts = dict(
                BLOCK_N=v["BLOCK_N"],
                BLOCK_M=v["BLOCK_M"],
                BLOCK_D=block_d,
                ONE_BLOCK=v["ONE_BLOCK"],
                DOT_FP32=False,
                INPUT_PRECISION="tf32x3" if dtype == "fp32" else "ieee",
            )
            name = (
                f"sra_attention {dtype} D={block_d} {'one-block' if v['ONE_BLOCK'] else 'stream'} "
                f"N{v['BLOCK_N']}×M{v['BLOCK_M']} w{v['num_warps']}s{v['num_stages']}"
            )
            yield name, sra_attention_kernel, sig, consts, v["num_warps"], v["num_stages"]


def _pool_variants():
    from .linear_sra_pool import MAX_BLOCK_BIN, MAX_BLOCK_C, NUM_WARPS, linear_sra_pool_kernel

    scalars = ["H", "W", "C"] + [f"stride_{t}{a}" for t in "xy" for a in ("b", "n", "c")]
    for dtype in ("fp32", "fp16", "bf16"):
        sig = {"X": _PTR[dtype], "Y": _PTR[dtype], **{s: "i32" for s in scalars}}
        consts = dict(P=7, BLOCK_BIN=MAX_BLOCK_BIN, BLOCK_C=MAX_BLOCK_C)
        yield (
            f"linear_sra_pool {dtype} BIN{MAX_BLOCK_BIN}×C{MAX_BLOCK_C}",
            linear_sra_pool_kernel,
            sig,
            consts,
            NUM_WARPS,
            3,
        )


def _dwconv_variants():
    from .dwconv_gelu import BLOCK_P, MAX_BLOCK_C, NUM_WARPS, dwconv_gelu_kernel

    scalars = ["H", "W", "C"] + [f"stride_{t}{a}" for t in "xy" for a in ("b", "n", "c")]
    for dtype, relu in itertools.product(("fp32", "fp16", "bf16"), (False, True)):
        sig = {
            "X": _PTR[dtype],
            "Wt": _PTR[dtype],
            "Bias": _PTR[dtype],
            "Y": _PTR[dtype],
            **{s: "i32" for s in scalars},
        }
        consts = dict(HAS_BIAS=True, RELU_INPUT=relu, BLOCK_P=BLOCK_P, BLOCK_C=MAX_BLOCK_C)
        yield (
            f"dwconv_gelu {dtype} relu={relu} P{BLOCK_P}×C{MAX_BLOCK_C}",
            dwconv_gelu_kernel,
            sig,
            consts,
            NUM_WARPS,
            3,
        )


# The resampling kernels' tap arguments (streaming.LinearAxis.taps(): int64 indices, fp32 weights).
_TAPS_SIG = {"RowIndex": "*i64", "RowWeight": "*fp32", "ColIndex": "*i64", "ColWeight": "*fp32"}


def _upsample_argmax_variants():
    from .upsample_argmax import BLOCK_W, MAX_BLOCK_L, NUM_WARPS, upsample_argmax_kernel

    scalars = ["R", "W_out", "L"] + [f"stride_x{a}" for a in "brwl"] + [f"stride_y{a}" for a in "brw"]
    for dtype in ("fp32", "fp16", "bf16"):
        sig = {
            "X": _PTR[dtype],
            **_TAPS_SIG,
            "Y": "*u8",
            **{s: "i32" for s in scalars},
        }
        consts = dict(BLOCK_W=BLOCK_W, BLOCK_L=MAX_BLOCK_L)
        yield (
            f"upsample_argmax {dtype} W{BLOCK_W}×L{MAX_BLOCK_L}",
            upsample_argmax_kernel,
            sig,
            consts,
            NUM_WARPS,
            3,
        )


def _upsample_accumulate_variants():
    from .upsample_accumulate import BLOCK_W, MAX_BLOCK_C, NUM_WARPS, upsample_accumulate_kernel

    scalars = ["R", "W_out", "C"] + [f"stride_x{a}" for a in "brwc"] + [f"stride_a{a}" for a in "brwc"]
    for dtype, first in itertools.product(("fp32", "fp16", "bf16"), (True, False)):
        sig = {
            "X": _PTR[dtype],
            **_TAPS_SIG,
            "Acc": "*fp32",
            **{s: "i32" for s in scalars},
        }
        consts = dict(FIRST=first, BLOCK_W=BLOCK_W, BLOCK_C=MAX_BLOCK_C)
        yield (
            f"upsample_accumulate {dtype} first={first} W{BLOCK_W}×C{MAX_BLOCK_C}",
            upsample_accumulate_kernel,
            sig,
            consts,
            NUM_WARPS,
            3,
        )


def compile_all(archs=(80, 90), full: bool = False) -> List[dict]:
    """Compile kernel variants for each arch (all autotune configs with ``full``, else a representative set:
    every dtype, both attention paths, the largest tile); returns one record per (variant, arch)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import INTERPRETED

    if INTERPRETED:
        raise RuntimeError("kernels were imported under TRITON_INTERPRET=1; run AOT compilation without it")
    records = []
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for name, fn, sig, consts, warps, stages in itertools.chain(
            _attention_variants(full),
            _pool_variants(),
            _dwconv_variants(),
            _upsample_argmax_variants(),
            _upsample_accumulate_variants(),
        ):
            full_sig = dict(sig)
            full_sig.update({k: "constexpr" for k in consts})
            src = ASTSource(fn=fn, signature=full_sig, constexprs=consts)
            record = dict(kernel=name, arch=f"sm_{arch}")
            try:
                compiled = triton.compile(src, target=target, options=dict(num_warps=warps, num_stages=stages))
                meta = compiled.metadata
                record.update(
                    ok=True,
                    shared=meta.shared,
                    ptx_bytes=len(compiled.asm.get("ptx", "")),
                    cubin_bytes=len(compiled.asm.get("cubin", b"")),
                    n_regs=getattr(compiled, "n_regs", None),
                    n_spills=getattr(compiled, "n_spills", None),
                )
                _fill_registers(record, compiled)
            except Exception as e:  # noqa: BLE001 - reported per variant
                record.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
            records.append(record)
    return records


def _fill_registers(record: dict, compiled) -> None:
    """Registers and spills from the cubin's ELF notes when the driver-less compile did not fill them in."""
    if record.get("n_regs"):
        return
    import re
    import subprocess
    import tempfile

    cubin = compiled.asm.get("cubin")
    if not cubin:
        return
    import os

    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        for tool in (bundled, "cuobjdump", "/usr/local/cuda/bin/cuobjdump"):
            try:
                out = subprocess.run(
                    [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=60
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            m = re.search(r"REG:(\d+)", out)
            if m is None:
                continue
            record["n_regs"] = int(m.group(1))
            s = re.search(r"STACK:(\d+)", out)
            record["n_spills"] = int(s.group(1)) if s else None  # stack bytes: > 0 means spills/local memory
            return


def markdown(records: List[dict]) -> str:
    lines = [
        "| kernel variant | arch | compiled | shared mem (B) | registers/thread | spills |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["ok"]:
            lines.append(
                f"| {r['kernel']} | {r['arch']} | yes | {r['shared']} | {r.get('n_regs') or '—'} | "
                f"{r.get('n_spills') if r.get('n_spills') is not None else '—'} |"
            )
        else:
            lines.append(f"| {r['kernel']} | {r['arch']} | **no**: {r['error']} | — | — | — |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90])
    parser.add_argument("--out", default=None)
    parser.add_argument("--full", action="store_true", help="every autotune config and head dim (slow: ~6 min/arch)")
    args = parser.parse_args(argv)
    records = compile_all(args.arch, args.full)
    text = markdown(records)
    print(text)
    if args.out:
        import triton

        with open(args.out, "w") as f:
            f.write(
                f"# Triton kernels compiled ahead of time (no GPU needed)\n\n"
                f"Triton {triton.__version__}. `python -m pvtv2_fast.kernels.aot --arch "
                f"{' '.join(map(str, args.arch))} --out <file>{' --full' if args.full else ''}`; shared memory as "
                f"Triton reports it, registers and spills (stack bytes) from the cubin (ptxas). The interpreter "
                f"cannot catch what this does.\n\n" + text + "\n"
            )
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
