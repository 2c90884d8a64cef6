"""The C++ CPU ``conv_ffn`` kernel's two schedules side by side, to check (or re-derive) the rule it picks by.

``bands``: bands of rows streamed through per-thread cache buffers, single-threaded GEMMs per band (weights re-read
per band). ``whole``: one GEMM over all tokens on the BLAS's threads, the hidden state kept in reused scratch.
``PVTV2_FAST_FFN_WHOLE_KB`` (read per call) forces each; ``auto`` leaves the kernel's rule to pick.
Shapes: b0/b2 stages at 224² to 1024², batch 1, 2 and 8; timed interleaved (bench.harness), medians.

    python -m bench.ffn_schedule [--dtype fp32|bf16] [--repeats 15] [--out bench/results/cpu_conv_ffn_schedule]

``--module``: one level up, the FFN module's two CPU inference schedules (``modules/ffn.py``) on the same shapes,
residual included as the block passes it: ``conv_ffn`` (the C++ kernel, its own rule inside, then the residual
added in place) against ``onednn`` (oneDNN fc1 on prepacked weights → ``dwconv_gelu`` → oneDNN fc2 with bias and
residual in its epilogue), and ``rule``, the module's pick (written to ``cpu_ffn_onednn[_bf16].md``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from tqdm import tqdm

from bench.candidates import DTYPES
from bench.harness import RESULTS, Candidate, machine_line, markdown_table, time_interleaved, write_markdown
from bench.report import cpu_line
from pvtv2_fast import ops

# (batch, map side, channels, hidden): b2's stages at 224² (56², 28², 14², 7²), b0's and b2's at 512²-1024²,
# batch 2 and 8 rows of the batched benchmarks.
SHAPES = [
    (1, 56, 64, 512), (1, 28, 128, 1024), (1, 14, 320, 1280), (1, 7, 512, 2048),
    (8, 7, 512, 2048), (8, 14, 320, 1280), (8, 28, 128, 1024), (8, 56, 64, 512),
    (1, 8, 256, 1024), (1, 16, 256, 1024), (1, 16, 512, 2048), (1, 32, 160, 640),
    (1, 32, 256, 1024), (2, 32, 256, 1024), (1, 32, 512, 2048), (1, 56, 128, 1024),
    (1, 64, 64, 512), (1, 64, 160, 640), (1, 64, 320, 1280), (1, 128, 64, 512), (1, 128, 128, 1024),
]  # fmt: skip
FORCE = {"bands": "0", "whole": str(1 << 30), "auto": None}  # auto: the kernel's own rule
MB = 1 << 20
SHAPE_HEADERS = ["batch", "map", "C", "hidden", "hidden MB", "weights MB"]


def _forced(schedule: str, fn):
    def run():
        if FORCE[schedule] is not None:
            os.environ["PVTV2_FAST_FFN_WHOLE_KB"] = FORCE[schedule]
        try:
            return fn()
        finally:
            os.environ.pop("PVTV2_FAST_FFN_WHOLE_KB", None)

    return run


def _shape_args(dtype: torch.dtype, desc: str):
    """Per SHAPES row (with progress): ``(b, side, c, hid, conv_ffn's positional args)``, seeded random weights."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype)

    for b, side, c, hid in tqdm(SHAPES, desc=desc, unit="shape"):
        yield b, side, c, hid, (r(b, side * side, c), r(hid, c, scale=c**-0.5), r(hid), r(hid, 1, 3, 3, scale=0.3),
                                r(hid), r(c, hid, scale=hid**-0.5), r(c), side, side)  # fmt: skip


def run(dtype_name: str, repeats: int, out: Path) -> str:
    dtype = DTYPES[dtype_name]
    rows = []
    for b, side, c, hid, args in _shape_args(dtype, "conv_ffn shapes"):
        call = lambda: ops.conv_ffn(*args, backend="cpu")  # noqa: E731
        t = time_interleaved([Candidate(s, _forced(s, call)) for s in FORCE], repeats=repeats, warmup=2)
        hidden_bytes, weight_bytes = b * side * side * hid * 4, 2 * c * hid * 4
        bands, whole, auto = (t[s].median * 1e3 for s in FORCE)
        row = [b, f"{side}²", c, hid, hidden_bytes / MB, weight_bytes / MB, bands, whole, bands / whole, auto]
        rows.append(row + [auto / min(bands, whole)])
    text = (
        f"# conv_ffn on CPU: bands vs whole-map GEMMs ({dtype_name}, 3 candidates interleaved, median of {repeats})\n\n"
        f"Machine: {machine_line()}.\n{cpu_line()}.\n"
        f"Reproduce: `python -m bench.ffn_schedule --dtype {dtype_name}`\n\n"
        "Hidden MB: the fp32 hidden state B·H·W·hidden; weights MB: fc1 + fc2 in fp32. Bands / whole > 1: whole-map "
        "is faster. Auto: the kernel's own pick (whole-map up to 4 MB of hidden state, or up to 16 MB when the "
        "weights reach 1 MB); auto / best near 1 means it picked the faster one.\n\n"
        + markdown_table(
            SHAPE_HEADERS
            + [
                "bands ms",
                "whole ms",
                "bands / whole",
                "auto ms",
                "auto / best",
            ],
            rows,
        )
        + "\n"
    )
    return write_markdown(out, text)


def _ffn_module(args, dtype, schedule: str):
    """A fast-mode ConvFeedForward holding ``args``' weights, its schedule forced (``conv_ffn`` / ``onednn``) or left
    to its rule; returns ``(thunk, module)``, the thunk adding a residual as the block does."""
    from pvtv2_fast.modules.ffn import ConvFeedForward

    x, w1, b1, dw, db, w2, b2, side, _ = args
    m = ConvFeedForward(w1.shape[1], w1.shape[0]).eval().to(dtype)
    conv = m.dwconv.dwconv
    params = (m.dense1.weight, m.dense1.bias, conv.weight, conv.bias, m.dense2.weight, m.dense2.bias)
    with torch.no_grad():
        for p, v in zip(params, (w1, b1, dw, db, w2, b2)):
            p.copy_(v)
    m.backend = "auto"
    if schedule != "rule":
        m._onednn_schedule = lambda t: schedule == "onednn"
    residual = torch.randn_like(x)
    return (lambda: m(x, side, side, residual=residual)), m


def run_module(dtype_name: str, repeats: int, out: Path) -> str:
    dtype = DTYPES[dtype_name]
    rows = []
    for b, side, c, hid, args in _shape_args(dtype, "FFN module shapes"):
        built = {s: _ffn_module(args, dtype, s) for s in ("conv_ffn", "onednn", "rule")}
        t = time_interleaved([Candidate(s, fn) for s, (fn, _) in built.items()], repeats=repeats, warmup=2)
        with torch.no_grad():
            picks = built["rule"][1]._onednn_schedule(args[0])
        hidden_mb = b * side * side * hid * args[0].element_size() / MB
        weights_mb = 2 * c * hid * args[0].element_size() / MB
        conv, one, rule = (t[s].median * 1e3 for s in ("conv_ffn", "onednn", "rule"))
        rows.append([b, f"{side}²", c, hid, hidden_mb, weights_mb, conv, one, conv / one,
                     "onednn" if picks else "conv_ffn", rule / min(conv, one)])  # fmt: skip
    text = (
        f"# The FFN module on CPU: conv_ffn vs oneDNN GEMMs around dwconv_gelu ({dtype_name}, interleaved, median of "
        f"{repeats})\n\n"
        f"Machine: {machine_line()}.\n{cpu_line()}.\n"
        f"Reproduce: `python -m bench.ffn_schedule --module --dtype {dtype_name}`\n\n"
        f"Hidden MB / weights MB in {dtype_name}. Each candidate adds a residual as the block does (conv_ffn: in place "
        "afterwards; onednn: in fc2's epilogue). conv_ffn / onednn > 1: the oneDNN schedule is faster. Rule: what "
        "the module picks (modules/ffn.py); rule / best near 1 means it picked the faster one.\n\n"
        + markdown_table(
            SHAPE_HEADERS
            + [
                "conv_ffn ms",
                "onednn ms",
                "conv_ffn / onednn",
                "rule picks",
                "rule / best",
            ],  # fmt: skip
            rows,
        )
        + "\n"
    )
    return write_markdown(out, text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--module", action="store_true", help="the FFN module's conv_ffn vs oneDNN schedules")
    a = p.parse_args(argv)
    suffix = "" if a.dtype == "fp32" else f"_{a.dtype}"
    if a.module:
        print(run_module(a.dtype, a.repeats, a.out or RESULTS / f"cpu_ffn_onednn{suffix}"))
    else:
        print(run(a.dtype, a.repeats, a.out or RESULTS / f"cpu_conv_ffn_schedule{suffix}"))


if __name__ == "__main__":
    main()
