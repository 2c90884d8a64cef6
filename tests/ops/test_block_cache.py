"""The CPU block cache (csrc/cpu/block_cache.h, ``pvtv2_fast.ops.block_cache``): eager fast=True inference on CPU
reuses the pages of earlier calls' large buffers; the outputs are the same bits, live tensors are never handed
out again, and the pool serves requests from one idle range, several gathered, or fresh pages, in that order."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import randomize_

from pvtv2_fast import PvtV2Config, PvtV2Model, _ext
from pvtv2_fast.ops.block_cache import cpu_block_cache, cpu_cache_stats, empty_cpu_cache

pytestmark = pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")

MB = 1 << 20
# 256² input: b0's stage-1 tokens are 64·64·32 fp32 = 512 KB, above the cache's 256 KB floor.
SIZE = (256, 256)


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in ("reused", "gathered", "fresh")}


@pytest.fixture
def fast_b0():
    config = PvtV2Config.from_preset("b0", depths=[1, 1, 1, 1])
    return randomize_(PvtV2Model(config)).eval().set_fast(True, backend="cpu")


@pytest.fixture(autouse=True)
def _cache_on(monkeypatch):
    monkeypatch.delenv("PVTV2_FAST_CPU_CACHE_MB", raising=False)
    empty_cpu_cache()
    yield
    empty_cpu_cache()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_outputs_are_the_same_bits_with_and_without_the_cache(fast_b0, monkeypatch, dtype):
    model = fast_b0.to(dtype)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.inference_mode():
        first = model(x, output_hidden_states=True)
        kept = [h.clone() for h in first.hidden_states]
        again = [model(x, output_hidden_states=True) for _ in range(2)]
        monkeypatch.setenv("PVTV2_FAST_CPU_CACHE_MB", "0")
        uncached = model(x, output_hidden_states=True)
    # The first call's maps were alive through the later calls: their memory was not handed out again.
    for a, b in zip(first.hidden_states, kept):
        assert torch.equal(a, b)
    for out in again + [uncached]:
        for a, b in zip(out.hidden_states, kept):
            assert torch.equal(a, b)


def test_a_repeated_forward_maps_no_fresh_pages(fast_b0):
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        fast_b0(x)
        fast_b0(x)
        before = cpu_cache_stats()
        fast_b0(x)
        after = cpu_cache_stats()
    counts = _delta(before, after)
    assert counts["fresh"] == 0 and counts["reused"] > 0, counts
    assert after["idle_bytes"] > 0


def test_training_and_grad_mode_forwards_do_not_use_the_cache(fast_b0):
    x = torch.randn(1, 3, *SIZE)
    before = cpu_cache_stats()
    fast_b0(x).last_hidden_state.sum().backward()
    with torch.no_grad():
        fast_b0.set_fast(False)(x)  # the reference path neither
    assert _delta(before, cpu_cache_stats()) == {"reused": 0, "gathered": 0, "fresh": 0}


def test_zero_turns_the_cache_off_and_returns_its_pages(fast_b0, monkeypatch):
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        fast_b0(x)
        assert cpu_cache_stats()["idle_bytes"] > 0
        monkeypatch.setenv("PVTV2_FAST_CPU_CACHE_MB", "0")
        before = cpu_cache_stats()
        fast_b0(x)
    after = cpu_cache_stats()
    assert _delta(before, after) == {"reused": 0, "gathered": 0, "fresh": 0}
    assert after["idle_bytes"] == 0


@pytest.mark.parametrize("value", ["-1", "1.5", "lots", "99999999999"])
def test_a_bad_limit_is_an_error_naming_the_variable(fast_b0, monkeypatch, value):
    monkeypatch.setenv("PVTV2_FAST_CPU_CACHE_MB", value)
    with pytest.raises(RuntimeError, match="PVTV2_FAST_CPU_CACHE_MB"), torch.no_grad():
        fast_b0(torch.randn(1, 3, *SIZE))


def test_the_pool_reuses_one_range_then_gathers_several_then_maps_fresh_pages():
    with cpu_block_cache():
        # Three 1 MB blocks, freed: 3 MB of idle pages in three ranges (kept apart by a live block between each).
        blocks = [torch.empty(MB, dtype=torch.uint8) for _ in range(5)]
        one, three = blocks[1].fill_(1), blocks[3].fill_(3)
        del blocks
        s0 = cpu_cache_stats()
        small = torch.full((MB // 2,), 7, dtype=torch.uint8)  # the prefix of one idle range
        s1 = cpu_cache_stats()
        big = torch.full((2 * MB + MB // 4,), 9, dtype=torch.uint8)  # no range holds it: gathered (mremap)
        s2 = cpu_cache_stats()
        huge = torch.full((8 * MB,), 5, dtype=torch.uint8)  # more than all idle pages: gathered + fresh
        s3 = cpu_cache_stats()
        del huge
        again = torch.full((8 * MB,), 6, dtype=torch.uint8)  # the range just freed, whole
        s4 = cpu_cache_stats()
    assert _delta(s0, s1) == {"reused": 1, "gathered": 0, "fresh": 0}
    expected_big = {"reused": 0, "gathered": 1, "fresh": 0} if sys.platform == "linux" else {"fresh": 1}
    assert {k: v for k, v in _delta(s1, s2).items() if v} == {k: v for k, v in expected_big.items() if v}
    assert _delta(s2, s3)["reused"] == 0
    assert _delta(s3, s4) == {"reused": 1, "gathered": 0, "fresh": 0}
    # Every block still holds what was written to it: no two live blocks share pages.
    assert (one == 1).all() and (three == 3).all()
    assert (small == 7).all() and (big == 9).all() and (again == 6).all()


def test_outside_the_scope_and_below_the_floor_allocations_pass_through():
    with cpu_block_cache():
        torch.empty(MB, dtype=torch.uint8)  # installs the cache, leaves 1 MB idle
    before = cpu_cache_stats()
    a = torch.empty(4 * MB, dtype=torch.uint8)
    with cpu_block_cache():
        b = torch.empty(64 << 10, dtype=torch.uint8)
    assert _delta(before, cpu_cache_stats()) == {"reused": 0, "gathered": 0, "fresh": 0}
    del a, b


def test_blocks_freed_on_another_thread_or_after_the_scope_return_to_the_pool():
    import threading

    with cpu_block_cache():
        kept = [torch.ones(MB, dtype=torch.uint8) for _ in range(2)]
    idle = cpu_cache_stats()["idle_bytes"]
    worker = threading.Thread(target=kept.pop)
    worker.start()
    worker.join()
    kept.clear()
    assert cpu_cache_stats()["idle_bytes"] >= idle + 2 * MB


def test_buffers_the_base_allocator_made_before_the_cache_existed_are_freed_by_it():
    # oneDNN allocates and frees raw buffers through whatever CPU allocator is installed at each moment: one made
    # before the cache was installed, freed after, must go back to the allocator that made it. A fresh process, so
    # the cache is installed between the two.
    code = (
        "import torch, pvtv2_fast\n"
        "from pvtv2_fast.ops.block_cache import cpu_block_cache\n"
        "w = torch.randn(512, 512).to_mkldnn()\n"
        "with cpu_block_cache():\n"
        "    torch.empty(1 << 20)\n"
        "del w\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_package_exports_the_cache_controls():
    import pvtv2_fast

    assert pvtv2_fast.empty_cpu_cache is empty_cpu_cache and pvtv2_fast.cpu_cache_stats is cpu_cache_stats
    with cpu_block_cache():
        block = torch.empty(MB, dtype=torch.uint8)
    del block
    assert pvtv2_fast.cpu_cache_stats()["idle_bytes"] >= MB
    assert pvtv2_fast.empty_cpu_cache() >= MB and pvtv2_fast.cpu_cache_stats()["idle_bytes"] == 0
