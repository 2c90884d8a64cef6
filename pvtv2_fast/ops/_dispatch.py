"""Backend choice shared by the ops: ``"auto" | "triton" | "torch"``.

* ``"torch"``: the reference composition of PyTorch ops (always available, differentiable, compiles natively).
* ``"triton"``: the fused Triton kernel, run as a ``torch.library`` custom op. Compiled for CUDA tensors; on CPU
  tensors only when the kernels were imported under the Triton interpreter (``TRITON_INTERPRET=1``).
* ``"auto"``: Triton where it supports the input, else the reference with a one-time warning saying why.

An explicit ``backend="triton"`` that cannot run raises ``NotImplementedError`` instead of falling back.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch

BACKENDS = ("auto", "triton", "torch")
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    if t.dtype not in FUSED_DTYPES:
        return f"dtype {t.dtype} is not supported by the Triton kernels (float32, float16, bfloat16 are)"
    return extra


def choose(op: str, backend: str, tensors: Sequence[torch.Tensor], extra_reason: Optional[str] = None) -> str:
    """Resolve ``backend`` for one call of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    reason = triton_unsupported_reason(tensors, extra_reason)
    if reason is None:
        return "triton"
    if backend == "triton":
        raise NotImplementedError(f"{op}: backend='triton' cannot run this input: {reason}")
    warn_once(f"{op}:{reason}", f"pvtv2_fast.ops.{op}: using the PyTorch reference because {reason}")
    return "torch"


def register_recompute_autograd(op, reference: Callable, n_tensors: int, n_rest: int) -> None:
    """Give a fused forward ``op`` a backward that recomputes the reference composition under autograd (the fused
    kernels are forward-only; training through them stays exact). The first ``n_tensors`` inputs are tensors."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.rest = inputs[n_tensors:]

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() if t is not None else None for t in saved]
            out = reference(*leaves, *ctx.rest)
            wanted = [t for t, need in zip(leaves, ctx.needs_input_grad[:n_tensors]) if need and t is not None]
            grads = iter(torch.autograd.grad(out, wanted, grad) if wanted else ())
        result = [next(grads) if need and t is not None else None
                  for t, need in zip(leaves, ctx.needs_input_grad[:n_tensors])]
        return (*result, *([None] * n_rest))

    op.register_autograd(backward, setup_context=setup_context)
