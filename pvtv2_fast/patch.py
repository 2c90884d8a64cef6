"""Patch existing transformers / timm PVTv2 and Segformer models in place (Liger-Kernel style).

``patch(model)`` routes the attention and the FFN of every block of a transformers ``PvtV2*`` / ``Segformer*``
model or a timm ``pvt_v2_*`` model through :mod:`pvtv2_fast.ops`, by giving each such submodule an instance
``forward`` (the bound fused forward below). Nothing else changes: the model's class, parameters, buffers and
``state_dict`` stay what they were, so ``transformers.pipeline``, ``Trainer``, ``save_pretrained`` and timm's
helpers keep working. ``unpatch(model)`` removes the instance ``forward`` again.

A patched submodule falls back to its own (original) forward whenever the fused ops would not compute the same
thing: attention maps requested, attention dropout active in training, an attention mask (Segformer), an FFN
activation other than exact GELU, FFN dropout active in training.
"""

from __future__ import annotations

import types
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import ops

__all__ = ["patch", "unpatch", "is_patched"]

# Instance attributes a patched submodule carries (removed by unpatch).
_ORIGINAL = "_pvtv2_fast_original_forward"
_BACKEND = "_pvtv2_fast_backend"


# ---------------------------------------------------------------------------------------------- shared pieces
def _dropout_active(module: nn.Module, dropout: Optional[nn.Module]) -> bool:
    return module.training and isinstance(dropout, nn.Dropout) and dropout.p > 0


def _original(module: nn.Module) -> Callable:
    """The forward the module had before patching: its class's, bound to it."""
    return types.MethodType(type(module).forward, module)


def _is_exact_gelu(act: nn.Module) -> bool:
    """Whether ``act`` computes exact (erf) GELU, the only activation the fused FFN implements. Probed on values
    across GELU's range rather than by class name: transformers' and timm's GELU classes differ by version."""
    probe = torch.linspace(-6.0, 6.0, 97, dtype=torch.float64)
    try:
        with torch.no_grad():
            return torch.equal(act(probe), F.gelu(probe))
    except Exception:  # an activation that cannot take a float64 CPU tensor is not one we can replace
        return False


def _reduce(
    x: torch.Tensor,
    height: int,
    width: int,
    *,
    pool: bool,
    conv: Optional[nn.Conv2d],
    norm: Optional[nn.Module],
    act: Optional[nn.Module],
    backend: str,
) -> torch.Tensor:
    """Keys/values source ``(B, M, C)`` from ``(B, N, C)`` tokens: Linear SRA (7×7 adaptive pool as a fused op,
    1×1 conv as a linear, LayerNorm, GELU), SRA (strided conv + LayerNorm) or the tokens themselves."""
    b, _, c = x.shape
    if pool:
        pooled = ops.linear_sra_pool(x, height, width, backend=backend)
        reduced = F.linear(pooled, conv.weight.reshape(conv.out_channels, -1), conv.bias)
        return act(norm(reduced))
    if conv is not None:
        grid = x.transpose(1, 2).reshape(b, c, height, width)
        return norm(conv(grid).flatten(2).transpose(1, 2))
    return x


def _attention_backend(module: nn.Module) -> str:
    """No C++ / CUDA C++ attention kernel exists: "cpu" means PyTorch's SDPA, "cuda" the Triton kernel (as
    ``set_fast`` maps them for this library's own models)."""
    backend = getattr(module, _BACKEND)
    return {"cpu": "torch", "cuda": "auto"}.get(backend, backend)


def _ffn(
    module: nn.Module,
    x: torch.Tensor,
    height: int,
    width: int,
    fc1: nn.Linear,
    dwconv: nn.Conv2d,
    fc2: nn.Linear,
    relu: bool,
) -> torch.Tensor:
    return ops.conv_ffn(
        x,
        fc1.weight,
        fc1.bias,
        dwconv.weight,
        dwconv.bias,
        fc2.weight,
        fc2.bias,
        height,
        width,
        relu_input=relu,
        backend=getattr(module, _BACKEND),
    )


# ---------------------------------------------------------------------------------------------- transformers PvtV2
def _hf_pvt_attention_forward(
    self, hidden_states: torch.Tensor, height: int, width: int, output_attentions: bool = False
):
    if output_attentions or _dropout_active(self, self.attn_drop):
        return _original(self)(hidden_states, height, width, output_attentions)
    backend = getattr(self, _BACKEND)
    query = self.query(hidden_states)
    reduces = self.linear_attention or self.spatial_reduction_ratio > 1
    conv = self.spatial_reduction if reduces else None
    reduced = _reduce(
        hidden_states,
        height,
        width,
        pool=self.linear_attention,
        conv=conv,
        norm=getattr(self, "layer_norm", None),
        act=getattr(self, "act", None),
        backend=backend,
    )
    context = ops.sra_attention(
        query, self.key(reduced), self.value(reduced), self.num_attention_heads, backend=_attention_backend(self)
    )
    return (self.proj_drop(self.proj(context)),)


def _hf_pvt_ffn_forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if not self._pvtv2_fast_gelu or _dropout_active(self, self.dropout):
        return _original(self)(hidden_states, height, width)
    return _ffn(
        self, hidden_states, height, width, self.dense1, self.dwconv.dwconv, self.dense2, isinstance(self.relu, nn.ReLU)
    )


# ---------------------------------------------------------------------------------------------- transformers Segformer
def _segformer_attentions_requested() -> bool:
    """transformers ≥ 5 collects Segformer's attention maps with forward hooks while ``output_attentions`` is on;
    the request is only visible in its output collector. Unknown layout: assume requested (original forward)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return True
    collected = _active_collector.get()
    return collected is not None and "attentions" in collected


def _segformer_attention_forward(
    self, hidden_states: torch.Tensor, height: int, width: int, attention_mask: Optional[torch.Tensor] = None, **kwargs
):
    dropout = self.attention_dropout if self.training else 0.0
    if (
        attention_mask is not None
        or dropout > 0
        or kwargs.get("output_attentions")
        or _segformer_attentions_requested()
    ):
        return _original(self)(hidden_states, height, width, attention_mask, **kwargs)
    backend = getattr(self, _BACKEND)
    reduction = getattr(self, "sequence_reduction", None) if self.sequence_reduction_ratio > 1 else None
    reduced = (
        hidden_states
        if reduction is None
        else _reduce(
            hidden_states,
            height,
            width,
            pool=False,
            conv=reduction.sequence_reduction,
            norm=reduction.layer_norm,
            act=None,
            backend=backend,
        )
    )
    context = ops.sra_attention(
        self.q_proj(hidden_states),
        self.k_proj(reduced),
        self.v_proj(reduced),
        self.num_attention_heads,
        scale=self.scaling,
        backend=_attention_backend(self),
    )
    return self.o_proj(context), None


def _segformer_ffn_forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if not self._pvtv2_fast_gelu or _dropout_active(self, self.dropout):
        return _original(self)(hidden_states, height, width)
    return _ffn(self, hidden_states, height, width, self.fc1, self.dwconv.dwconv, self.fc2, False)


# ---------------------------------------------------------------------------------------------- timm pvt_v2
def _timm_attention_forward(self, x: torch.Tensor, feat_size):
    if _dropout_active(self, self.attn_drop):
        return _original(self)(x, feat_size)
    height, width = feat_size
    backend = getattr(self, _BACKEND)
    reduced = _reduce(
        x, height, width, pool=self.pool is not None, conv=self.sr, norm=self.norm, act=self.act, backend=backend
    )
    # timm packs keys and values in one (B, M, 2C) projection: K and V are strided views of it, no copy.
    kv = self.kv(reduced)
    c = self.dim
    context = ops.sra_attention(
        self.q(x), kv[..., :c], kv[..., c:], self.num_heads, scale=self.scale, backend=_attention_backend(self)
    )
    return self.proj_drop(self.proj(context))


def _timm_ffn_forward(self, x: torch.Tensor, feat_size):
    if not self._pvtv2_fast_gelu or _dropout_active(self, self.drop):
        return _original(self)(x, feat_size)
    return _ffn(self, x, feat_size[0], feat_size[1], self.fc1, self.dwconv, self.fc2, isinstance(self.relu, nn.ReLU))


# (module path, class name) → (fused forward, activation attribute for the FFN or None for attention)
_TARGETS: Dict[Tuple[str, str], Tuple[Callable, Optional[str]]] = {
    ("transformers.models.pvt_v2.modeling_pvt_v2", "PvtV2SelfAttention"): (_hf_pvt_attention_forward, None),
    ("transformers.models.pvt_v2.modeling_pvt_v2", "PvtV2ConvFeedForwardNetwork"): (
        _hf_pvt_ffn_forward,
        "intermediate_act_fn",
    ),
    ("transformers.models.segformer.modeling_segformer", "SegformerAttention"): (_segformer_attention_forward, None),
    ("transformers.models.segformer.modeling_segformer", "SegformerMixMLP"): (_segformer_ffn_forward, "activation_fn"),
    ("timm.models.pvt_v2", "Attention"): (_timm_attention_forward, None),
    ("timm.models.pvt_v2", "MlpWithDepthwiseConv"): (_timm_ffn_forward, "act"),
}


def _target(module: nn.Module):
    cls = type(module)
    return _TARGETS.get((cls.__module__, cls.__name__))


def patch(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Route the attention and FFN of every block of ``model`` through :mod:`pvtv2_fast.ops`, in place.

    ``model``: a transformers ``PvtV2Model`` / ``PvtV2ForImageClassification`` / ``PvtV2Backbone``, a
    ``SegformerModel`` / ``SegformerForImageClassification`` / ``SegformerForSemanticSegmentation``, a timm
    ``pvt_v2_*`` model, or any module containing them. ``backend`` as for the ops (``"auto"``: C++ kernels on CPU,
    Triton or CUDA C++ by op on CUDA; attention stays PyTorch's SDPA where that measured faster). Patching twice
    re-patches with the new backend. Returns ``model``. Raises ``TypeError`` if ``model`` contains no PVTv2 /
    Segformer block.
    """
    from .ops import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    count = 0
    for module in model.modules():
        target = _target(module)
        if target is None:
            continue
        fused, act_name = target
        if act_name is not None:
            module._pvtv2_fast_gelu = _is_exact_gelu(getattr(module, act_name))
        setattr(module, _BACKEND, backend)
        if not hasattr(module, _ORIGINAL):
            module.__dict__[_ORIGINAL] = module.__dict__.get("forward")  # an instance forward someone else set
        module.forward = types.MethodType(fused, module)
        count += 1
    if count == 0:
        raise TypeError(
            f"patch: {type(model).__name__} contains no transformers PvtV2 / Segformer or timm pvt_v2 attention or "
            f"FFN module; for this library's own models use model.set_fast(True)"
        )
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: every patched submodule gets its previous forward back. Returns ``model``."""
    for module in model.modules():
        if not hasattr(module, _ORIGINAL):
            continue
        previous = module.__dict__.pop(_ORIGINAL)
        del module.forward
        if previous is not None:
            module.forward = previous
        for name in (_BACKEND, "_pvtv2_fast_gelu"):
            module.__dict__.pop(name, None)
    return model


def is_patched(model: nn.Module) -> bool:
    return any(hasattr(m, _ORIGINAL) for m in model.modules())
