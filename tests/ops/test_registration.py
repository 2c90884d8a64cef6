"""Every fused kernel is a registered ``torch.library`` op with a consistent schema, fake (meta) implementation and
autograd formula (``torch.library.opcheck``), and the extension itself is built as CI requires."""

import os
import subprocess

import pytest
import torch
from op_cases import randn
from torch.utils._pytree import tree_map

from pvtv2_fast import _ext
from pvtv2_fast.ops import pack_weight
from pvtv2_fast.ops.registry import NATIVE_OPS

CHECKS = ("test_schema", "test_faketensor", "test_autograd_registration")


def _samples():
    x, kv = randn(1, 45, 16, device="cpu"), randn(1, 6, 128, seed=2, device="cpu")
    dw = (randn(16, 1, 3, 3, seed=1, device="cpu"), randn(16, seed=2, device="cpu"))
    ffn = (
        randn(24, 16, device="cpu", scale=0.25),
        randn(24, device="cpu"),
        randn(24, 1, 3, 3, device="cpu"),
        randn(24, device="cpu"),
        randn(8, 24, device="cpu", scale=0.2),
        randn(8, device="cpu"),
    )
    ffn_x, sr_w = randn(2, 45, 16, device="cpu"), randn(40, 16, 2, 2, device="cpu", scale=0.25)
    embed_w = randn(24, 16, 3, 3, device="cpu", scale=0.08)
    logits = randn(2, 5, 6, 19, device="cpu")
    taps = (
        torch.tensor([[0, 1], [1, 2], [3, 4], [4, 4]]),
        torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [1.0, 0.0]]),
        torch.tensor([[0, 1], [2, 3], [5, 5]]),
        torch.tensor([[0.5, 0.5], [0.875, 0.125], [1.0, 0.0]]),
    )
    maps = [randn(2, 5, 6, 8, device="cpu"), randn(2, 2, 3, 8, device="cpu", seed=1)]
    small = (torch.tensor([[0, 1]] * 4), torch.full((4, 2), 0.5), torch.tensor([[0, 1], [1, 2], [2, 2]]))
    stacked = ([taps[0], small[0]], [taps[1], small[1]], [taps[2], small[2]], [taps[3], taps[3]])
    return {
        "pvtv2_fast.upsample_accumulate_triton": (maps, *stacked, randn(8, device="cpu"), True),
        "pvtv2_fast_C.upsample_accumulate": (maps, *stacked, randn(8, device="cpu"), True),
        "pvtv2_fast.upsample_argmax_triton": (logits, *taps, torch.uint8),
        "pvtv2_fast_C.upsample_argmax": (logits, *taps, torch.uint8),
        "pvtv2_fast.sra_attention_triton": (
            randn(1, 20, 64, device="cpu"),
            kv[..., :64].contiguous(),
            kv[..., 64:].contiguous(),
            2,
            0.125,
        ),
        "pvtv2_fast.linear_sra_pool_triton": (x, 5, 9, 7),
        "pvtv2_fast.dwconv_gelu_triton": (x, *dw, 5, 9, True),
        "pvtv2_fast_C.dwconv_gelu": (x, *dw, 5, 9, True),
        "pvtv2_fast_C.linear_sra_pool": (x, 5, 9, 7),
        # the CUDA C++ kernels (on a GPU with the extension built with CUDA; the samples moved to the GPU)
        "pvtv2_fast_C.dwconv_gelu.cuda": (x, *dw, 5, 9, True),
        "pvtv2_fast_C.linear_sra_pool.cuda": (x, 5, 9, 7),
        "pvtv2_fast_C.conv_ffn": (ffn_x, *ffn, 5, 9, True),
        "pvtv2_fast_C.conv_ffn.packed": (ffn_x, *ffn, 5, 9, True, pack_weight(ffn[0]), pack_weight(ffn[4])),
        "pvtv2_fast_C.layer_norm": (x, randn(x.shape[2], device="cpu"), randn(x.shape[2], device="cpu", seed=2), 1e-6),
        "pvtv2_fast_C.sra_attention": (randn(1, 20, 64, device="cpu"), kv[..., :64], kv[..., 64:], 2, 0.125),
        "pvtv2_fast_C.sr_conv": (ffn_x, sr_w, randn(40, device="cpu"), 5, 9, pack_weight(sr_w)),
        "pvtv2_fast_C.token_conv": (ffn_x, embed_w, randn(24, device="cpu"), 5, 9, 2, 1, pack_weight(embed_w)),
        "pvtv2_fast_C.sra_layer": _sra_layer_sample(),
        "pvtv2_fast_C.pvt_block": _pvt_block_sample(),
    }


def _pvt_block_sample():
    """pvt_block on a 5×9 map of 16 channels, 2 heads, sr 2, FFN width 32 (sra_layer's sample's weights)."""
    x, *w = _sra_layer_sample()[:12]
    attention = [*w[:6], *w[6:10]]
    ffn = [randn(32, 16, device="cpu", seed=12, scale=0.25), randn(32, device="cpu", seed=13)]
    ffn += [randn(32, 1, 3, 3, device="cpu", seed=14, scale=0.3), randn(32, device="cpu", seed=15)]
    ffn += [randn(16, 32, device="cpu", seed=16, scale=0.18), randn(16, device="cpu", seed=17)]
    norm = [randn(16, device="cpu", seed=18), randn(16, device="cpu", seed=19)]
    packed = [pack_weight(t) for t in (w[0], w[2], w[4], w[6], ffn[0], ffn[4])]
    return (x, *norm, attention, *norm, ffn, 5, 9, 2, 0.25, [1e-6, 1e-5, 1e-6], False, packed)


def _sra_layer_sample():
    """sra_layer on a 5×9 map of 16 channels, 2 heads, sr 2, with a residual."""
    c = 16
    w = [randn(c, c, device="cpu", seed=1, scale=0.25), randn(c, device="cpu", seed=2)]
    w += [randn(2 * c, c, device="cpu", seed=3, scale=0.25), randn(2 * c, device="cpu", seed=4)]
    w += [randn(c, c, device="cpu", seed=5, scale=0.25), randn(c, device="cpu", seed=6)]
    sr = [randn(c, c, 2, 2, device="cpu", seed=7, scale=0.12), randn(c, device="cpu", seed=8)]
    norm = [randn(c, device="cpu", seed=9), randn(c, device="cpu", seed=10)]
    x, residual = randn(2, 45, c, device="cpu"), randn(2, 45, c, device="cpu", seed=11)
    packed = [pack_weight(t) for t in (w[0], w[2], w[4], sr[0])]
    return (x, *w, *sr, *norm, residual, 5, 9, 2, 0.25, 1e-6, packed)


@pytest.mark.parametrize("name", list(_samples()))
def test_opcheck(name):
    namespace, op = name.split(".")[:2]
    if namespace == "pvtv2_fast_C" and not _ext.available():
        pytest.skip(_ext.unavailable_reason()) if os.environ.get("PVTV2_FAST_NO_EXT") == "1" else pytest.fail(
            _ext.unavailable_reason()
        )
    if namespace == "pvtv2_fast":
        import pvtv2_fast.ops  # noqa: F401 - defines the Triton custom ops
        from pvtv2_fast.ops import triton_status

        if not triton_status()[1] and not torch.cuda.is_available():
            pytest.fail("Triton kernels are neither interpreted nor on a GPU here")
    if name.endswith(".cuda") and not (torch.cuda.is_available() and _ext.has_kernel(op, "cuda")):
        pytest.skip(f"{op}'s CUDA C++ kernel needs a GPU and the extension built with CUDA")
    args = _samples()[name]
    # compiled Triton runs on CUDA tensors only: where a GPU is, the Triton ops' samples go there (interpreted, CPU)
    if name.endswith(".cuda") or (namespace == "pvtv2_fast" and torch.cuda.is_available()):
        args = tree_map(lambda t: t.cuda() if isinstance(t, torch.Tensor) else t, args)
    torch.library.opcheck(getattr(getattr(torch.ops, namespace), op).default, args, test_utils=CHECKS)


@pytest.mark.skipif(os.environ.get("PVTV2_FAST_NO_EXT") == "1", reason="extension build turned off")
def test_extension_is_built_with_every_cpu_kernel():
    assert _ext.available(), _ext.unavailable_reason()
    for op in NATIVE_OPS:
        assert _ext.has_kernel(op, "cpu"), op


def test_cuda_sources_were_compiled_for_sm80_and_sm90():
    """When built with CUDA (the CI build is), the extension carries sm_80 and sm_90 machine code; on a GPU machine,
    where the build is for the GPU present (make gpu-check builds for its arch alone), that GPU's."""
    if not _ext.has_kernel("dwconv_gelu", "cuda"):
        pytest.skip("extension built without CUDA (no nvcc or CPU-only torch)")
    import triton

    from pvtv2_fast import _C

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    out = subprocess.run([tool, "--list-elf", _C.__file__], capture_output=True, text=True)
    archs = ["sm_%d%d" % torch.cuda.get_device_capability()] if torch.cuda.is_available() else ["sm_80", "sm_90"]
    assert all(a in out.stdout for a in archs), out.stdout + out.stderr
