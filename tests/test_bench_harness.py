"""The shared benchmark harness: timing, memory measurement and table output behave as documented."""

import time

import torch

from bench.harness import Candidate, markdown_table, measure_forward_peak, time_interleaved


def test_time_interleaved_orders_and_counts():
    calls = []
    candidates = [Candidate("fast", lambda: calls.append("fast")),
                  Candidate("slow", lambda: (calls.append("slow"), time.sleep(0.01)))]
    timings = time_interleaved(candidates, repeats=3, warmup=1)
    assert calls == ["fast", "slow"] * 4  # round-robin: warm-up round, then three timed rounds
    assert len(timings["fast"].samples) == len(timings["slow"].samples) == 3
    assert timings["slow"].median > timings["fast"].median


def test_measure_forward_peak_sees_a_large_allocation():
    nbytes = 256 * 2**20
    peak = measure_forward_peak(lambda: torch.ones(nbytes // 4))
    assert 0.8 * nbytes < peak < 1.5 * nbytes


def test_markdown_table_formats_numbers_and_missing_values():
    table = markdown_table(["a", "b", "c"], [["x", 1234.5678, float("nan")], ["y", 0.012345, 3]])
    lines = table.splitlines()
    assert lines[0] == "| a | b | c |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| x | 1235 | — |" and lines[3] == "| y | 0.0123 | 3 |"
