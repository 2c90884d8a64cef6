"""Backend choice shared by the ops: ``"auto" | "triton" | "cpu" | "cuda" | "torch"``.

* ``"torch"``: the reference composition of PyTorch ops (always available, differentiable, compiles natively).
* ``"triton"``: the fused Triton kernel as a ``torch.library`` custom op. Compiled for CUDA tensors; on CPU tensors
  only when the kernels were imported under the Triton interpreter (``TRITON_INTERPRET=1``).
* ``"cpu"`` / ``"cuda"``: the C++ / CUDA C++ kernels of the extension ``pvtv2_fast._C`` (ops that have them).
* ``"auto"``: CPU tensors → the C++ kernel, else Triton when interpreted, else the reference; attention on CPU
  is PyTorch's SDPA by design (no C++ kernel beats it yet). CUDA tensors → Triton, else CUDA C++, else the
  reference. A fallback that loses a fused kernel warns once, saying why.

An explicit backend that cannot run raises ``NotImplementedError`` instead of falling back.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch

from .. import _ext

BACKENDS = ("auto", "triton", "cpu", "cuda", "torch")
# "auto" on CUDA tensors tries these in order, per op. To be set from the "Triton vs CUDA C++" table that
# `make gpu-check` writes (bench/results/gpu_kernels.md); no GPU has run it yet, so Triton (autotuned) goes first.
CUDA_ORDER = {"dwconv_gelu": ("triton", "cuda"), "linear_sra_pool": ("triton", "cuda")}
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_token_map(op: str, x, height: int, width: int) -> None:
    """The input contract shared by the ops on a map's tokens: ``x`` is a floating ``(B, N, C)`` tensor with
    ``N == height * width``. Raises ``ValueError`` / ``TypeError`` naming ``op``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"{op}: x must be (B, N, C) tokens, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be floating point, got {x.dtype}")
    if height < 1 or width < 1 or x.shape[1] != height * width:
        raise ValueError(f"{op}: {x.shape[1]} tokens are not a {height}×{width} map")


class FallbackWarning(UserWarning):
    """A fused op could not run on this input and the PyTorch reference ran instead."""


_warned: set = set()


def warn_once(key: str, message: str) -> None:
    if key in _warned or torch.compiler.is_compiling():
        return
    _warned.add(key)
    warnings.warn(message, FallbackWarning, stacklevel=4)


def reset_warnings() -> None:
    """Forget which fallbacks were reported (for tests)."""
    _warned.clear()


_status: Optional[tuple] = None


def triton_status() -> tuple:
    """(importable, interpreted, reason if not importable), computed once per process."""
    global _status
    if _status is None:
        try:
            import triton  # noqa: F401

            from .. import kernels

            _status = (True, kernels.INTERPRETED, "")
        except Exception as e:  # noqa: BLE001 - any import failure means no Triton backend
            _status = (False, False, f"triton is not importable ({type(e).__name__}: {e})")
    return _status


def _dtype_reason(t: torch.Tensor, what: str) -> Optional[str]:
    if t.dtype not in FUSED_DTYPES:
        return f"dtype {t.dtype} is not supported by the {what} kernels (float32, float16, bfloat16 are)"
    return None


def triton_unsupported_reason(tensors: Sequence[torch.Tensor], extra: Optional[str] = None) -> Optional[str]:
    """Why the Triton kernels cannot take these tensors, or None when they can."""
    ok, interpreted, why = triton_status()
    if not ok:
        return why
    t = tensors[0]
    if t.device.type == "cuda":
        if interpreted:
            return "the kernels were imported under TRITON_INTERPRET=1, which runs CPU tensors only"
    elif t.device.type == "cpu":
        if not interpreted:
            return "fused Triton kernels need CUDA tensors (on CPU they run only under TRITON_INTERPRET=1)"
    else:
        return f"device {t.device.type!r} is not supported by the Triton kernels"
    return _dtype_reason(t, "Triton") or extra


def native_unsupported_reason(op: Optional[str], backend: str, tensors: Sequence[torch.Tensor]) -> Optional[str]:
    """Why the extension's ``backend`` ("cpu" / "cuda") kernel of ``op`` cannot take these tensors."""
    if op is None:
        return f"no {backend} kernel exists for this op"
    t = tensors[0]
    if t.device.type != backend:
        return f"the {backend} kernel needs {backend} tensors, got {t.device.type}"
    if not _ext.available():
        return _ext.unavailable_reason()
    if not _ext.has_kernel(op, backend):
        return f"pvtv2_fast._C was built without {backend.upper()} kernels"
    return _dtype_reason(t, backend.upper())


def choose(op: str, backend: str, tensors: Sequence[torch.Tensor], triton_extra: Optional[str] = None,
           native_op: Optional[str] = None) -> str:
    """Resolve ``backend`` for one call of ``op``; ``native_op`` names its kernel in the extension, if any."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"

    def unsupported(candidate: str) -> Optional[str]:
        if candidate == "triton":
            return triton_unsupported_reason(tensors, triton_extra)
        return native_unsupported_reason(native_op, candidate, tensors)

    if backend != "auto":
        reason = unsupported(backend)
        if reason is not None:
            raise NotImplementedError(f"{op}: backend={backend!r} cannot run this input: {reason}")
        return backend
    device = tensors[0].device.type
    order = ["cpu", "triton"] if device == "cpu" else CUDA_ORDER.get(op, ("triton", "cuda"))
    reasons = []
    for candidate in order:
        reason = unsupported(candidate)
        if reason is None:
            return candidate
        reasons.append(reason)
    if device == "cpu" and op == "sra_attention" and _dtype_reason(tensors[0], "") is None:
        return "torch"  # PyTorch's SDPA is the CPU attention kernel: a choice, not a fallback
    warn_once(f"{op}:{reasons[0]}", f"pvtv2_fast.ops.{op}: using the PyTorch reference because {reasons[0]}")
    return "torch"


def register_recompute_autograd(op, reference, n_tensors: int, n_rest: int) -> None:
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
        return (*result, *([None] * n_rest))

    torch.library.register_autograd(op, backward, setup_context=setup_context)
