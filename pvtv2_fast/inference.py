"""Inference mode: a fast=True model compiled by inductor with *freezing*, for users who can pay a warm-up.

Freezing turns the parameters into constants of the compiled graph, so inductor prepacks the GEMM weights for
oneDNN / MKL, fuses bias and activation post-ops into them, folds the packed key/value weights of the attention
(``SpatialReductionAttention._packed_kv_weights``) once, and removes the per-op Python of eager mode. The fused
ops (``pvtv2_fast.ops``) stay custom ops inside the graph (they have fake implementations for tracing); for fp32 on
CPU each SRA block is one ``pvt_block`` node, its packed weights folded at compile time (1.10-1.13x the graph of
per-op nodes at 224², 1.02-1.04x at 512², b0 / b2).

Two engines run the graph:

* ``"aoti"`` (the default for CPU models with fixed sizes): ``torch.export`` of the model at the call's input
  shape, compiled ahead of time by AOTInductor (``torch._inductor.aoti_compile_and_package``) into a shared
  library whose C++ wrapper calls the kernels and the custom ops with no guards to check and no Python wrapper
  between them (ops with a recompute backward still pass their Python autograd kernel). Against ``"compile"`` on
  a 2-core AVX-512 EPYC (fp32, interleaved in one process): b0 at 224² 1.08-1.15x, b2 at 224² 1.03x, b0 at 512²
  1.03x, b2 at 512² 1.01x, b0 batch 8 at 224² 1.02x: the per-call overhead it removes (dynamo's guards, the Python
  wrapper, ~1 ms at b0) matters where the arithmetic is small. The compile runs in a Python process of its own
  (``pvtv2_fast._aoti_build``; the model travels pickled) and this process only loads the result, so the tracing
  and compiling state stays out of it: peak resident memory of b0 / b2 at 224² (a fresh process, 3 calls) 602 /
  1009 MB against 861 / 1367 MB compiled here. While a compile runs, though, the compile process's own peak (852 /
  1354 MB) adds to this one's resident set; ``PVTV2_FAST_AOTI_IN_PROCESS=1`` compiles here instead, as does a
  model that does not pickle or whose class a fresh interpreter cannot import (warned once).
* ``"compile"`` (``dynamic=True``, and models on other devices): ``torch.compile`` of the model.

Costs and limits (measured on a 2-core AVX-512 machine):

* **Warm-up**: the first call at each input signature (shapes, strides, dtypes, the other arguments, the thread
  count) compiles: with ``"aoti"`` 15-25 s for b0 / b2 on 2 cores (~3 s of it starting the compile process),
  with ``"compile"`` about 1–2 minutes. Later calls with that signature run the compiled graph. With ``cache_dir``
  a later process loads the package an earlier one compiled (b2 at 224²: 5.3 s instead of 21.5 s).
* **Fixed sizes by default** (``dynamic=False``): each new signature compiles its own graph. ``"aoti"`` keeps the
  :data:`MAX_GRAPHS` most recently used (each holds its own copy of the frozen weights) and warns once when it drops
  one; ``"compile"`` keeps up to ``torch._dynamo.config.cache_size_limit``, then falls back to eager with a warning.
  Pass ``dynamic=True`` for one ``torch.compile`` graph over symbolic sizes: one compile for all sizes, somewhat
  slower per call.
* **Weights are frozen**: a compiled graph keeps the values it saw when it compiled. After changing weights
  (``load_state_dict``, fine-tuning), call :func:`optimize_for_inference` again.
* **No gradients**: calls run under ``torch.no_grad()``; use the eager model to train.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.utils._pytree as pytree
from torch import nn

from . import _aoti_build
from ._aoti_build import TENSOR
from .ops.block_cache import cpu_block_cache, cpu_block_cache_on

__all__ = ["ENGINES", "InferenceModel", "MAX_GRAPHS", "optimize_for_inference"]

ENGINES = ("aoti", "compile")
MAX_GRAPHS = 8  # AOTInductor graphs kept per model (torch._dynamo.config.cache_size_limit's default)

logger = logging.getLogger(__name__)


class _AotiGraph:
    """One AOTInductor-compiled signature: ``boxed_run`` (the loaded package's entry) and how to rebuild the model's
    output. ``inputs``: the input shapes; ``where``: ``"subprocess"`` or ``"in-process"``, where it was compiled
    (:func:`_compile`); ``cached``: whether the package came from the cache folder instead of a compile;
    ``compile_process_mb``: the compile process's peak resident memory (None in-process); ``seconds``: the whole
    build and load."""

    def __init__(
        self,
        model: nn.Module,
        leaves: List[Any],
        in_spec: Any,
        tensors: List[torch.Tensor],
        cache_dir: Optional[str] = None,
    ) -> None:
        marked = [TENSOR if isinstance(v, torch.Tensor) else v for v in leaves]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="pvtv2_fast_aoti_") as folder:
            package = os.path.join(folder, "graph.pt2")
            request = _aoti_build.Request(model, marked, in_spec, tensors, package, cache_dir)
            built, self.where = _compile(request, folder)
            # The loader's own entry is what runs: the exported module's inputs and outputs are flat already, so the
            # package wrapper's flattening by its stored specs (~15 us a call) has nothing to do.
            self.boxed_run = _aoti_build.load_package(package)
        self.out_leaves, self.out_spec, self.cached = built["out_leaves"], built["out_spec"], built["cached"]
        self.inputs, self.compile_process_mb = _shapes(tensors), built.get("process_peak_mb")
        if built["cache_error"]:
            warnings.warn(f"optimize_for_inference: {built['cache_error']}", stacklevel=4)  # the model's caller
        self.seconds = time.perf_counter() - start

    def __call__(self, tensors: List[torch.Tensor]) -> Any:
        results = iter(self.boxed_run(tensors))
        return pytree.tree_unflatten([next(results) if v is TENSOR else v for v in self.out_leaves], self.out_spec)


def _compile(request: _aoti_build.Request, folder: str) -> Tuple[Dict, str]:
    """Build the package (:func:`pvtv2_fast._aoti_build.build`) in a process of its own, whose tracing and
    compiling state then never enters this one (see :mod:`pvtv2_fast._aoti_build`); in this process where the model
    cannot be sent there (it does not pickle, or its class is not importable by a fresh interpreter) or no interpreter
    can be started (warned once), or with ``PVTV2_FAST_AOTI_IN_PROCESS=1``. Returns the build's result and where it
    ran."""
    if os.environ.get("PVTV2_FAST_AOTI_IN_PROCESS") != "1":
        built, reason = _compile_in_subprocess(request, folder)
        if built is not None:
            return built, "subprocess"
        _warn_in_process(reason)
    return _aoti_build.build(request), "in-process"


def _compile_in_subprocess(request: _aoti_build.Request, folder: str) -> Tuple[Optional[Dict], str]:
    """``python -m pvtv2_fast._aoti_build`` on the request, saved in ``folder``: the build's result, or None and why
    the model could not be sent there. A build that fails there raises, with the exit code and its output's tail."""
    if getattr(sys, "frozen", False) or not sys.executable:  # an application bundle: no interpreter to start
        return None, "this Python cannot start another interpreter (a frozen application)"
    request_file, result_file = os.path.join(folder, "request.pt"), os.path.join(folder, "result.pt")
    if "torch._inductor.config" in sys.modules:  # the caller's inductor settings, as inductor's workers take them
        request = dataclasses.replace(
            request, inductor_config=sys.modules["torch._inductor.config"].save_config_portable()
        )
    try:
        torch.save(request, request_file)
    except Exception as error:  # e.g. a lambda hook or a class local to a function
        return None, f"the model does not pickle ({type(error).__name__}: {error})"
    # The child imports what this process can: its sys.path, the current folder for ''.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
    try:
        done = subprocess.run(
            _build_command(request_file, result_file),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except OSError as error:  # the interpreter did not start
        return None, f"no compile process started ({error})"
    if done.returncode == 0:
        return torch.load(result_file, weights_only=False), ""
    tail = "\n".join(done.stdout.strip().splitlines()[-20:])
    if done.returncode != _aoti_build.EXIT_CANNOT_LOAD:
        raise RuntimeError(
            f"optimize_for_inference: compiling the model for inputs {_shapes(request.tensors)} failed (in a compile "
            f"process, exit code {done.returncode}; PVTV2_FAST_AOTI_IN_PROCESS=1 compiles in this one):\n{tail}"
        )
    return None, "a new Python process could not load the model: " + (tail.splitlines() or ["?"])[-1]


def _build_command(request: str, result: str) -> List[str]:
    return [sys.executable, "-m", "pvtv2_fast._aoti_build", request, result]


_warned_in_process = False


def _warn_in_process(reason: str) -> None:
    global _warned_in_process
    if not _warned_in_process:
        _warned_in_process = True
        warnings.warn(
            f"optimize_for_inference: compiling in this process, since {reason}. It works the same, but this process "
            "keeps the compiler's state afterwards (measured at 224²: 259 MB more peak resident memory at b0, 358 MB "
            "at b2).",
            stacklevel=6,  # the caller of the InferenceModel
        )


def _describe_leaf(value: Any) -> Any:
    """A hashable stand-in for one input leaf in a signature key: what a compiled graph specialises on."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.stride(), value.dtype, value.device)
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"optimize_for_inference: the AOTInductor engine bakes non-tensor arguments into its graphs and needs "
            f"them hashable, got {type(value).__name__}"
        ) from None
    return ("value", type(value), value)


class InferenceModel:
    """A compiled, frozen view of a PvtV2 model: call it as the model (same arguments, same outputs).

    ``model`` is the eager model it wraps (in fast mode, eval); ``engine`` ``"aoti"`` or ``"compile"`` (see the
    module's docstring); ``compiled`` the ``torch.compile`` wrapper (``"compile"`` only); ``cache_dir`` the folder of
    compiled packages (``"aoti"`` only, or None).
    """

    def __init__(self, model: nn.Module, dynamic: bool, engine: str, cache_dir: Optional[str] = None) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self.dynamic = dynamic
        self.engine = engine
        self.compiled = torch.compile(model, dynamic=dynamic) if engine == "compile" else None
        self._graphs: "OrderedDict[Tuple, _AotiGraph]" = OrderedDict()
        self._lock = threading.Lock()  # the graphs' dictionary and LRU order
        self._compiling = threading.Lock()  # one compile at a time
        self._warned_eviction = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.model.training:
            raise RuntimeError(
                "optimize_for_inference: the wrapped model was switched to training mode; the "
                "compiled graph is for eval only (call .eval(), or train the eager model)"
            )
        if self.compiled is None:  # CPU only, so always inside the CPU block cache
            with torch.no_grad(), cpu_block_cache():
                return self._run_aoti(args, kwargs)
        import torch._inductor.config as inductor_config

        # Freezing applies to graphs compiled without autograd; it is read when a shape first compiles.
        with torch.no_grad(), self._cpu_cache_scope(), inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)

    def _run_aoti(self, args: tuple, kwargs: dict) -> Any:
        threads = torch.get_num_threads()  # inductor's C++ kernels fix theirs when they compile: part of the key
        leaves: Optional[List[Any]] = None
        if not kwargs and args and all(type(v) is torch.Tensor for v in args):
            # The usual call, model(pixel_values): keyed without pytree's flattening and spec hashing. With the direct
            # boxed_run (_AotiGraph.__call__), this wrapper's cost over the bare call went from ~150 to ~50 us (b0 at
            # 64², 2 threads).
            tensors = list(args)
            key: Tuple = (len(args), tuple(_describe_leaf(t) for t in tensors), threads)
        else:
            leaves, in_spec = pytree.tree_flatten((args, kwargs))
            tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
            key = (in_spec, tuple(_describe_leaf(v) for v in leaves), threads)
        if not tensors:
            raise TypeError("optimize_for_inference: the model was called without an input tensor")
        if any(t.device.type != "cpu" for t in tensors):
            raise RuntimeError(
                "optimize_for_inference: the AOTInductor engine runs CPU models on CPU tensors, got a tensor on "
                f"{next(t.device for t in tensors if t.device.type != 'cpu')}; use engine='compile' for other devices"
            )
        # Callers on several threads (a server) compile each signature once, one compile at a time (_compiling), and
        # calls of compiled signatures go on meanwhile: the lookup's lock (_lock) is never held across a compile.
        graph = self._lookup(key)
        if graph is None:
            with self._compiling:
                graph = self._lookup(key)  # compiled by the caller this one waited for
                if graph is None:
                    if leaves is None:
                        leaves, in_spec = pytree.tree_flatten((args, kwargs))
                    graph = _AotiGraph(self.model, leaves, in_spec, tensors, self.cache_dir)
                    logger.info(
                        "optimize_for_inference: %s %s in %.1f s",
                        "loaded from the cache" if graph.cached else "compiled",
                        _shapes(tensors),
                        graph.seconds,
                    )
                    self._insert(key, graph)
        return graph(tensors)

    @property
    def compiled_signatures(self) -> List[Dict[str, Any]]:
        """What the AOTInductor engine holds, least recently used first: per input signature its input shapes, the
        seconds its build and load took, where it compiled, whether it came from ``cache_dir``, and the compile
        process's peak resident MB (None in-process)."""
        with self._lock:
            graphs = list(self._graphs.values())
        return [
            dict(
                inputs=g.inputs,
                seconds=g.seconds,
                where=g.where,
                cached=g.cached,
                compile_process_mb=g.compile_process_mb,
            )
            for g in graphs
        ]

    def _lookup(self, key: Tuple) -> Optional[_AotiGraph]:
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
            return graph

    def _insert(self, key: Tuple, graph: _AotiGraph) -> None:
        with self._lock:
            self._graphs[key] = graph
            if len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
                if not self._warned_eviction:
                    self._warned_eviction = True
                    warnings.warn(
                        f"optimize_for_inference: more than {MAX_GRAPHS} input signatures; the least recently "
                        "used compiled graph was dropped (it compiles again if it returns). Pass dynamic=True "
                        "for one graph over all sizes.",
                        stacklevel=4,  # the caller of the InferenceModel
                    )

    def _cpu_cache_scope(self):
        """The CPU block cache around a CPU model's graph (``pvtv2_fast.ops.block_cache``), as eager fast mode has
        around its encoder: the compiled graph's large buffers then reuse the previous call's pages instead of
        faulting fresh ones in (measured at 1024², interleaved: b2 62,000 faults and 226 ms of system time per call
        without it, 1,300 and 11 ms with; 1.03× (b2) and 1.06× (b0) the speed; level at 224² and 512²)."""
        return cpu_block_cache_on(next(self.model.parameters()).device)

    def __repr__(self) -> str:
        return f"InferenceModel({type(self.model).__name__}, engine={self.engine!r}, dynamic={self.dynamic})"


def _shapes(tensors: List[torch.Tensor]) -> str:
    return ", ".join("×".join(map(str, t.shape)) for t in tensors)


def optimize_for_inference(
    model: nn.Module,
    *,
    dynamic: bool = False,
    backend: str = "auto",
    engine: str = "auto",
    cache_dir: Optional[str] = None,
) -> InferenceModel:
    """Return ``model`` (any ``PvtV2PreTrainedModel``) switched to eval and fast mode (``backend`` as in
    :meth:`set_fast`) and compiled with inductor freezing; see this module's docstring for the engines, the warm-up
    cost and the limits. ``engine``: ``"aoti"``, ``"compile"``, or ``"auto"``: ``"aoti"`` for a CPU model with
    ``dynamic=False``, else ``"compile"``. Outputs match the reference within fp32 rounding (1e-5).

    ``cache_dir`` (``"aoti"`` only): a folder where compiled packages are kept, keyed by a digest of the exported
    program, its weights and the toolchain (``pvtv2_fast._aoti_build.program_key``), so that another process with
    the same model, sizes, machine and versions loads a package instead of compiling it (OpenVINO's ``CACHE_DIR``).
    The packages are shared libraries that the process loads and runs: keep the folder as private as the code."""
    if not hasattr(model, "set_fast"):
        raise TypeError(f"optimize_for_inference takes a pvtv2_fast model, got {type(model).__name__}")
    if not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be a bool, got {dynamic!r}")
    if engine not in ENGINES + ("auto",):
        raise ValueError(f"engine must be one of {ENGINES + ('auto',)}, got {engine!r}")
    on_cpu = next(model.parameters()).device.type == "cpu"
    if engine == "auto":
        engine = "aoti" if on_cpu and not dynamic else "compile"
    elif engine == "aoti" and (dynamic or not on_cpu):
        raise ValueError(
            "optimize_for_inference: engine='aoti' compiles CPU models at fixed sizes; use engine='compile' for "
            + ("dynamic=True" if dynamic else "a model on " + str(next(model.parameters()).device))
        )
    if cache_dir is not None and engine != "aoti":
        raise ValueError("optimize_for_inference: cache_dir keeps AOTInductor packages; it needs engine='aoti'")
    model.eval().set_fast(True, backend)
    return InferenceModel(model, dynamic, engine, None if cache_dir is None else os.fspath(cache_dir))
