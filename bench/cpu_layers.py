"""The C++ block (``ops.pvt_block``), attention layer (``ops.sra_layer``) and the FFN's packed-weight GEMMs against
what fp32 fast mode ran before them, on CPU: per module on the first block of every stage, and end to end.

* ``block``: the block as one ``ops.pvt_block`` call against its modules (with the two below on).
* ``attention``: the SRA module as one ``ops.sra_layer`` call (``fused``) against its per-op path (``per-op``: oneDNN
  / MKL projections, ``sr_conv`` or oneDNN's conv, LayerNorm, the C++ attention kernel, each a Python-level call),
  with the residual the block passes. GFLOP/s counts the layer's projections, reduction and attention.
* ``ffn``: ``conv_ffn`` with fc1 / fc2 packed for the packed-weight GEMM (``packed``) against MKL's sgemm on the plain
  weights (``mkl``); the kernel's rules pick the schedule and where whole-map GEMMs take the packed weights.
* ``model``: ``fast=True`` forwards with all three on against all off.

Candidates are timed interleaved in one process (``bench.harness``), inputs captured from a forward of the model,
module calls inside the CPU block cache as the model's forward runs them. fp32, batch 1.

    python -m bench.cpu_layers [--configs b0:224 b2:224 b0:512 b2:512] [--repeats 15] [--out bench/results/cpu_layers]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Dict, List
from unittest import mock

import torch
from tqdm import tqdm

from bench.candidates import reference_model
from bench.harness import RESULTS, Candidate, machine_line, markdown_table, time_interleaved, write_markdown
from bench.report import cpu_line
from pvtv2_fast.modules import ConvFeedForward, PvtV2Block, SpatialReductionAttention
from pvtv2_fast.modules.ffn import CONV_FFN_PACKED_MAX_TOKENS
from pvtv2_fast.ops.block_cache import cpu_block_cache


def _unless(on: bool, cls: type, method: str, replacement):
    """Nothing when ``on``; else ``cls.method`` patched to ``replacement`` for the block."""
    return contextlib.nullcontext() if on else mock.patch.object(cls, method, replacement)


def layer(fused: bool):
    """Fast mode's attention with (``True``) or without the C++ layer (and so without the C++ block)."""
    return _unless(fused, SpatialReductionAttention, "layer_runs", lambda self, *args, **kwargs: False)


def block(fused: bool):
    """Fast mode's blocks as one ``ops.pvt_block`` (``True``) or module by module (its attention and FFN as before)."""
    return _unless(fused, PvtV2Block, "_fused_block", lambda self, x, height, width: None)


def packed_ffn(packed: bool):
    """conv_ffn's GEMMs on the packed weights (``True``) or on MKL's sgemm (the module passes none)."""
    return _unless(packed, ConvFeedForward, "_packed_weights", lambda self, x: (None, None))


def _call(module, args, kwargs, ctx):
    def run():
        with ctx(), cpu_block_cache():
            return module(*args, **kwargs)

    return run


def _inputs(model, size: int) -> Dict[str, tuple]:
    """The (module, args, kwargs) of block 0's attention and FFN in every stage, from one forward."""
    found: Dict[str, tuple] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith(("blocks.0", "blocks.0.attention", "blocks.0.mlp")):

            def hook(m, args, kwargs, name=name):
                found.setdefault(name, (m, args, kwargs))

            hooks.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.inference_mode(), block(False):  # module by module, so the attention and FFN hooks see their inputs
        model(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    return found


def ffn_schedule(m: ConvFeedForward, x: torch.Tensor) -> str:
    """Which code the FFN runs on this input: oneDNN's linears (the module's rule; no conv_ffn), or conv_ffn's bands
    or whole-map GEMMs by the kernel's rules (csrc/cpu/conv_ffn.cpp: whole up to 4 MB of hidden state, or 16 MB under
    >= 1 MB of weights; whole-map GEMMs take the packed weights under <= 1 MB of weights or over <= 196 tokens, else
    stay on MKL)."""
    with torch.inference_mode():
        if m._onednn_schedule(x):
            return "oneDNN linears"
    mb = 1 << 20
    hidden = x.shape[0] * x.shape[1] * m.dense1.out_features * 4
    weights = (m.dense1.in_features + m.dense2.out_features) * m.dense1.out_features * 4
    if hidden <= 4 * mb or (weights >= mb and hidden <= 16 * mb):
        packed = weights <= mb or x.shape[0] * x.shape[1] <= CONV_FFN_PACKED_MAX_TOKENS
        return "whole-map" if packed else "whole-map, MKL either way"
    return "bands"


def layer_flops(m: SpatialReductionAttention, n: int, height: int, width: int) -> float:
    """Multiply-adds × 2 of the layer: q and proj (N·C·C each), the reduction (M·C·s²·C), kv (M·2C·C), attention
    (2·N·M·C)."""
    c, s = m.hidden_size, m.spatial_reduction_ratio
    keys = (height // s) * (width // s) if s > 1 else n
    reduction = keys * c * s * s * c if s > 1 else 0
    return 2.0 * (2 * n * c * c + reduction + keys * 2 * c * c + 2 * n * keys * c)


def run(configs: List[str], repeats: int, out: Path) -> str:
    rows_block, rows_attn, rows_ffn, rows_model = [], [], [], []
    with tqdm(total=len(configs), desc="configs", file=sys.stderr) as bar:
        for cfg in configs:
            preset, size = cfg.split(":")
            size = int(size)
            model = reference_model(preset).set_fast(True).eval()
            found = _inputs(model, size)
            for name, (mod, args, kwargs) in sorted(found.items()):
                stage = int(name.split(".")[2]) + 1  # layers.i: stage i + 1
                x, height, width = args[0], args[1], args[2]
                if isinstance(mod, PvtV2Block):
                    if mod.attention.linear_attention:
                        continue
                    cands = [
                        Candidate("modules", _call(mod, args, kwargs, lambda: block(False))),
                        Candidate("block", _call(mod, args, kwargs, lambda: block(True))),
                    ]
                    t = time_interleaved(cands, repeats=repeats, warmup=2)
                    a, b = t["modules"].median, t["block"].median
                    rows_block.append([f"{preset} @{size}²", stage, f"{height}×{width}, C {x.shape[2]}", a * 1e3,
                                       b * 1e3, a / b])  # fmt: skip
                elif isinstance(mod, SpatialReductionAttention):
                    cands = [
                        Candidate("per-op", _call(mod, args, kwargs, lambda: layer(False))),
                        Candidate("fused", _call(mod, args, kwargs, lambda: layer(True))),
                    ]
                    t = time_interleaved(cands, repeats=repeats, warmup=2)
                    a, b = t["per-op"].median, t["fused"].median
                    flops = layer_flops(mod, x.shape[1], height, width)
                    rows_attn.append(
                        [
                            f"{preset} @{size}²",
                            stage,
                            f"{height}×{width}, C {x.shape[2]}, sr {mod.spatial_reduction_ratio}",
                            a * 1e3,
                            b * 1e3,
                            a / b,
                            flops / b / 1e9,
                        ]  # fmt: skip
                    )
                else:
                    cands = [
                        Candidate("mkl", _call(mod, args, kwargs, lambda: packed_ffn(False))),
                        Candidate("packed", _call(mod, args, kwargs, lambda: packed_ffn(True))),
                    ]
                    t = time_interleaved(cands, repeats=repeats, warmup=2)
                    a, b = t["mkl"].median, t["packed"].median
                    hidden = mod.dense1.out_features
                    rows_ffn.append(
                        [
                            f"{preset} @{size}²",
                            stage,
                            f"{height}×{width}: {x.shape[2]} → {hidden}",
                            ffn_schedule(mod, x),
                            a * 1e3,
                            b * 1e3,
                            a / b,
                        ]  # fmt: skip
                    )
            pixels = torch.randn(1, 3, size, size)

            def forward(on: bool):
                def f():
                    with block(on), layer(on), packed_ffn(on):
                        return model(pixels)

                return f

            t = time_interleaved([Candidate("before", forward(False)), Candidate("after", forward(True))], repeats)
            a, b = t["before"].median, t["after"].median
            rows_model.append([f"{preset} @{size}²", a * 1e3, b * 1e3, a / b])
            bar.update(1)
    text = "\n\n".join(
        [
            "# The C++ block, attention layer and the FFN's packed-weight GEMMs (CPU, fp32, batch 1)",
            f"{cpu_line()}; {machine_line()}. Medians of {repeats} interleaved repeats; `python -m bench.cpu_layers`.",
            "## Block: one `ops.pvt_block` call against the block's modules (block 0 of each stage; the modules with "
            "the C++ attention layer and the packed FFN weights)",
            markdown_table(["model", "stage", "map", "modules ms", "block ms", "speed-up"], rows_block),
            "## Attention: one `ops.sra_layer` call against the per-op path (block 0 of each stage, with its residual)",
            markdown_table(["model", "stage", "map", "per-op ms", "fused ms", "speed-up", "fused GFLOP/s"], rows_attn),
            "## FFN: `conv_ffn` on packed weights against MKL's sgemm (block 0 of each stage, the kernel's schedule)",
            "The rows marked `MKL either way` or `oneDNN linears` time the same code twice: their spread is this "
            "machine's noise.",
            markdown_table(
                ["model", "stage", "map: C → hidden", "schedule", "mkl ms", "packed ms", "speed-up"], rows_ffn
            ),
            "## End to end: `fast=True` with the block, the layer and the packed FFN weights against none of them",
            markdown_table(["model", "before ms", "after ms", "speed-up"], rows_model),
        ]
    )
    return write_markdown(out, text + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["b0:224", "b2:224", "b0:512", "b2:512"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", type=Path, default=RESULTS / "cpu_layers")
    a = p.parse_args()
    print(run(a.configs, a.repeats, a.out))


if __name__ == "__main__":
    main()
