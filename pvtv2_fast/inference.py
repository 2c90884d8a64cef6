"""Inference mode: a fast=True model under ``torch.compile`` with inductor *freezing*, for users who can pay a
warm-up.

Freezing turns the parameters into constants of the compiled graph, so inductor prepacks the GEMM weights for
oneDNN / MKL, fuses bias and activation post-ops into them, folds the packed key/value weights of the attention
(``SpatialReductionAttention._packed_kv_weights``) once, and removes the per-op Python of eager mode. The fused
ops (``pvtv2_fast.ops``) stay custom ops inside the graph (they have fake implementations for tracing); for fp32 on
CPU each SRA block is one ``pvt_block`` node, its packed weights folded at compile time (1.10-1.13x the graph of
per-op nodes at 224², 1.02-1.04x at 512², b0 / b2).

Costs and limits (measured on a 2-core AVX-512 machine, b0):

* **Warm-up**: the first call at each input shape compiles, about 1–2 minutes on 2 cores (more for larger
  presets); later calls at that shape run the compiled graph.
* **Fixed sizes by default** (``dynamic=False``): each new ``(B, C, H, W)`` compiles its own graph (inductor keeps
  up to ``torch._dynamo.config.cache_size_limit`` of them, then falls back to eager with a warning). Pass
  ``dynamic=True`` for one graph over symbolic sizes: one compile for all sizes, somewhat slower per call.
* **Weights are frozen**: the compiled graph keeps the values it saw at its first call. After changing weights
  (``load_state_dict``, fine-tuning), call :func:`optimize_for_inference` again.
* **No gradients**: calls run under ``torch.no_grad()``; use the eager model to train.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .ops.block_cache import cpu_block_cache_on

__all__ = ["InferenceModel", "optimize_for_inference"]


class InferenceModel:
    """A compiled, frozen view of a PvtV2 model: call it as the model (same arguments, same outputs).

    ``model`` is the eager model it wraps (in fast mode, eval); ``compiled`` the ``torch.compile`` wrapper.
    """

    def __init__(self, model: nn.Module, dynamic: bool) -> None:
        self.model = model
        self.dynamic = dynamic
        self.compiled = torch.compile(model, dynamic=dynamic)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch._inductor.config as inductor_config

        if self.model.training:
            raise RuntimeError(
                "optimize_for_inference: the wrapped model was switched to training mode; the "
                "compiled graph is for eval only (call .eval(), or train the eager model)"
            )
        # Freezing applies to graphs compiled without autograd; it is read when a shape first compiles.
        with torch.no_grad(), inductor_config.patch(freezing=True), self._cpu_cache_scope():
            return self.compiled(*args, **kwargs)

    def _cpu_cache_scope(self):
        """The CPU block cache around a CPU model's graph (``pvtv2_fast.ops.block_cache``), as eager fast mode has
        around its encoder: the compiled graph's large buffers then reuse the previous call's pages instead of
        faulting fresh ones in (measured at 1024², interleaved: b2 62,000 faults and 226 ms of system time per call
        without it, 1,300 and 11 ms with; 1.03× (b2) and 1.06× (b0) the speed; level at 224² and 512²)."""
        return cpu_block_cache_on(next(self.model.parameters()).device)

    def __repr__(self) -> str:
        return f"InferenceModel({type(self.model).__name__}, dynamic={self.dynamic})"


def optimize_for_inference(model: nn.Module, *, dynamic: bool = False, backend: str = "auto") -> InferenceModel:
    """Return ``model`` (any ``PvtV2PreTrainedModel``) switched to eval and fast mode (``backend`` as in
    :meth:`set_fast`) and compiled with inductor freezing; see this module's docstring for the warm-up cost and the
    limits. Outputs match the reference within fp32 rounding (1e-5)."""
    if not hasattr(model, "set_fast"):
        raise TypeError(f"optimize_for_inference takes a pvtv2_fast model, got {type(model).__name__}")
    if not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be a bool, got {dynamic!r}")
    model.eval().set_fast(True, backend)
    return InferenceModel(model, dynamic)
