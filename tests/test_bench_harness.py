"""The shared benchmark harness: timing, memory measurement and table output behave as documented."""

import time

import pytest
import torch

from bench.harness import Candidate, markdown_table, measure_forward_peak, time_interleaved


def test_time_interleaved_orders_and_counts():
    calls = []
    candidates = [
        Candidate("fast", lambda: calls.append("fast")),
        Candidate("slow", lambda: (calls.append("slow"), time.sleep(0.01))),
    ]
    timings = time_interleaved(candidates, repeats=3, warmup=1)
    assert calls == ["fast", "slow"] * 4  # round-robin: warm-up round, then three timed rounds
    assert len(timings["fast"].samples) == len(timings["slow"].samples) == 3
    assert timings["slow"].median > timings["fast"].median


def test_settle_runs_each_candidate_untimed_right_before_its_timed_call():
    calls = []

    def slow_after_other(name):
        # Slow when another candidate ran just before (a thread pool's spin tail), fast after itself.
        def fn():
            if calls and calls[-1] != name:
                time.sleep(0.02)
            calls.append(name)

        return fn

    candidates = [Candidate(n, slow_after_other(n)) for n in ("a", "b")]
    timings = time_interleaved(candidates, repeats=3, warmup=1, settle=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert [len(timings[n].samples) for n in ("a", "b")] == [3, 3]
    assert max(timings["a"].samples + timings["b"].samples) < 0.015  # every timed call followed its own settle call


def test_measure_forward_peak_sees_a_large_allocation():
    nbytes = 256 * 2**20
    peak = measure_forward_peak(lambda: torch.ones(nbytes // 4))
    assert 0.8 * nbytes < peak < 1.5 * nbytes


def test_markdown_table_formats_numbers_and_missing_values():
    table = markdown_table(["a", "b", "c"], [["x", 1234.5678, float("nan")], ["y", 0.012345, 3]])
    lines = table.splitlines()
    assert lines[0] == "| a | b | c |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| x | 1235 | — |" and lines[3] == "| y | 0.0123 | 3 |"


def test_triton_vs_cuda_table_orders_each_op_by_geomean():
    from bench.kernels import versus_table

    table = versus_table({"dwconv_gelu": [0.5, 0.8], "linear_sra_pool": [2.0, 1.5], "other": []})
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "CUDA_ORDER['dwconv_gelu'] = ('cuda', 'triton')" in rows["dwconv_gelu"]  # CUDA C++ faster: first
    assert "CUDA_ORDER['linear_sra_pool'] = ('triton', 'cuda')" in rows["linear_sra_pool"]
    assert "no CUDA C++ kernel in this build" in rows["other"]


def test_fast_summary_ratios():
    from bench.report import fast_summary

    results = [
        dict(preset="b0", size=512, impl=i, ms=ms, peak_mb=mb)
        for i, ms, mb in (("reference", 200.0, 72.0), ("fast", 80.0, 18.0), ("timm", 240.0, 72.0))
    ]
    lines = fast_summary(results, ["reference", "fast", "timm"]).splitlines()
    header = next(line for line in lines if line.startswith("| preset"))
    assert header == "| preset | input | fast ms | × reference | × timm | peak memory / reference |"
    assert "| b0 | 512² | 80 | 2.5 | 3 | 0.25 |" in lines


def test_ffn_schedule_tables_run_and_report_the_module_rule(monkeypatch, tmp_path):
    """`python -m bench.ffn_schedule [--module]` on one small shape: both tables are written, and the module table's
    pick is the FFN module's own rule (bf16 at 56² × 512: the oneDNN schedule where oneDNN runs bf16 natively)."""
    pytest.importorskip("pvtv2_fast._C")
    from bench import ffn_schedule
    from pvtv2_fast.modules.fast_path import onednn_takes

    monkeypatch.setattr(ffn_schedule, "SHAPES", [(1, 56, 64, 512)])
    text = ffn_schedule.run_module("bf16", 1, tmp_path / "module")
    assert (tmp_path / "module.md").read_text() == text
    row = text.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "1" and row[10].strip() == ("onednn" if onednn_takes(torch.bfloat16) else "conv_ffn"), row
    text = ffn_schedule.run("fp32", 1, tmp_path / "kernel")
    assert "| 1 | 56² | 64 | 512 |" in text


def test_block_cache_table_runs_both_ways(tmp_path):
    """`python -m bench.block_cache` on one small config: the table is written with one row, both candidates timed
    and their fault counts reported; the model's cache scope is restored afterwards."""
    pytest.importorskip("pvtv2_fast._C")
    from bench import block_cache
    from pvtv2_fast import modeling
    from pvtv2_fast.ops.block_cache import cpu_block_cache

    text = block_cache.run(["b0:256"], "fp32", 1, False, tmp_path / "cache")
    assert (tmp_path / "cache.md").read_text() == text
    row = text.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "b0" and row[2].strip() == "256²", row
    assert float(row[3]) > 0 and float(row[4]) > 0, row
    assert modeling.cpu_block_cache is cpu_block_cache


def test_op_gaps_table_decomposes_every_stage(tmp_path):
    """`python -m bench.op_gaps` on a small input: the table is written with one row per stage, each block's
    recorded calls counted, both timings and the Python share positive, and a ratio for the requested gap."""
    pytest.importorskip("pvtv2_fast._C")
    from bench import op_gaps

    text = op_gaps.main(
        ["--preset", "b0", "--size", "64", "--gaps", "5", "--repeats", "1", "--out", str(tmp_path / "g")]
    )
    assert (tmp_path / "g.md").read_text() == text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| b0 @64²")]
    assert [r[0].strip() for r in rows] == [f"b0 @64² stage {i}" for i in range(1, 5)]
    for r in rows:
        calls, module, replay, _, python, gap = (float(v) for v in r[1:])
        # A block's recorded calls: one pvt_block in fp32 inference (the stage's first block).
        assert calls >= 1 and module > 0 and replay > 0 and python > 0 and gap > 0, r


def test_attention_verdict_keeps_sdpa_unless_triton_is_faster():
    from bench.kernels import attention_versus_sdpa_table

    assert "CUDA_ORDER['sra_attention'] = ('torch',)" in attention_versus_sdpa_table([2.0, 1.1, 0.95])
    assert "CUDA_ORDER['sra_attention'] = ('triton', 'torch')" in attention_versus_sdpa_table([0.8, 0.9])
    assert attention_versus_sdpa_table([]) == ""


@pytest.mark.slow
def test_process_memory_reports_the_whole_process_and_the_compile_process(tmp_path):
    """bench.process_memory: a fresh process per row; the inference mode's row also reports its compile process's
    peak (the eager rows have none), and the table is written."""
    from bench.process_memory import run

    text = run([("b0", 64)], ["reference", "inference"], forwards=2, threads=2, out=tmp_path / "pm")
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| b0 |")]
    assert [r[2] for r in rows] == ["reference", "inference"]
    (loaded_ref, peak_ref, child_ref), (loaded_inf, peak_inf, child_inf) = [
        [float(v) if v != "—" else None for v in (r[3], r[4], r[6].rstrip(" |"))] for r in rows
    ]
    assert 100 < loaded_ref <= peak_ref and 100 < loaded_inf <= peak_inf
    assert child_ref is None and child_inf > 100
    assert (tmp_path / "pm.md").read_text() == text
