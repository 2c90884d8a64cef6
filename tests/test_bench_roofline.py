"""bench.roofline: the FLOP count behind the report's arithmetic-rate table, and the table itself."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.candidates import reference_model
from bench.roofline import forward_flops, gemm_table, rate_table
from pvtv2_fast import _ext

# The PVTv2 paper's GFLOPs (multiply-adds) at 224² (arXiv 2106.13797, Table 1 / 2).
PAPER_GMACS = {"b0": 0.6, "b1": 2.1, "b2": 4.0, "b2_linear": 3.9, "b3": 6.9, "b4": 10.1, "b5": 11.8}


@pytest.mark.parametrize("preset", sorted(PAPER_GMACS))
def test_forward_flops_match_the_paper(preset):
    # The paper rounds to 0.1 GMACs and counts the same layers (norms and activations aside): within 6%.
    assert forward_flops(preset, 224) / 2e9 == pytest.approx(PAPER_GMACS[preset], rel=0.06)


def test_forward_flops_on_meta_are_a_real_forward_plus_its_attention_and_scale_with_batch():
    # FlopCounterMode alone misses PyTorch's CPU SDPA: the meta-device count is a real CPU forward's plus exactly the
    # attention products, 2 · 2·N·M·C per layer.
    model = reference_model("b0").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 96, 96))
    meta = forward_flops("b0", 96)
    # b0 at 96²: maps of 24², 12², 6², 3² tokens, keys after the reductions (8, 4, 2, 1) 3² each, 2 blocks a stage.
    attention = sum(2 * 2 * 2 * (s * s) * 9 * c for s, c in zip((24, 12, 6, 3), (32, 64, 160, 256)))
    assert meta == counter.get_total_flops() + attention
    assert forward_flops("b0", 96, batch=3) == 3 * meta


def test_rate_table_reports_each_candidate_against_the_blas_rate():
    results = [
        dict(preset="b0", size=224, impl="fast", ms=10.0),
        dict(preset="b0", size=224, impl="openvino", ms=20.0),
    ]
    text = rate_table(results, ["fast", "openvino"], {("b0", 224): 2e9}, blas=400e9)
    row = next(line for line in text.splitlines() if line.startswith("| b0"))
    assert "200 (50%)" in row and "100 (25%)" in row
    assert "400 GFLOP/s" in text


def test_gemm_table_times_both_gemms_of_every_stage():
    if not _ext.available():
        pytest.skip("the packed-weight GEMM is the C++ extension's, which is not built")
    threads = torch.get_num_threads()
    try:
        table = gemm_table([("b0", 64)], {1: 100e9}, repeats=1)
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in table.splitlines() if line.startswith("| 1 | b0")]
    # b0 at 64²: 16², 8², 4², 2² maps; fc1 C → 8C and fc2 back, per stage
    assert [r.split(" | ")[4:6] for r in rows] == [
        [g, f"{n * n}×{k}→{m}"]
        for n, c in zip((16, 8, 4, 2), (32, 64, 160, 256))
        for g, k, m in (("fc1", c, 8 * c if c < 160 else 4 * c), ("fc2", 8 * c if c < 160 else 4 * c, c))
    ]
