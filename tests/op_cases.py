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

import os

import pytest
import torch

from pvtv2_fast import PvtV2Config, preset_names
from pvtv2_fast.validation import stage_shapes

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 1.6e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]

# Image size whose stage maps are odd and non-square: 25×33, 13×17, 7×9, 4×5.
IMAGE = (97, 131)


def stage_cases():
    """One case per distinct (hidden, heads, keys, ffn hidden, linear) over all presets and stages, named by the
    first preset/stage that has it: ``(id, C, heads, H, W, M, ffn_hidden, linear)``."""
    seen, cases = set(), []
    for preset in preset_names():
        for i, s in enumerate(stage_shapes(PvtV2Config.from_preset(preset), *IMAGE)):
            key = (s.channels, s.heads, s.keys, s.ffn_hidden, s.linear)
            if key not in seen:
                seen.add(key)
                cases.append(
                    (f"{preset}-stage{i + 1}", s.channels, s.heads, s.height, s.width, s.keys, s.ffn_hidden, s.linear)
                )
    return cases


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    atol, rtol = TOL[dtype]
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------- backends under test
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0, device=DEVICE):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(device, dtype)


def fused_backends(op_name: str):
    """``(backend, device)`` pytest params: each fused backend of the op on the device it runs on here: Triton on
    DEVICE (interpreted on a CPU-only machine), the C++ kernels on CPU, the CUDA C++ kernels when a GPU is present."""
    from pvtv2_fast import ops

    op = ops.OPS[op_name]
    params = []
    for backend in op.backends:
        device = {"triton": DEVICE, "cpu": "cpu", "cuda": "cuda"}[backend]
        if device == "cuda" and DEVICE != "cuda":
            continue
        params.append(pytest.param(backend, device, id=backend))
    return params


def require(op_name: str, backend: str, args) -> None:
    """Fail (never skip) when a backend this machine must have cannot run: a missing extension build or Triton
    install is a broken setup, not a reason to pass. PVTV2_FAST_NO_EXT=1 marks a deliberate build without C++."""
    from pvtv2_fast import ops

    reason = ops.OPS[op_name].why_not(backend, args)
    if reason is None:
        return
    if backend in ("cpu", "cuda") and os.environ.get("PVTV2_FAST_NO_EXT") == "1":
        pytest.skip(f"extension build turned off: {reason}")
    pytest.fail(f"{op_name}: backend {backend!r} cannot run here: {reason}")


def check_compile_and_export(call, x: torch.Tensor, node: str) -> None:
    """``call(x)`` (one fused op's call) under ``torch.compile(fullgraph=True)`` gives the eager result, and
    ``torch.export`` keeps the fused op as a node whose target names ``node``."""

    class Call(torch.nn.Module):
        def forward(self, t):
            return call(t)

    torch.testing.assert_close(torch.compile(Call(), fullgraph=True, backend="eager")(x), Call()(x))
    exported = torch.export.export(Call(), (x,))
    assert [n for n in exported.graph.nodes if node in str(n.target)], node


def _hypothesis_settings():
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=FUZZ_EXAMPLES <= 25,  # CI: the same 25 shapes every run; a fuzz run draws fresh ones
        suppress_health_check=[HealthCheck.too_slow],
    )


# Property tests (the fuzz of every op against its reference): 25 shapes per op in CI; `make fuzz` (or
# PVTV2_FAST_FUZZ_EXAMPLES=N) draws N random shapes per op, each run on every fused backend.
FUZZ_EXAMPLES = int(os.environ.get("PVTV2_FAST_FUZZ_EXAMPLES", "25"))
HYPOTHESIS = _hypothesis_settings()
