"""Shared fixtures. Triton kernels run under the interpreter unless a CUDA GPU is present; TRITON_INTERPRET is read
when ``@triton.jit`` runs, so it is set here, before any test imports the kernel modules."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # fp32 parity at 1e-5 needs true fp32 GEMMs and convolutions: TF32 (cuBLAS/cuDNN defaults) rounds to 10 bits.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

import pytest  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from pvtv2_fast import PvtV2Config  # noqa: E402

# Presets cheap enough for parity tests on a 2-core CPU; bigger ones share the code paths (only depths differ).
PARITY_PRESETS = ["b0", "b1", "b2_linear"]
# (height, width) pairs: the hub size, an odd non-square size, and a size below 224 with partial SR windows.
PARITY_SIZES = [(224, 224), (97, 131), (61, 45)]


def block_cache_delta(fn):
    """``(fn(), what the call changed in pvtv2_fast.cpu_cache_stats())``: reused / gathered / fresh blocks, live and
    idle bytes."""
    from pvtv2_fast import cpu_cache_stats

    before = cpu_cache_stats()
    result = fn()
    after = cpu_cache_stats()
    return result, {k: after[k] - before[k] for k in after}


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every parameter, LayerNorm affine included (the default init of ones/zeros would hide
    a swapped or missing LayerNorm)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1 and ("norm" in name) and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def hf_config(config: PvtV2Config, **overrides):
    """The transformers PvtV2Config equal to ours."""
    import transformers

    data = {k: v for k, v in config.to_dict().items() if k not in ("stage_names", "model_type")}
    data.pop("patch_embed_layer_norm_eps", None)
    data.pop("spatial_reduction_layer_norm_eps", None)
    data.update(overrides)
    return transformers.PvtV2Config(**data)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def assert_max_abs_close(ours: torch.Tensor, theirs: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    """Same shape and max |ours - theirs| <= atol. Against timm this is the contract too, not bit equality: timm
    projects keys and values with one packed (2C) GEMM where we use two (transformers' layout), and whether the BLAS
    rounds those alike depends on the CPU (bit-identical on an earlier CI machine; ~1e-6 apart on this AVX-512/AMX
    one, where MKL picks other kernels)."""
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    err = (ours - theirs).abs().max().item()
    assert err <= atol, f"{what}: max abs error {err:.3e} > {atol}"
