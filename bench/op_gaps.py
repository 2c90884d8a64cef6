"""Where eager ``fast=True`` loses time *between* its ops on CPU: per block, the module's forward against a replay of
the ATen calls it made, and the same replay with busy-waits between the calls.

For each stage's first block (``fast=True``, eager inference) the ATen / custom-op calls of one forward are recorded
(``TorchDispatchMode``: every call with its arguments, views included). Then, interleaved (bench.harness, medians):

* ``module``: the block's forward, as a user runs it;
* ``replay``: the recorded calls back to back, each fed what the replayed calls before it produced (as in the forward;
  checked to give the block's output): the same kernels, without the modules' Python;
* ``Python``: the forward with every op answered by its recorded result (nothing computed), less the cost of those
  stubs: the modules' own Python;
* ``replay + gap`` for a few gap lengths: a busy-wait of that many µs after each call (the gaps' total is subtracted),
  standing in for Python between the ops. Ops that run slower after a gap (cold caches, clocks) show as a ratio > 1.

The difference module − replay is what the forward spends between and around its ops: the modules' Python, plus the
ops running slower in the module's context than back to back; the gap ratios say what idle gaps cost the ops. A graph
runtime (OpenVINO, the inference mode) has neither. The CPU block cache's scope is entered around every candidate, as
the encoder does.

    python -m bench.op_gaps [--preset b2] [--size 224] [--gaps 10 30 100 300] [--threads 2] [--repeats 25]
                            [--out bench/results/cpu_op_gaps]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.candidates import reference_model
from bench.harness import RESULTS, Candidate, machine_line, markdown_table, time_interleaved, write_markdown
from bench.report import cpu_line
from pvtv2_fast.ops.block_cache import cpu_block_cache

Call = Tuple[Callable, tuple, dict]


class _Recorder(TorchDispatchMode):
    """Records every dispatched call (op, args, kwargs) and its result while running it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[Call] = []
        self.results: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((func, args, kwargs))
        self.results.append(func(*args, **kwargs))
        return self.results[-1]


class _Stub(TorchDispatchMode):
    """Answers the i-th dispatched call with the i-th recorded result, computing nothing: what is left of a forward
    run under it is its Python (plus this mode's own cost, measured apart)."""

    def __init__(self, results: list) -> None:
        super().__init__()
        self.results, self.i = results, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.i += 1
        return self.results[self.i - 1]


def _python_us(fn: Callable[[], object], results: list, probe: torch.Tensor, repeats: int) -> float:
    """µs of Python in ``fn``: its time with every op stubbed out, minus as many stubbed trivial calls."""

    def stubbed() -> None:
        with _Stub(results):
            fn()

    def stubs_only() -> None:
        with _Stub(results):
            for _ in results:
                torch.ops.aten.alias.default(probe)

    t = time_interleaved([Candidate("stubbed", stubbed), Candidate("stubs", stubs_only)], repeats=repeats, warmup=5)
    return (t["stubbed"].median - t["stubs"].median) * 1e6


def _in_cache_scope(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` inside the CPU block cache's scope, as the encoder runs its blocks in eager CPU inference."""

    def run() -> object:
        with cpu_block_cache():
            return fn()

    return run


class _Produced(int):
    """An argument the replay takes from the output of an earlier call (its index)."""


def _is_produced(arg, produced: dict) -> bool:
    return isinstance(arg, torch.Tensor) and id(arg) in produced


def _dataflow(calls: Sequence[Call], results: list) -> List[Call]:
    """The calls with every tensor argument that an earlier call produced replaced by that call's index: a replay then
    feeds each op what the replayed ops before it just wrote, as the forward does, rather than the same recorded
    tensors every time."""
    produced: dict = {}
    program = []
    for i, (func, args, kwargs) in enumerate(calls):
        refs = tuple(_Produced(produced[id(a)]) if _is_produced(a, produced) else a for a in args)
        program.append((func, refs, kwargs))
        if isinstance(results[i], torch.Tensor):
            produced[id(results[i])] = i
    return program


def _replay(program: Sequence[Call], gap_s: float = 0.0) -> Callable[[], list]:
    def run() -> list:
        outs: list = []
        for func, refs, kwargs in program:
            outs.append(func(*(outs[r] if isinstance(r, _Produced) else r for r in refs), **kwargs))
            if gap_s:
                end = time.perf_counter() + gap_s
                while time.perf_counter() < end:
                    pass
        return outs

    return _in_cache_scope(run)


def _first_blocks(model, x: torch.Tensor) -> List[Tuple[str, torch.nn.Module, tuple]]:
    """(name, block, its positional inputs) of every stage's first block, captured in one forward."""
    blocks = {f"stage {i + 1}": stage.blocks[0] for i, stage in enumerate(model.encoder.layers)}
    captured = {}
    hooks = [
        block.register_forward_pre_hook(lambda mod, args, name=name: captured.setdefault(name, args) and None)
        for name, block in blocks.items()
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [(name, blocks[name], captured[name]) for name in blocks]


def op_gaps(preset: str, size: int, gaps_us: Sequence[float], repeats: int) -> Tuple[List[str], List[list]]:
    model = reference_model(preset).set_fast(True)
    rows = []
    for name, block, args in _first_blocks(model, torch.randn(1, 3, size, size)):
        recorder = _Recorder()
        with torch.inference_mode(), cpu_block_cache(), recorder:
            block(*args)
        calls = _dataflow(recorder.calls, recorder.results)
        with torch.inference_mode():  # the replay computes what the block did
            torch.testing.assert_close(_replay(calls)()[-1], recorder.results[-1], rtol=0, atol=0)
        module_fn = _in_cache_scope(lambda block=block, args=args: block(*args))
        cands = [Candidate("module", module_fn), Candidate("replay", _replay(calls))]
        cands += [Candidate(f"gap {g:g}", _replay(calls, g * 1e-6)) for g in gaps_us]
        t = time_interleaved(cands, repeats=repeats, warmup=2, settle=1)
        module, replay = t["module"].median, t["replay"].median
        python = _python_us(lambda block=block, args=args: block(*args), recorder.results, args[0], 10 * repeats)
        row = [f"{preset} @{size}² {name}", len(calls), module * 1e6, replay * 1e6, (module - replay) * 1e6, python]
        row += [(t[f"gap {g:g}"].median - g * 1e-6 * len(calls)) / replay for g in gaps_us]
        rows.append(row)
    headers = ["block", "ATen calls", "module µs", "replay µs", "between the ops µs", "of which Python µs"]
    headers += [f"ops after {g:g} µs gaps / without" for g in gaps_us]
    return headers, rows


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="b2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--gaps", type=float, nargs="+", default=[10, 30, 100, 300], help="µs of busy-wait per call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--out", type=Path, default=RESULTS / "cpu_op_gaps")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    headers, rows = op_gaps(a.preset, a.size, a.gaps, a.repeats)
    text = (
        f"# Eager fast=True on CPU: time between the ops ({a.preset} @{a.size}², fp32, batch 1)\n\n"
        f"Machine: {machine_line()}.\n{cpu_line()}.\n"
        f"Reproduce: `python -m bench.op_gaps --preset {a.preset} --size {a.size} --threads {a.threads} "
        f"--repeats {a.repeats}`. Medians of {a.repeats} interleaved runs, each timed call after an untimed one.\n\n"
        "Each stage's first block: its forward (`module`) against a replay of the ATen calls it made, back to back "
        "(`replay`); `between the ops` is the difference, `of which Python` the forward's time with every op stubbed "
        "out (answered with its recorded result; the stubs' own cost subtracted). The last columns replay "
        "with a busy-wait after every call, the waits subtracted, relative to the plain replay: > 1 means the ops "
        "themselves run slower after a gap.\n\n" + markdown_table(headers, rows) + "\n"
    )
    print(text)
    return write_markdown(a.out, text)


if __name__ == "__main__":
    main()
