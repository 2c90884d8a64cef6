"""``bench.gpu_quick``, the one-command GPU check, rehearsed on the CPU: the dry run reports every phase within the
8-file limit, a run killed mid-phase still leaves its summary and partial results, and the parity check sees
elements a kernel never wrote."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_estimate, gpu_phases, gpu_quick

ROOT = Path(__file__).resolve().parent.parent


def _start(out: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OUT", None)
    return subprocess.Popen(
        [sys.executable, "-m", "bench.gpu_quick", "--dry-run", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _phase_rows(summary: str) -> dict:
    rows = {}
    for line in summary.split("## Estimated")[0].splitlines():  # the phase table, not the estimate's
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] in gpu_quick.PHASE_NAMES:
            rows[cells[0]] = cells
    return rows


def _no_phase_left(out: Path, timeout: float = 10.0) -> bool:
    """No process still runs with ``out`` on its command line (the phases exit with the driver)."""
    end = time.time() + timeout
    while time.time() < end:
        alive = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and str(out) in (proc / "cmdline").read_bytes().decode(errors="ignore"):
                    alive.append(proc.name)
            except OSError:
                continue
        if not alive:
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_dry")
    proc = _start(out, "--budget", "400")
    log, _ = proc.communicate(timeout=420)
    return proc.returncode, out, log


@pytest.mark.slow
def test_dry_run_reports_every_phase_within_the_file_limit(dry_run):
    code, out, log = dry_run
    assert code == 0, log[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert set(files) <= set(gpu_quick.FILES) and len(files) <= gpu_quick.MAX_FILES, files
    summary = (out / "summary.md").read_text()
    assert "State: **finished**" in summary
    rows = _phase_rows(summary)
    assert set(rows) == set(gpu_quick.PHASE_NAMES)
    assert all(cells[1] == "ok" for cells in rows.values()), summary
    parity = (out / "parity.md").read_text()
    assert "| ok |" in parity and "FAIL" not in parity and "ERROR" not in parity, parity
    for name in ("env.md", "kernels.md", "e2e.md", "extras.md"):
        assert (out / name).read_text().count("\n|") >= 2, name  # a table with rows
    assert "Triton vs CUDA C++" in (out / "kernels.md").read_text()


@pytest.mark.slow
def test_dry_run_estimates_the_gpu_run_within_seven_minutes(dry_run):
    _, out, _ = dry_run
    summary = (out / "summary.md").read_text()
    total = next(line for line in summary.splitlines() if line.startswith("| **total**"))
    seconds = float(total.split("**")[3].split()[0])
    assert 0 < seconds <= 420 and "within" in total, total


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_its_summary_and_partial_results(tmp_path, sig):
    proc = _start(tmp_path, "--phases", "env", "parity", "kernels")
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # until the parity phase has written a result row
            parity = tmp_path / "parity.md"
            if parity.exists() and "| ok |" in parity.read_text():
                break
            time.sleep(0.3)
        else:
            pytest.fail("the parity phase wrote no row")
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rows = _phase_rows((tmp_path / "summary.md").read_text())
    assert rows["env"][1] == "ok"
    expected = "killed" if sig == signal.SIGTERM else "running"  # SIGKILL: the summary written at phase start
    assert rows["parity"][1].startswith(expected), rows["parity"]
    assert rows["kernels"][1] == "pending"
    assert "| ok |" in (tmp_path / "parity.md").read_text()
    assert (tmp_path / "env.md").read_text().count("\n|") >= 3
    assert _no_phase_left(tmp_path), "phase processes outlived the driver"


def test_unwritten_elements_fail_the_parity_row(tmp_path, monkeypatch):
    """An op that leaves part of its output unwritten: the NaN pre-fill makes the row fail with a NaN count."""

    import pvtv2_fast.ops as ops_module

    original = ops_module.linear_sra_pool

    def half_written_pool(x, height, width, pool_size=7, backend="auto"):
        if backend == "torch":  # the float64 reference stays intact
            return original(x, height, width, pool_size, backend=backend)
        out = torch.empty(x.shape[0], pool_size * pool_size, x.shape[2], dtype=x.dtype)
        out[:, :24] = 0.0
        return out

    ctx = gpu_phases.Ctx("parity", "fp32", True, time.time() + 60, gpu_phases.Results(tmp_path / "p.md"), "cpu")
    case = gpu_phases.Case("broken", "pool", 1, (14, 14, 8))
    try:
        gpu_phases._fill_empty_with_nan()
        monkeypatch.setattr(ops_module, "linear_sra_pool", half_written_pool)
        assert not gpu_phases.run_case(ctx, case, "fp32", "triton")
    finally:
        torch.use_deterministic_algorithms(False)
    row = (tmp_path / "p.md").read_text().strip().splitlines()[-1]
    assert "**FAIL**" in row and f"| {25 * 8} |" in row, row


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_dry_stand_ins_keep_each_case_on_its_kernel_path(dtype):
    for case in gpu_phases.parity_plan(dtype):
        small = gpu_phases.shrink(case)
        assert small.op == case.op and small.batch <= 3 and max(small.items) < small.batch
        if case.op == "attention":
            assert (small.shape[1] <= 128) == (case.shape[1] <= 128), case  # one-block vs streaming
            assert small.shape[2:] == case.shape[2:]  # channels and heads kept
        else:
            assert small.shape[2:] == case.shape[2:]
        if case.batch > 2:
            assert small.batch > 2  # batch items past the first chunk stay


def test_plan_covers_the_shapes_issue_9_asks_for():
    cases = gpu_phases.parity_plan("bf16")
    names = " ".join(c.name for c in cases)
    for needle in ("@512×512", "@2048×2048", "@4096²", "517×389", "b2_linear", "batch 8"):
        assert needle in names, needle
    assert any(c.op == "attention" and c.shape[1] <= 128 for c in cases)  # one-block path
    assert any(c.op == "attention" and c.shape[1] > 128 for c in cases)  # streaming path
    big = [
        c
        for c in cases
        if c.batch * c.shape[0] * c.shape[2] > 2**31
        or (c.op != "attention" and c.batch * c.shape[0] * c.shape[1] * c.shape[2] > 2**31)
    ]
    assert {c.op for c in big} >= {"dwconv", "pool"}


def test_estimate_arithmetic():
    counts = {
        "env": {"processes": 1},
        "parity": {"processes": 3, "compiles": 30, "small": 10},
        "extras": {"processes": 1},
    }
    text = gpu_estimate.estimate_markdown(counts)
    cost = gpu_estimate.COST
    parity = (3 * cost["processes"][0] + 30 * cost["compiles"][0]) / 3 + 10 * cost["small"][0]
    extras = cost["processes"][0] + sum(gpu_estimate.EXTRAS_S.values())
    total = cost["processes"][0] + parity + extras
    assert f"**{total:.0f} s" in text, text
    assert f"| {parity:.0f} |" in text


def test_file_list_fits_the_limit():
    assert len(gpu_quick.FILES) <= gpu_quick.MAX_FILES
    assert {p.file for p in gpu_quick.PHASES} <= set(gpu_quick.FILES)
