"""``make gpu-check``: the whole GPU check in one command, sized for a bare, offline GPU machine lent for minutes.

    python3 -m bench.gpu_quick [--out DIR] [--budget SECONDS] [--dry-run] [--phases env parity ...]

Phases run in order, most valuable first, each in its own process under a timeout cut to the time left
(``--budget``, default 420 s); a phase is skipped when too little time is left for it:

1. ``env``: GPU, driver, torch, CUDA, triton, nvcc, extension status.
2. ``parity``: every Triton op against a float64 reference at real shapes (b0/b2 stage maps 512²…4096², a
   4096² stage-1 map, odd maps, batch items past 2³¹ elements), fp32/fp16/bf16 in three parallel processes,
   outputs pre-filled with NaN; ``fast=True`` vs the reference models with TF32 off.
3. ``parity_cuda``: the CUDA C++ ops the same way, once the extension (built in the background from the start,
   for this GPU's arch only) is there.
4. ``kernels``: copy bandwidth and GEMM rate, attention vs SDPA, dwconv+GELU Triton vs CUDA C++ vs PyTorch vs a
   copy, pooling; the per-op Triton-vs-CUDA C++ verdict for ``CUDA_ORDER``.
5. ``e2e``: b2 at 1024², batch 8, bf16: fast vs reference vs transformers vs timm, memory-lean on and off.
6. ``extras`` (time left): ``torch.compile`` of the reference, 4096² memory, segmentation image → labels, pytest.

Output (``--out``, default ``$OUT`` when set, else ``bench/results/gpu/``), at most 8 files: ``summary.md``
(rewritten at every phase start and end, and on SIGTERM/SIGINT: a killed run still says how far it got), one
Markdown file per phase (``env.md``, ``parity.md``, ``kernels.md``, ``e2e.md``, ``extras.md``; every result row
appended as it is produced), ``log.txt`` (the phases' stdout/stderr) and ``build.log``.

No install is needed: the phases run with ``PYTHONPATH`` at the repository root (``pvtv2_fast/kernels`` is linked
to ``kernels/`` when missing, the layout the installed package has) and the extension is built in place.

``--dry-run`` runs every phase on the CPU in well under a minute: the same case lists shrunk to tiny shapes, the
Triton kernels under the interpreter, the C++ CPU kernels standing in for the CUDA C++ ones. Its summary carries
the counts of the real plan (cases, Triton compiles, autotune sweeps, processes) and the GPU run-time estimate
made from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
MAX_FILES = 8
RESERVE_S = 5.0  # kept back from every phase's timeout: the summary and the next phase's start
KILL_GRACE_S = 3.0


# Does a C++ error reach Python as an exception? A bad call into the extension (a 2-D x); a crash here means the build
# cannot be trusted on any error path (bad input would kill the caller's process).
CANARY = """
import sys, torch
from pvtv2_fast import _ext
_ext.has_kernel("dwconv_gelu", "cpu")
try:
    torch.ops.pvtv2_fast_C.dwconv_gelu(torch.randn(3, 4), torch.randn(4, 1, 3, 3), None, 1, 3, False)
except Exception as e:
    print("canary: a C++ error reached Python as", type(e).__name__ + ":", str(e).splitlines()[0][:100])
    sys.exit(0)
print("canary: a bad call raised nothing")
sys.exit(1)
"""


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    file: str
    max_s: Optional[float]  # the phase's own cap (None: whatever is left)
    min_s: float  # skipped when less than this is left
    workers: Tuple[str, ...] = ("",)  # one process per entry, run in parallel (the parity dtypes)
    needs_build: bool = False


PHASES = (
    Phase("env", "Environment", "env.md", 40, 5),
    Phase(
        "parity",
        "Parity against float64 (Triton ops, fast=True models)",
        "parity.md",
        170,
        30,
        workers=("fp32", "fp16", "bf16"),
    ),
    Phase("parity_cuda", "Parity against float64 (CUDA C++ ops)", "parity.md", 60, 10, needs_build=True),
    Phase("kernels", "Kernel timings", "kernels.md", 80, 20),
    Phase("e2e", "End to end", "e2e.md", 90, 30),
    Phase("extras", "If time is left", "extras.md", None, 20),
)
PHASE_NAMES = [p.name for p in PHASES]
FILES = ["summary.md", *dict.fromkeys(p.file for p in PHASES), "log.txt", "build.log"]
assert len(FILES) <= MAX_FILES


@dataclass
class Record:
    phase: Phase
    status: str = "pending"
    seconds: float = 0.0
    note: str = ""
    counts: Dict[str, int] = field(default_factory=dict)


class Run:
    """The driver: phases in order under one budget, the background extension build, and the summary."""

    def __init__(self, out: Path, budget: float, dry_run: bool, phases: List[str]):
        self.out, self.budget, self.dry_run = out, budget, dry_run
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.records = [Record(p) for p in PHASES if p.name in phases]
        self.children: List[subprocess.Popen] = []
        self.build: Optional[subprocess.Popen] = None
        self.build_t0 = 0.0
        self.build_status = "not started"
        self.counts_dir = Path(tempfile.mkdtemp(prefix="gpu_quick-"))
        self.lock = threading.RLock()  # re-entrant: on_signal runs on the main thread, maybe inside `with self.lock`
        self.finished = False

    # ------------------------------------------------------------------------------------------ helpers
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, message: str) -> None:
        line = f"[gpu_quick {time.monotonic() - self.t0:6.1f}s] {message}"
        print(line, flush=True)
        with open(self.out / "log.txt", "a") as f:
            f.write(line + "\n")

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("TRITON_INTERPRET", None)
        if self.dry_run:
            env["TRITON_INTERPRET"] = "1"  # read when the kernel modules are imported, in the child
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic mode (the NaN pre-fill) wants it
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # ------------------------------------------------------------------------------------------ setup
    def prepare_tree(self) -> None:
        """``pvtv2_fast.kernels`` is ``kernels/`` (setup.py's package_dir). Unless an (editable) install provides
        it, link it, the layout the installed package has, so the phases run from PYTHONPATH alone."""
        link = ROOT / "pvtv2_fast" / "kernels"
        if link.exists():
            return
        code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('pvtv2_fast.kernels') is None)"
        if subprocess.run([sys.executable, "-c", code], env=self.env(), cwd=ROOT).returncode == 0:
            return
        try:
            link.symlink_to(Path("..") / "kernels", target_is_directory=True)
            self.log("linked pvtv2_fast/kernels -> ../kernels")
        except OSError as e:
            self.log(f"could not link pvtv2_fast/kernels ({e}); the phases cannot import the Triton kernels")

    def start_build(self) -> None:
        """Build the extension in place for this GPU's arch only, unless a build that loads with CUDA kernels is
        there. In a dry run a probe of the CPU extension stands in (nothing is compiled)."""
        probe = (
            "import sys, pvtv2_fast._ext as e; ok = e.has_kernel('dwconv_gelu', '{dev}'); "
            "print('extension:', 'loads with {dev} kernels' if ok else 'unusable: ' + (e._error or 'no {dev} "
            "kernels')); sys.exit(0 if ok else 1)"
        )
        py = _q(sys.executable)
        # the canary's source once, in a shell variable, for the run and for the backtrace
        canary = f'canary_src={_q(CANARY)}; canary() {{ {py} -c "$canary_src"; }}; '
        # where the canary crashes: a native backtrace (cuda-gdb also debugs programs without GPU code; no gdb there)
        backtrace = (
            "backtrace() { command -v cuda-gdb >/dev/null || return 0; echo 'the crash under cuda-gdb:'; "
            f'timeout 120 cuda-gdb -q -batch -ex run -ex bt --args {py} -c "$canary_src" 2>&1 '
            "| grep -E 'signal|^#' | head -25 | cut -c1-400; }; "
        )
        if self.dry_run:
            cmd = canary + f"{py} -c {_q(probe.format(dev='cpu'))} && canary"
        else:
            arch = _gpu_arch()
            jobs = os.cpu_count() or 4
            # A build whose C++ errors crash the process (seen with the GPU image's $CXX, 2026-11-29) is rebuilt once
            # with the system compiler; the canary's verdict and the C++ runtime the .so links go to build.log.
            cmd = (
                canary
                + backtrace
                + f"build() {{ PVTV2_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST={_q(arch)} MAX_JOBS={jobs} {py} setup.py -q "
                'build_ext --inplace "$@"; }; '
                "runtime() { ldd pvtv2_fast/_C*.so | grep -E 'libstdc|libgcc_s' || echo 'no shared C++ runtime'; "
                f"{py} -m pytest -q -p no:cacheprovider tests/ops/test_cpu_kernels.py -k isa_code 2>&1 | tail -3; }}; "
                f"{py} -c {_q(probe.format(dev='cuda'))} && canary && exit 0; "
                "build || exit $?; runtime; canary && exit 0; backtrace; "
                'echo "canary failed with ${CXX:-c++}: rebuilding with /usr/bin/g++"; [ -x /usr/bin/g++ ] || exit 1; '
                "CXX=/usr/bin/g++ CC=/usr/bin/gcc build --force || exit $?; runtime; "
                "canary && exit 0; backtrace; exit 1"
            )
        log = open(self.out / "build.log", "a")
        log.write(f"$ {cmd}\n")
        log.flush()
        self.build = subprocess.Popen(
            ["bash", "-c", cmd], cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.build_t0 = time.monotonic()
        self.build_status = "running"
        self.log(f"extension build started in the background: {cmd}")

    def wait_build(self, limit: float) -> bool:
        if self.build is None:
            return False
        try:
            rc = self.build.wait(timeout=max(0.0, limit))
        except subprocess.TimeoutExpired:
            self.build_status = f"still running after {time.monotonic() - self.build_t0:.0f} s"
            return False
        self.build_status = (
            f"{'ok' if rc == 0 else f'failed (exit {rc}, see build.log)'} after "
            f"{time.monotonic() - self.build_t0:.0f} s"
        )
        return rc == 0

    # ------------------------------------------------------------------------------------------ phases
    def run_phase(self, rec: Record) -> None:
        phase = rec.phase
        if self.left() < phase.min_s + RESERVE_S:
            rec.status, rec.note = "skipped", f"{self.left():.0f} s left, needs {phase.min_s:.0f} s"
            return
        t0 = time.monotonic()
        if phase.needs_build:
            rec.status = "waiting for the extension build"
            self.write_summary()
            if not self.wait_build(self.left() - phase.min_s - RESERVE_S):
                rec.status, rec.note = "skipped", f"extension build {self.build_status}"
                rec.seconds = time.monotonic() - t0
                return
        timeout = self.left() - RESERVE_S
        if phase.max_s is not None:
            timeout = min(timeout, phase.max_s)
        rec.status = f"running (timeout {timeout:.0f} s)"
        self.write_summary()
        from bench.gpu_phases import section_header

        with open(self.out / phase.file, "a") as f:  # the table header once; parallel workers append rows
            f.write(section_header(phase.name))
        self.log(f"phase {phase.name}: {len(phase.workers)} process(es), timeout {timeout:.0f} s")
        with open(self.out / "log.txt", "a") as log:
            for worker in phase.workers:
                cmd = [
                    sys.executable,
                    "-m",
                    "bench.gpu_quick",
                    "--child",
                    phase.name,
                    "--out",
                    str(self.out),
                    "--deadline",
                    str(time.time() + timeout),
                    "--counts",
                    str(self.counts_dir),
                ]
                cmd += ["--worker", worker] if worker else []
                cmd += ["--dry-run"] if self.dry_run else []
                with self.lock:
                    self.children.append(
                        subprocess.Popen(
                            cmd, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                        )
                    )
            codes = [_wait(p, t0 + timeout - time.monotonic()) for p in list(self.children)]
        with self.lock:
            self.children.clear()
        rec.seconds = time.monotonic() - t0
        rec.counts = self.read_counts(phase.name)
        if all(c == 0 for c in codes):
            rec.status = "ok"
        elif any(c == "timeout" for c in codes):
            rec.status = f"timed out after {timeout:.0f} s"
        else:
            rec.status = "failed: exit " + ", ".join(str(c) for c in codes)
        failed_rows = rec.counts.get("failed", 0)
        if failed_rows:
            rec.note = f"{failed_rows} result row(s) failed"

    def read_counts(self, phase: str) -> Dict[str, int]:
        total: Dict[str, int] = {}
        for path in self.counts_dir.glob(f"{phase}*.json"):
            for key, value in json.loads(path.read_text()).items():
                total[key] = total.get(key, 0) + value
        return total

    def main(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in FILES:  # a fresh report: no stale rows from an earlier run in the same folder
            (self.out / name).unlink(missing_ok=True)
        self.log(f"out {self.out}, budget {self.budget:.0f} s, {'dry run (CPU)' if self.dry_run else 'GPU'}")
        self.prepare_tree()
        if any(r.phase.needs_build for r in self.records):
            self.start_build()
        self.write_summary()
        for rec in self.records:
            self.run_phase(rec)
            self.write_summary()
            self.log(f"phase {rec.phase.name}: {rec.status} ({rec.seconds:.0f} s) {rec.note}")
        self.stop_build()
        self.finished = True
        self.write_summary()
        shutil.rmtree(self.counts_dir, ignore_errors=True)  # the phases' counts are in the summary now
        return 0 if all(r.status in ("ok", "skipped") for r in self.records) else 1

    def stop_build(self) -> None:
        if self.build is not None and self.build.poll() is None:
            _kill(self.build)
            self.build_status = "stopped at the end of the run"
        elif self.build is not None and self.build_status == "running":
            self.wait_build(0)

    def on_signal(self, signum, _frame) -> None:
        """Killed (the machine's time limit): stop the phases, say so in the summary, exit."""
        with self.lock:
            for p in self.children:
                _kill(p)
        for rec in self.records:
            if rec.status.startswith(("running", "waiting")):
                rec.status = f"killed by signal {signum} while running"
                rec.counts = self.read_counts(rec.phase.name)
        self.stop_build()
        self.write_summary(killed=signum)
        shutil.rmtree(self.counts_dir, ignore_errors=True)
        self.log(f"killed by signal {signum}; summary written")
        os._exit(128 + signum)

    # ------------------------------------------------------------------------------------------ summary
    def write_summary(self, killed: Optional[int] = None) -> None:
        from bench.gpu_estimate import estimate_markdown

        elapsed = time.monotonic() - self.t0
        state = "killed" if killed else "finished" if self.finished else "in progress"
        lines = [
            f"# GPU check summary ({'dry run on the CPU' if self.dry_run else 'GPU'})",
            "",
            f"State: **{state}** after {elapsed:.0f} s of a {self.budget:.0f} s budget. Command: "
            f"`python3 -m bench.gpu_quick{' --dry-run' if self.dry_run else ''} --out {self.out} "
            f"--budget {self.budget:.0f}`. Extension build: {self.build_status}.",
            "",
            "| phase | status | seconds | CPU s | cases | failed | processes | Triton compiles (plan) | "
            "autotune sweeps (plan) | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.records:
            c = r.counts
            compiles = c.get("compiles", "")
            if "compiled" in c:
                compiles = f"{compiles} (measured {c['compiled']})"
            lines.append(
                f"| {r.phase.name} | {r.status} | {r.seconds:.0f} | {c.get('cpu_s', '')} | "
                f"{c.get('cases', '')} | "
                f"{c.get('failed', '')} | {c.get('processes', '')} | {compiles} | "
                f"{c.get('sweeps', '')} | {r.note} |"
            )
        skipped = [r.phase.name for r in self.records if r.status == "skipped"]
        lines += [
            "",
            f"Skipped: {', '.join(skipped) if skipped else 'nothing'}. Results: "
            + ", ".join(f"`{f}`" for f in FILES[1:])
            + " in the same folder.",
            "",
        ]
        lines.append(estimate_markdown({r.phase.name: r.counts for r in self.records}))
        tmp = self.out / ".summary.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.out / "summary.md")  # atomic: a kill mid-write leaves the previous summary


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _gpu_arch() -> str:
    """``TORCH_CUDA_ARCH_LIST`` for the GPU present ("9.0" on an H200), from nvidia-smi or torch."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    code = "import torch; print('%d.%d' % torch.cuda.get_device_capability())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()


def _kill(p: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass


def _wait(p: subprocess.Popen, timeout: float):
    try:
        return p.wait(timeout=max(0.0, timeout))
    except subprocess.TimeoutExpired:
        _kill(p)
        return "timeout"


def _default_out() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results" / "gpu"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else bench/results/gpu)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole check (default 420)")
    parser.add_argument("--dry-run", action="store_true", help="CPU rehearsal: tiny shapes, Triton interpreter")
    parser.add_argument("--phases", nargs="+", choices=PHASE_NAMES, default=PHASE_NAMES)
    # internal: one phase in this process
    parser.add_argument("--child", choices=PHASE_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--counts", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = (args.out or _default_out()).resolve()
    if args.child:
        from bench.gpu_phases import run_child

        return run_child(args.child, args.worker, out, args.dry_run, args.deadline, args.counts)
    if not args.dry_run and shutil.which("nvidia-smi") is None:
        try:
            import torch

            has_gpu = torch.cuda.is_available()
        except ImportError:
            has_gpu = False
        if not has_gpu:
            print("bench.gpu_quick: no CUDA GPU here; use --dry-run to rehearse on the CPU", file=sys.stderr)
            return 2
    run = Run(out, args.budget, args.dry_run, args.phases)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, run.on_signal)
    return run.main()


if __name__ == "__main__":
    raise SystemExit(main())
