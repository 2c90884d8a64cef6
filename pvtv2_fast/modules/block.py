"""A PVTv2 transformer block: pre-norm SRA and pre-norm convolutional FFN, each with a residual and drop-path."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .. import ops
from ..ops.pvt_block import packs_in_pairs
from ..ops.registry import dispatch_generation
from .attention import SpatialReductionAttention
from .fast_path import derived_cache, inference_cache, registration_generation
from .ffn import ConvFeedForward
from .layer_norm import TokenLayerNorm


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when ``drop_prob == 0``)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
        return x * mask / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


# The most kinds of input (device, dtype, shape, ...) a block keeps a bound C++ block for (see _fused_block).
MAX_BOUND_KINDS = 64


class PvtV2Block(nn.Module):
    """``(B, N, C)`` tokens of an H×W map → same shape."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        sr_ratio: int,
        mlp_ratio: float,
        *,
        linear_attention: bool = False,
        qkv_bias: bool = True,
        hidden_act: str = "gelu",
        hidden_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        sr_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.layer_norm_1 = TokenLayerNorm(hidden_size, eps=eps)
        self.attention = SpatialReductionAttention(
            hidden_size,
            num_attention_heads,
            sr_ratio,
            linear_attention=linear_attention,
            qkv_bias=qkv_bias,
            attention_dropout=attention_dropout,
            proj_dropout=hidden_dropout,
            sr_eps=sr_eps,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.layer_norm_2 = TokenLayerNorm(hidden_size, eps=eps)
        self.mlp = ConvFeedForward(
            hidden_size, int(hidden_size * mlp_ratio), hidden_act, hidden_dropout, extra_relu=linear_attention
        )

    @property
    def drop_path_active(self) -> bool:
        return isinstance(self.drop_path, DropPath) and self.drop_path.drop_prob > 0.0

    def forward(
        self, hidden_states: torch.Tensor, height: int, width: int, output_attentions: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        block = None if output_attentions else self._fused_block(hidden_states, height, width)
        if block is not None:
            return block(hidden_states, height, width), None
        if self.attention.fast and not (self.training and (self.drop_path_active or self.attention.proj_drop.p > 0)):
            # Nothing between the projection and the residual add: the fast path adds it in the GEMM's epilogue.
            hidden_states, probs = self.attention(
                self.layer_norm_1(hidden_states), height, width, output_attentions, residual=hidden_states
            )
        else:
            attention, probs = self.attention(self.layer_norm_1(hidden_states), height, width, output_attentions)
            hidden_states = hidden_states + self.drop_path(attention)
        if self.mlp.fast and not (self.training and self.drop_path_active):
            # Likewise for the FFN: fc2's epilogue (oneDNN schedule) or an in-place add adds the residual.
            hidden_states = self.mlp(self.layer_norm_2(hidden_states), height, width, residual=hidden_states)
        else:
            hidden_states = hidden_states + self.drop_path(self.mlp(self.layer_norm_2(hidden_states), height, width))
        return hidden_states, probs

    def _fused_block(
        self, x: torch.Tensor, height: int, width: int
    ) -> Optional[Callable[[torch.Tensor, int, int], torch.Tensor]]:
        """This call as one ``ops.pvt_block`` (the C++ block: nothing between its steps in Python), bound to this
        block's weights (``ops.bind_pvt_block``), or None where it does not run as one: it does where the attention
        can run as one ``ops.sra_layer`` (fp32 CPU inference in fast mode, SRA; see
        ``SpatialReductionAttention.layer_runs``) and the FFN as ``conv_ffn`` (GELU, no active dropout, not the
        module's oneDNN schedule), with no drop-path in training.

        In eval mode the answer is cached (:func:`inference_cache`, per state of the weights) for each kind of input:
        device, dtype, shape, the modules' backends and what dispatch can choose. Deciding and binding on every
        call had cost ~0.2 ms per block in a model's forward (Python runs cold between C++ blocks): caching it
        measured 1.09x (b0), 1.025x (b2) end to end at 224²."""
        attn = self.attention
        if torch.is_grad_enabled() or not attn.fast:
            return None  # layer_runs' first rules: no fused layer, so no fused block
        if self.training or torch.compiler.is_compiling():
            # Compiled (inference mode): traced once per graph, the block one pvt_block node on weights that freezing
            # packs at compile time: 1.10-1.13x inductor's per-op graph at 224², 1.02-1.04x at 512² (b0 / b2).
            return self._bind_block(x, height, width)
        kind = (x.device, x.dtype, x.shape, attn.backend, self.mlp.backend, self.mlp.hidden_budget(x),
                dispatch_generation())  # fmt: skip
        bound = inference_cache(self, "pvt_block", self._block_params(), dict)
        if kind not in bound:
            if len(bound) >= MAX_BOUND_KINDS:  # e.g. a server fed ever new sizes: a bound block is cheap to redo
                bound.clear()
            bound[kind] = self._bind_block(x, height, width)
        return bound[kind]

    def _block_params(self) -> tuple:
        """Every parameter :meth:`_bind_block` binds (the cache key of the bound blocks), gathered again only when
        some module registered a parameter or submodule since (:func:`registration_generation`): gathering them
        through the submodules measured ~30 us per call, a sixth of the Python a block call had cost."""
        generation, caches = registration_generation(), derived_cache(self)
        cached = caches.get("block_params")
        if cached is not None and cached[0] == generation:
            return cached[1]
        attn, mlp = self.attention, self.mlp
        reduction = (getattr(attn, "spatial_reduction", None), getattr(attn, "layer_norm", None))
        modules = (self.layer_norm_1, attn.query, attn.key, attn.value, attn.proj, *reduction, self.layer_norm_2,
                   mlp.dense1, mlp.dwconv.dwconv, mlp.dense2)  # fmt: skip
        params = tuple(p for m in modules if m is not None for p in m._parameters.values())
        caches["block_params"] = (generation, params)
        return params

    def _bind_block(
        self, x: torch.Tensor, height: int, width: int
    ) -> Optional[Callable[[torch.Tensor, int, int], torch.Tensor]]:
        """:meth:`_fused_block` decided and bound afresh (the bound block takes each call's map size)."""
        attn, mlp = self.attention, self.mlp
        # bf16 with every GEMM in the C++ block (AVX512-BF16): its FFN is the block's own, not the module's oneDNN
        # schedule.
        pairs = packs_in_pairs(x, mlp.dense1.out_features)
        fused = (
            attn.layer_runs(x, False, x, block=True)
            and mlp.fast
            and mlp.op_backend == attn.op_backend
            and mlp.hidden_act == "gelu"
            and not (self.training and (self.drop_path_active or mlp.dropout.p > 0))
            and (pairs or not mlp._onednn_schedule(x))
            and ops.OPS["pvt_block"].why_not("cpu", (x, None, None, (), None, None, ())) is None
        )
        if not fused:
            return None
        ln1, ln2, conv = self.layer_norm_1, self.layer_norm_2, mlp.dwconv.dwconv
        ffn = [mlp.dense1.weight, mlp.dense1.bias, conv.weight, conv.bias, mlp.dense2.weight, mlp.dense2.bias]
        if pairs:  # packed in pairs once per bound block (no per-op path shares them)
            attention, sr_eps = attn.layer_tensors(), attn.reduction_eps
            packed = ops.pack_block_weights(attention, ffn, pairs=True)
        else:
            attention, layer_packed, sr_eps = attn.layer_inputs()
            packed = [*layer_packed, *mlp._packed_weights(x)]
        return ops.bind_pvt_block(
            x,
            height,
            width,
            attn.num_attention_heads,
            (ln1.weight, ln1.bias),
            attention,
            (ln2.weight, ln2.bias),
            ffn,
            eps=(ln1.eps, ln2.eps, sr_eps),
            relu_input=mlp.extra_relu,
            packed=packed,
            backend=attn.op_backend,
        )
