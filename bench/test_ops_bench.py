"""Per-op micro-benchmarks through pytest-benchmark: ``pytest bench/ --benchmark-only``.

Stage-1 shapes of b0 and b2 at 512² (the FFN's widened hidden state is the largest tensor in the model), for
every backend that runs natively here (torch everywhere; triton on CUDA), next to a plain copy of the same bytes.
"""

import pytest
import torch

from pvtv2_fast import PvtV2Config, ops, stage_sizes

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch"] + (["triton"] if DEVICE == "cuda" else [])


def _stage1(preset, size=512):
    cfg = PvtV2Config.from_preset(preset)
    h, w = stage_sizes(cfg, size, size)[0]
    c = cfg.hidden_sizes[0]
    return h, w, c, int(c * cfg.mlp_ratios[0]), cfg.num_attention_heads[0], cfg.sr_ratios[0]


def _run(benchmark, fn):
    if DEVICE == "cuda":

        def timed():
            fn()
            torch.cuda.synchronize()

        benchmark(timed)
    else:
        with torch.inference_mode():
            benchmark(fn)


@pytest.mark.parametrize("preset", ["b0", "b2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dwconv_gelu(benchmark, preset, backend):
    h, w, _, ffn, _, _ = _stage1(preset)
    x = torch.randn(1, h * w, ffn, device=DEVICE)
    weight, bias = torch.randn(ffn, 1, 3, 3, device=DEVICE), torch.randn(ffn, device=DEVICE)
    benchmark.extra_info["bytes"] = 2 * x.numel() * x.element_size()
    _run(benchmark, lambda: ops.dwconv_gelu(x, weight, bias, h, w, backend=backend))


@pytest.mark.parametrize("preset", ["b0", "b2"])
def test_copy_same_bytes(benchmark, preset):
    """The bandwidth yardstick: one read and one write of the FFN hidden state."""
    h, w, _, ffn, _, _ = _stage1(preset)
    x = torch.randn(1, h * w, ffn, device=DEVICE)
    y = torch.empty_like(x)
    benchmark.extra_info["bytes"] = 2 * x.numel() * x.element_size()
    _run(benchmark, lambda: y.copy_(x))


@pytest.mark.parametrize("preset", ["b0", "b2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sra_attention(benchmark, preset, backend):
    h, w, c, _, heads, sr = _stage1(preset)
    m = (h // sr) * (w // sr)
    q = torch.randn(1, h * w, c, device=DEVICE)
    kv = torch.randn(1, m, 2 * c, device=DEVICE)
    _run(benchmark, lambda: ops.sra_attention(q, kv[..., :c], kv[..., c:], heads, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_sra_pool(benchmark, backend):
    h, w, c, _, _, _ = _stage1("b2")
    x = torch.randn(1, h * w, c, device=DEVICE)
    _run(benchmark, lambda: ops.linear_sra_pool(x, h, w, backend=backend))
