"""Per-kernel GPU benchmark: fused Triton (and the extension's CUDA C++ kernels) vs the PyTorch reference
composition (SDPA including the layout copies it needs; conv2d on NCHW including the token↔NCHW transposes) over
the stage shapes of b0 and b2 at 512², 1024², 2048². Reports median time (CUDA events), achieved GB/s and
TFLOP/s, and the fraction of the device's *measured* copy bandwidth / matmul rate (the floor: max(bytes /
bandwidth, flops / rate)).

    python -m bench.kernels [--presets b0 b2] [--sizes 512 1024 2048] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from bench.candidates import DTYPES
from bench.harness import RESULTS, cuda_time, markdown_table
from pvtv2_fast import PvtV2Config, _ext, ops, stage_sizes


def device_ceilings(dtype: torch.dtype) -> dict:
    """Measured copy bandwidth (bytes read + written per second) and matmul rate in ``dtype``."""
    src = torch.empty(2**28, dtype=torch.uint8, device="cuda").random_()  # 256 MiB, well past L2
    dst = torch.empty_like(src)
    t = cuda_time(lambda: dst.copy_(src), repeats=30, warmup=5)
    bandwidth = 2 * src.numel() / t
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    t = cuda_time(lambda: a @ b, repeats=10, warmup=3)
    return {"bandwidth": bandwidth, "flops": 2 * 8192**3 / t}


def _row(name, shape, t, nbytes, flops, ceil, ref_t=None):
    floor = max(nbytes / ceil["bandwidth"], flops / ceil["flops"])
    return [
        name,
        shape,
        t * 1e6,
        nbytes / t / 1e9,
        flops / t / 1e12,
        100 * floor / t,
        (ref_t / t) if ref_t else float("nan"),
    ]


def versus_table(versus) -> str:
    """Per op, the geometric mean of CUDA C++ time / Triton time over the shapes: the data behind CUDA_ORDER."""
    rows = []
    for op, ratios in versus.items():
        if not ratios:
            rows.append([op, 0, float("nan"), "no CUDA C++ kernel in this build"])
            continue
        geomean = statistics.geometric_mean(ratios)
        order = ("triton", "cuda") if geomean >= 1 else ("cuda", "triton")
        rows.append([op, len(ratios), geomean, f"CUDA_ORDER[{op!r}] = {order}"])
    return (
        '\n## Triton vs CUDA C++ (decides the per-op order of `backend="auto"` on CUDA, `CUDA_ORDER`)\n\n'
        + markdown_table(["op", "shapes", "geomean time CUDA C++ / Triton", "faster first"], rows)
        + "\n"
    )


def attention_versus_sdpa_table(ratios) -> str:
    """The geometric mean of Triton attention time / SDPA (the reference's PyTorch path, its layout copies included)
    over the shapes: the data behind CUDA_ORDER['sra_attention'] (SDPA alone when Triton is slower)."""
    if not ratios:
        return ""
    geomean = statistics.geometric_mean(ratios)
    order = ("triton", "torch") if geomean < 1 else ("torch",)
    rows = [["sra_attention", len(ratios), geomean, f"CUDA_ORDER['sra_attention'] = {order}"]]
    return (
        "\n## Triton vs PyTorch's SDPA (attention on CUDA, `CUDA_ORDER`)\n\n"
        + markdown_table(["op", "shapes", "geomean time Triton / SDPA", "order"], rows)
        + "\n"
    )


def run(presets, sizes, dtype_name: str, out: Path) -> str:
    dtype = DTYPES[dtype_name]
    ceil = device_ceilings(dtype)
    elt = torch.finfo(dtype).bits // 8
    rows = []
    # the extension's CUDA C++ kernels, timed beside Triton's to decide ops.registry.CUDA_ORDER
    cuda_cpp = {
        op: _ext.has_kernel(native, "cuda")
        for op, native in (("dwconv_gelu", "dwconv_gelu"), ("linear_sra_pool", "linear_sra_pool"))
    }
    versus = {op: [] for op in cuda_cpp}
    for preset in presets:
        cfg = PvtV2Config.from_preset(preset)
        for size in sizes:
            for i, (h, w) in enumerate(stage_sizes(cfg, size, size)):
                c, heads, sr = cfg.hidden_sizes[i], cfg.num_attention_heads[i], cfg.sr_ratios[i]
                n = h * w
                m = (h // sr) * (w // sr) if sr > 1 else n
                d = c // heads
                tag = f"{preset}@{size} s{i + 1}"
                q = torch.randn(1, n, c, device="cuda", dtype=dtype)
                kv = torch.randn(1, m, 2 * c, device="cuda", dtype=dtype)
                k, v = kv[..., :c], kv[..., c:]
                nbytes = (2 * n * c + 2 * m * c) * elt
                flops = 4 * n * m * c
                t_ref = cuda_time(lambda: ops.sra_attention(q, k, v, heads, backend="torch"))
                t_fused = cuda_time(lambda: ops.sra_attention(q, k, v, heads, backend="triton"))
                shape = f"N={n} M={m} C={c} D={d}"
                rows.append(_row(f"{tag} attention SDPA+copies", shape, t_ref, nbytes, flops, ceil))
                rows.append(_row(f"{tag} attention fused", shape, t_fused, nbytes, flops, ceil, t_ref))
                ffn = int(c * cfg.mlp_ratios[i])
                x = torch.randn(1, n, ffn, device="cuda", dtype=dtype)
                wt = torch.randn(ffn, 1, 3, 3, device="cuda", dtype=dtype)
                bias = torch.randn(ffn, device="cuda", dtype=dtype)
                nbytes = 2 * n * ffn * elt
                flops = 2 * 9 * n * ffn
                t_ref = cuda_time(lambda: ops.dwconv_gelu(x, wt, bias, h, w, backend="torch"))
                t_fused = cuda_time(lambda: ops.dwconv_gelu(x, wt, bias, h, w, backend="triton"))
                shape = f"{h}×{w}×{ffn}"
                rows.append(_row(f"{tag} dwconv+GELU torch", shape, t_ref, nbytes, flops, ceil))
                rows.append(_row(f"{tag} dwconv+GELU fused", shape, t_fused, nbytes, flops, ceil, t_ref))
                if cuda_cpp["dwconv_gelu"]:
                    t_cpp = cuda_time(lambda: ops.dwconv_gelu(x, wt, bias, h, w, backend="cuda"))
                    rows.append(_row(f"{tag} dwconv+GELU CUDA C++", shape, t_cpp, nbytes, flops, ceil, t_ref))
                    versus["dwconv_gelu"].append(t_cpp / t_fused)
                if i == 0:
                    nbytes = n * c * elt
                    t_ref = cuda_time(lambda: ops.linear_sra_pool(q, h, w, backend="torch"))
                    t_fused = cuda_time(lambda: ops.linear_sra_pool(q, h, w, backend="triton"))
                    rows.append(_row(f"{tag} pool 7×7 torch", f"{h}×{w}×{c}", t_ref, nbytes, 0, ceil))
                    rows.append(_row(f"{tag} pool 7×7 fused", f"{h}×{w}×{c}", t_fused, nbytes, 0, ceil, t_ref))
                    if cuda_cpp["linear_sra_pool"]:
                        t_cpp = cuda_time(lambda: ops.linear_sra_pool(q, h, w, backend="cuda"))
                        rows.append(_row(f"{tag} pool 7×7 CUDA C++", f"{h}×{w}×{c}", t_cpp, nbytes, 0, ceil, t_ref))
                        versus["linear_sra_pool"].append(t_cpp / t_fused)
    headers = [
        "kernel",
        "shape",
        "median µs",
        "GB/s",
        "TFLOP/s",
        "% of floor (bytes/BW, flops/rate)",
        "speed-up vs torch",
    ]
    text = (
        f"# Kernel benchmark ({torch.cuda.get_device_name()}, {dtype_name}, batch 1)\n\n"
        f"Measured ceilings: copy {ceil['bandwidth'] / 1e12:.2f} TB/s (read + write), matmul "
        f"{ceil['flops'] / 1e12:.0f} TFLOP/s. Bytes counted: each input read once, each output written once.\n\n"
        + markdown_table(headers, rows)
        + "\n"
        + versus_table(versus)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["b0", "b2"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024, 2048])
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_kernels.md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.kernels needs a CUDA GPU")
    print(run(args.presets, args.sizes, args.dtype, args.out))


if __name__ == "__main__":
    main()
