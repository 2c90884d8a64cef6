"""Backends as data. Each op is an :class:`Op`: its PyTorch reference plus ``{backend: (impl, why_not)}``.

Backends (``backend=`` of every op):

* ``"torch"``: the reference composition of PyTorch ops (always available, differentiable, compiles natively).
* ``"triton"``: the fused Triton kernel as a ``torch.library`` custom op. Compiled for CUDA tensors; on CPU tensors
  only when the kernels were imported under the Triton interpreter (``TRITON_INTERPRET=1``).
* ``"cpu"`` / ``"cuda"``: the C++ / CUDA C++ kernels of the extension ``pvtv2_fast._C``.
* ``"auto"``: the first backend of :data:`AUTO_ORDER` (per device type, per op) that can run this input and that
  does not measure slower than the next choice on it (a backend's ``slower`` rule: e.g. the C++ attention leaves
  bf16 and wide heads to SDPA). When none can, the reference runs and a :class:`FallbackWarning` says why, once per op
  and reason.

An explicit backend that cannot run raises ``NotImplementedError`` with the reason instead of falling back.
An op may name a *stand-in* for a backend it has no kernel for (LayerNorm has no Triton or CUDA C++ kernel: there
PyTorch's fused CUDA LayerNorm serves), so a model-wide ``set_fast(backend=...)`` stays meaningful for every op.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

from .. import _ext

BACKENDS = ("auto", "triton", "cpu", "cuda", "torch")
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# What "auto" tries, per device type: the op's own entry, else "default". "torch" in a list is a deliberate choice
# (no warning). CUDA: from the "Triton vs CUDA C++" table of the GPU check (bench/results/gpu/2026-11-29/,
# H200): the CUDA C++ dwconv+GELU took 0.565× Triton's time (geomean of 24 stage shapes; Triton won only on
# the largest maps), the CUDA C++ pooling 1.49× Triton's, and the Triton attention 2.03× SDPA's (1.12-5.6×, every
# one of 24 shapes slower, SDPA's layout copies included), so attention on CUDA is SDPA's until a kernel beats it.
CPU_ORDER: Dict[str, Tuple[str, ...]] = {
    "default": ("cpu", "triton"),
    # The C++ attention where it measured faster than SDPA (its `slower` rule, ops/sra_attention.py), else SDPA.
    "sra_attention": ("cpu", "torch"),
}
CUDA_ORDER: Dict[str, Tuple[str, ...]] = {
    "default": ("triton", "cuda"),
    "dwconv_gelu": ("cuda", "triton"),
    "linear_sra_pool": ("triton", "cuda"),
    "layer_norm": ("torch",),  # PyTorch's CUDA LayerNorm is one fused kernel already
    "sra_attention": ("torch",),
}
AUTO_ORDER: Dict[str, Dict[str, Tuple[str, ...]]] = {"cpu": CPU_ORDER, "cuda": CUDA_ORDER}


class FallbackWarning(UserWarning):
    """A fused op could not run on this input and the PyTorch reference ran instead."""


# ---------------------------------------------------------------------------------------------- availability
_triton: Optional[Tuple[bool, bool, str]] = None  # (importable, interpreted, reason if not importable)
_simulated: Dict[str, str] = {}  # backend -> reason, see simulate()
_simulated_interpreted: Optional[bool] = None
_generation = 0  # bumped whenever simulate() changes what dispatch sees, see dispatch_generation()


def triton_status() -> Tuple[bool, bool, str]:
    """(importable, interpreted, reason if not importable), computed once per process."""
    global _triton
    if _triton is None:
        try:
            import triton  # noqa: F401

            from .. import kernels

            _triton = (True, kernels.INTERPRETED, "")
        except Exception as e:  # noqa: BLE001 - any import failure means no Triton backend
            _triton = (False, False, f"triton is not importable ({type(e).__name__}: {e})")
    ok, interpreted, why = _triton
    return ok, interpreted if _simulated_interpreted is None else _simulated_interpreted, why


@contextlib.contextmanager
def simulate(*, unavailable: Sequence[str] = (), triton_interpreted: Optional[bool] = None) -> Iterator[None]:
    """Dispatch as if ``unavailable`` backends were missing, or Triton were (not) interpreted — for tests of the
    dispatch rules themselves (e.g. a CPU machine without the extension, or a GPU machine's compiled Triton)."""
    global _simulated_interpreted, _generation
    saved = dict(_simulated), _simulated_interpreted
    _simulated.update({b: f"the {b} backend is switched off (pvtv2_fast.ops.simulate)" for b in unavailable})
    if triton_interpreted is not None:
        _simulated_interpreted = triton_interpreted
    _generation += 1
    try:
        yield
    finally:
        _simulated.clear()
        _simulated.update(saved[0])
        _simulated_interpreted = saved[1]
        _generation += 1


def dispatch_generation() -> int:
    """A number that changes whenever the backends dispatch can choose change (``simulate``): callers that cache a
    resolved backend (``bind_pvt_block``'s users) key on it."""
    return _generation


def dtype_reason(t: torch.Tensor, what: str) -> Optional[str]:
    if t.dtype not in FUSED_DTYPES:
        return f"dtype {t.dtype} is not supported by the {what} kernels (float32, float16, bfloat16 are)"
    return None


def lead_tensor(args: Sequence) -> torch.Tensor:
    """The tensor that decides a call's device and dtype: the first argument, or its first element for ops whose
    first argument is a list of tensors."""
    t = args[0]
    return t[0] if isinstance(t, (list, tuple)) else t


def triton_why_not(args: Sequence) -> Optional[str]:
    """Why the Triton kernels cannot take these tensors (device, interpreter state, dtype), or None."""
    ok, interpreted, why = triton_status()
    if not ok:
        return why
    t = lead_tensor(args)
    if t.device.type == "cuda":
        if interpreted:
            return "the kernels were imported under TRITON_INTERPRET=1, which runs CPU tensors only"
    elif t.device.type == "cpu":
        if not interpreted:
            return "fused Triton kernels need CUDA tensors (on CPU they run only under TRITON_INTERPRET=1)"
    else:
        return f"device {t.device.type!r} is not supported by the Triton kernels"
    return dtype_reason(t, "Triton")


NATIVE_OPS: set = set()  # the extension's ops that back a backend of some op (tests check each one)


def native_why_not(native_op: str, device: str) -> Callable[[Sequence], Optional[str]]:
    """``why_not`` of the extension's kernel ``pvtv2_fast_C::native_op`` for ``device`` ("cpu" / "cuda")."""
    NATIVE_OPS.add(native_op)
    # Asked here, at registration: dispatch inside torch.compile then reads plain Python values.
    loaded = _ext.available()
    reason = _ext.unavailable_reason() if not loaded else None
    if loaded and not _ext.has_kernel(native_op, device):
        reason = f"pvtv2_fast._C has no {device.upper()} kernel for {native_op} (built without {device.upper()}?)"

    def why_not(args: Sequence) -> Optional[str]:
        t = lead_tensor(args)
        if t.device.type != device:
            return f"the {device} kernel needs {device} tensors, got {t.device.type}"
        return reason or dtype_reason(t, device.upper())

    return why_not


# ---------------------------------------------------------------------------------------------- ops
_warned: set = set()


def warn_once(key: str, message: str) -> None:
    if key in _warned or torch.compiler.is_compiling():
        return
    _warned.add(key)
    warnings.warn(message, FallbackWarning, stacklevel=4)


def reset_warnings() -> None:
    """Forget which fallbacks were reported (for tests)."""
    _warned.clear()


@dataclass
class Backend:
    impl: Callable
    # Why this backend cannot take the call's arguments (device, dtype, build, shape limits), or None when it can.
    # It receives the op's full argument list; the first argument (or its first element, see lead_tensor) is the
    # tensor that decides the device.
    why_not: Callable[[Sequence], Optional[str]]
    # Whether "auto" should pass over this backend for these arguments, silently, because it measured slower than
    # the next choice there (an explicit backend= still runs it). None: never.
    slower: Optional[Callable[[Sequence], bool]] = None


@dataclass
class Op:
    """One functional op: ``reference`` is its ``"torch"`` backend; others are registered with :meth:`register`.
    Every implementation takes the op's full argument list (after validation) and returns the same result."""

    name: str
    reference: Callable
    backends: Dict[str, Backend] = field(default_factory=dict)
    stand_ins: Dict[str, str] = field(default_factory=dict)  # requested backend -> the backend that serves it

    def register(
        self,
        backend: str,
        impl: Callable,
        why_not: Callable[[Sequence], Optional[str]],
        slower: Optional[Callable[[Sequence], bool]] = None,
    ) -> None:
        if backend not in BACKENDS or backend in ("auto", "torch"):
            raise ValueError(f"{self.name}: cannot register backend {backend!r}")
        self.backends[backend] = Backend(impl, why_not, slower)

    def available(self) -> Tuple[str, ...]:
        """The backends this op has (registered, or stand-ins), "torch" included; not whether they run here."""
        return ("torch",) + tuple(self.backends) + tuple(self.stand_ins)

    def why_not(self, backend: str, args: Sequence) -> Optional[str]:
        """Why ``backend`` cannot run this op on these tensors, or None."""
        backend = self.stand_ins.get(backend, backend)
        if backend == "torch":
            return None
        if backend in _simulated:
            return _simulated[backend]
        if backend not in self.backends:
            return f"no {backend} kernel exists for {self.name}"
        return self.backends[backend].why_not(args)

    def resolve(self, backend: str, args: Sequence) -> str:
        """The backend that runs this call (``"torch"`` for the reference)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend != "auto":
            reason = self.why_not(backend, args)
            if reason is not None:
                raise NotImplementedError(f"{self.name}: backend={backend!r} cannot run this input: {reason}")
            return self.stand_ins.get(backend, backend)
        device = lead_tensor(args).device.type
        order = AUTO_ORDER.get(device, {})
        reasons, passed_over = [], False
        for candidate in order.get(self.name, order.get("default", ())):
            reason = self.why_not(candidate, args)
            if reason is None:
                served = self.stand_ins.get(candidate, candidate)
                rule = self.backends[served].slower if served in self.backends else None
                if rule is not None and rule(args):
                    passed_over = True  # measured slower here than what follows: a choice, not a failure
                    continue
                return served
            reasons.append(reason)
        if passed_over:
            return "torch"
        if not reasons:
            reasons.append(f"no fused kernel runs on {device} tensors")
        warn_once(
            f"{self.name}:{reasons[0]}", f"pvtv2_fast.ops.{self.name}: using the PyTorch reference because {reasons[0]}"
        )
        return "torch"

    def __call__(self, backend: str, *args):
        """Run the op's full (validated) argument list on the backend :meth:`resolve` picks."""
        return self.run(self.resolve(backend, args), *args)

    def run(self, chosen: str, *args):
        """Run the op's full argument list on ``chosen``, a backend :meth:`resolve` returned for it."""
        impl = self.reference if chosen == "torch" else self.backends[chosen].impl
        return impl(*args)


OPS: Dict[str, Op] = {}


def define(name: str, reference: Callable, stand_ins: Optional[Dict[str, str]] = None) -> Op:
    """Create and record the op ``name`` (one per process; :data:`OPS` lists them for tests and benchmarks)."""
    op = Op(name, reference, stand_ins=dict(stand_ins or {}))
    OPS[name] = op
    return op


def register_recompute_autograd(op, reference: Callable, n_tensors: int, n_rest: int) -> None:
    """Give a fused forward ``op`` (a custom op or a qualified name) a backward that recomputes the reference
    composition under autograd: the fused kernels are forward-only, and training through them stays exact.
    The first ``n_tensors`` inputs are tensors (or None)."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.rest = inputs[n_tensors:]

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:n_tensors]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() if t is not None else None for t in saved]
            out = reference(*leaves, *ctx.rest)
            wanted = [t for t, need in zip(leaves, needs) if need and t is not None]
            grads = iter(torch.autograd.grad(out, wanted, grad) if wanted else ())
        result = [next(grads) if need and t is not None else None for t, need in zip(leaves, needs)]
        # A list-of-tensors input (sra_layer's packed weights) takes a list of None grads.
        assert len(ctx.rest) == n_rest, (len(ctx.rest), n_rest)
        return (*result, *([None] * len(r) if isinstance(r, (list, tuple)) else None for r in ctx.rest))

    torch.library.register_autograd(op, backward, setup_context=setup_context)


def register_native(
    op: Op,
    native_op: str,
    n_tensors: int,
    n_rest: int,
    devices: Sequence[str] = ("cpu", "cuda"),
    op_only_args: int = 0,
    differentiable: bool = True,
    slower: Optional[Callable[[Sequence], bool]] = None,
    prepare: Optional[Callable[[tuple], tuple]] = None,
    why_not: Optional[Callable[[Sequence], Optional[str]]] = None,
) -> None:
    """Register the extension's ``pvtv2_fast_C::native_op`` as ``op``'s backends for ``devices`` (each runs only
    where the extension was built with that device's kernels), with a recompute-the-reference backward unless
    ``differentiable`` is False (integer outputs). ``op_only_args``: trailing arguments of the op that the kernel
    does not take (they are dropped). ``slower``: see :class:`Backend`. ``prepare``: maps the op's arguments to the
    kernel's, for an argument the kernel needs and the op derives when the caller leaves it out. ``why_not``: a
    reason of the op's own that the kernel cannot take a call (asked before the build's)."""
    if _ext.available() and differentiable:
        register_recompute_autograd(f"pvtv2_fast_C::{native_op}", op.reference, n_tensors, n_rest)

    def impl(*args):
        args = args[: len(args) - op_only_args]
        return getattr(torch.ops.pvtv2_fast_C, native_op)(*(prepare(args) if prepare else args))

    for device in devices:
        native = native_why_not(native_op, device)
        reason = native if why_not is None else (lambda args, native=native: why_not(args) or native(args))
        op.register(device, impl, reason, slower)
