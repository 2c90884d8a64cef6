"""The Triton launchers' GPU-only limits, checked on the CPU: grid axes 1 and 2 hold at most 65535 programs
(a 4096² image's stage-1 map is 1,048,576 tokens), and offsets past 2³¹ elements (batch items of big maps)."""

import subprocess
import sys
import textwrap

import pytest
import torch

from pvtv2_fast import ops
from pvtv2_fast.kernels import dwconv_gelu, launch, sra_attention

pytestmark = pytest.mark.triton
TOKENS_4096 = 1024 * 1024  # stage-1 map of a 4096² image


@pytest.mark.parametrize("channels", [256, 512])
def test_dwconv_grid_fits_a_4096_stage1_map(channels):
    block_p, block_c = dwconv_gelu.tile(TOKENS_4096, channels, interpreted=False)
    grid = dwconv_gelu.launch_grid(TOKENS_4096, channels, 8, block_p, block_c)
    assert grid[0] * block_p >= TOKENS_4096 and grid[0] > launch.MAX_GRID_AXIS12  # the old axis-1 layout failed
    assert grid[1] <= launch.MAX_GRID_AXIS12 and grid[2] <= launch.MAX_GRID_AXIS12


def test_check_grid_names_the_axis_over_the_limit():
    with pytest.raises(ValueError, match="axis 1 has 65536 programs"):
        launch.check_grid((1, 65536, 1))
    assert launch.check_grid((2**31 - 1, 65535, 65535)) == (2**31 - 1, 65535, 65535)


@pytest.mark.parametrize("batch,per_item", [(1, 1), (65535, 1), (65536, 1), (9000, 8), (3, 65535)])
def test_batch_chunks_cover_the_batch_within_the_limit(batch, per_item):
    chunks = list(launch.batch_chunks(batch, per_item))
    assert chunks[0][0] == 0 and chunks[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert all((stop - start) * per_item <= launch.MAX_GRID_AXIS12 for start, stop in chunks)


def test_batch_chunks_refuse_items_wider_than_the_grid():
    with pytest.raises(ValueError, match="exceed"):
        list(launch.batch_chunks(2, 65536))


def test_one_block_tiles_stay_within_the_spill_free_sizes(monkeypatch):
    """Compiled fp32 takes one block only up to 64 keys, in 16×64 score tiles (larger ones spilled on sm_90; see
    bench/results/triton_compile.md); half precision up to 128 keys."""
    monkeypatch.setattr(sra_attention, "interpreting", lambda: False)
    assert sra_attention.one_block_max_keys(True) == 64 and sra_attention.one_block_max_keys(False) == 128
    for head_block in (16, 32, 64, 128):
        for m in (1, 49, 64, 65, 100, 128):
            bn16, bm16 = sra_attention.one_block_tile(False, head_block, m)
            assert bm16 >= m and bn16 * bm16 <= 64 * 128
            if m <= 64:
                bn, bm = sra_attention.one_block_tile(True, head_block, m)
                assert bm >= m and bn * bm <= 16 * 64


@pytest.mark.parametrize("op", ["attention", "dwconv"])
def test_batches_launch_in_chunks_when_the_grid_would_overflow(monkeypatch, op):
    """With the axis limit lowered to 4 programs, batch 3 × 2 heads (attention) / batch 5 (dwconv) take several
    launches; the result must equal the reference."""
    monkeypatch.setattr(launch, "MAX_GRID_AXIS12", 4)
    g = torch.Generator().manual_seed(0)
    if op == "attention":
        q, kv = torch.randn(3, 30, 32, generator=g), torch.randn(3, 20, 64, generator=g)
        out = ops.sra_attention(q, kv[..., :32], kv[..., 32:], 2, backend="triton")
        ref = ops.sra_attention(q, kv[..., :32], kv[..., 32:], 2, backend="torch")
    else:
        x, w, b = torch.randn(5, 35, 24, generator=g), torch.randn(24, 1, 3, 3, generator=g), torch.randn(24)
        out = ops.dwconv_gelu(x, w, b, 5, 7, backend="triton")
        ref = ops.dwconv_gelu(x, w, b, 5, 7, backend="torch")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# A batch stride just over 2³⁰ elements: item 2 starts past 2³¹, which 32-bit offset arithmetic wraps (the old
# kernels read out of bounds: a segfault under the interpreter). The storage is 6 GiB of fp16 but only the few
# pages the items use are ever touched. Run in a subprocess so a regression fails this test, not the session.
OVERFLOW_SCRIPT = textwrap.dedent("""
    import os
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from pvtv2_fast import ops

    h, w, c, m = 4, 5, 32, 9
    n = h * w
    stride = 2**30 + 64
    store = torch.empty(3 * stride, dtype=torch.float16)
    for i in range(3):
        store[i * stride:i * stride + n * c] = torch.randn(n * c).half()
    x = store.as_strided((3, n, c), (stride, c, 1))
    kv = torch.randn(3, m, 2 * c).half()
    wt, b = torch.randn(c, 1, 3, 3).half(), torch.randn(c).half()
    dense = x.contiguous()
    pairs = {
        "dwconv": (ops.dwconv_gelu(x, wt, b, h, w, backend="triton"),
                   ops.dwconv_gelu(dense.float(), wt.float(), b.float(), h, w, backend="torch")),
        "pool": (ops.linear_sra_pool(x, h, w, backend="triton"),
                 ops.linear_sra_pool(dense.float(), h, w, backend="torch")),
        "attention": (ops.sra_attention(x, kv[..., :c], kv[..., c:], 2, backend="triton"),
                      ops.sra_attention(dense.float(), kv[..., :c].float(), kv[..., c:].float(), 2, backend="torch")),
    }
    for name, (out, ref) in pairs.items():
        err = (out.float() - ref).abs().max().item()
        print(name, err)
        assert err < 1e-2, (name, err)
""")


@pytest.mark.slow
def test_offsets_past_two_to_the_31_elements():
    out = subprocess.run([sys.executable, "-c", OVERFLOW_SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
