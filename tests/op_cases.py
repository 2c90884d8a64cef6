"""Shapes for op tests: every stage of every preset (small spatial sizes), plus edge cases, and tolerances.

Tolerances (max abs error against an fp32 reference computed from the *same* rounded inputs):
* fp32: 1e-5. Kernels accumulate in fp32; observed errors are ~1e-6 (summation order only).
* fp16: 2e-3 abs + 2e-3 rel. The output is rounded to fp16 (half an ulp: 2^-11 ≈ 4.9e-4 relative) and the
  attention probabilities are rounded to fp16 before the P·V product (another ~4.9e-4 relative per term,
  averaging out over keys); 2e-3 is four fp16 ulps at magnitude 1.
* bf16: 1e-2 abs + 1.6e-2 rel. bf16 has 8 significant bits (ulp 2^-7 ≈ 7.8e-3 relative); under the interpreter
  fp32→bf16 conversion truncates instead of rounding, so the output error is up to one full ulp, plus the
  probabilities' rounding on the GPU path: two ulps relative, with an absolute floor for values near zero.
"""

from __future__ import annotations

import torch

from pvtv2_fast import PvtV2Config, preset_names, stage_sizes

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 1.6e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]

# Image size whose stage maps are odd and non-square: 25×33, 13×17, 7×9, 4×5.
IMAGE = (97, 131)


def stage_cases():
    """One case per distinct (hidden, heads, sr, linear, ffn hidden) over all presets and stages, named by the
    first preset/stage that has it: ``(id, C, heads, H, W, M, ffn_hidden, linear)``."""
    seen, cases = set(), []
    for preset in preset_names():
        cfg = PvtV2Config.from_preset(preset)
        for i, (h, w) in enumerate(stage_sizes(cfg, *IMAGE)):
            c, heads, sr = cfg.hidden_sizes[i], cfg.num_attention_heads[i], cfg.sr_ratios[i]
            ffn = int(c * cfg.mlp_ratios[i])
            if cfg.linear_attention:
                m = 49
            else:
                m = (h // sr) * (w // sr) if sr > 1 else h * w
            key = (c, heads, m, ffn, cfg.linear_attention)
            if key in seen:
                continue
            seen.add(key)
            cases.append((f"{preset}-stage{i + 1}", c, heads, h, w, m, ffn, cfg.linear_attention))
    return cases


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    atol, rtol = TOL[dtype]
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
