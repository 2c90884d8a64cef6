"""Spatial-Reduction Attention (SRA) and Linear SRA, PVTv2's attention over a reduced key/value set."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .. import ops
from ..ops.linear_sra_pool import LINEAR_SRA_POOL_SIZE
from ..ops.pvt_block import cpu_block_slower
from ..ops.sr_conv import cpu_kernel_pays
from ..ops.sra_layer import cpu_layer_slower
from .fast_path import FastPath, token_map
from .layer_norm import TokenLayerNorm


class SpatialReductionAttention(FastPath, nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced copy of the tokens.

    * ``sr_ratio > 1``: keys/values from a ``sr_ratio``×``sr_ratio`` strided conv of the H×W map + LayerNorm
      (M = ⌊H/sr⌋·⌊W/sr⌋ keys).
    * ``linear_attention``: adaptive average pool to 7×7, 1×1 conv, LayerNorm, GELU (M = 49 keys, so the cost is
      linear in the number of pixels).
    * ``sr_ratio == 1``: plain self-attention (M = N).

    Input ``hidden_states: (B, N, C)`` tokens of an H×W map; output ``(B, N, C)``. The attention and the Linear-SRA
    pooling are :mod:`pvtv2_fast.ops` calls on ``op_backend`` (the reference is their "torch" backend).
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        sr_ratio: int,
        linear_attention: bool = False,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        sr_eps: float = 1e-6,
        pool_size: int = LINEAR_SRA_POOL_SIZE,
    ) -> None:
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of the {num_attention_heads} heads")
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = hidden_size // num_attention_heads
        self.spatial_reduction_ratio = sr_ratio
        self.linear_attention = linear_attention
        self.pool_size = pool_size

        self.query = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_drop = nn.Dropout(proj_dropout)
        if linear_attention:
            self.pool = nn.AdaptiveAvgPool2d(pool_size)  # kept for transformers' module tree; ops.linear_sra_pool runs
            self.spatial_reduction = nn.Conv2d(hidden_size, hidden_size, kernel_size=1, stride=1)
            self.layer_norm = TokenLayerNorm(hidden_size, eps=sr_eps)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.spatial_reduction = nn.Conv2d(hidden_size, hidden_size, kernel_size=sr_ratio, stride=sr_ratio)
            self.layer_norm = TokenLayerNorm(hidden_size, eps=sr_eps)

    def reduce(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The key/value source: ``(B, N, C)`` tokens of an H×W map → ``(B, M, C)`` reduced tokens."""
        if self.linear_attention:
            c = self.hidden_size
            pooled = ops.linear_sra_pool(hidden_states, height, width, self.pool_size, backend=self.op_backend)
            # The 1×1 conv on pooled tokens is a linear layer on them: no NCHW round trip.
            conv = self.spatial_reduction
            reduced = self._linear(
                "sr_linear", pooled, (conv.weight, conv.bias), lambda: (conv.weight.view(c, c), conv.bias)
            )
            return self.act(self.layer_norm(reduced))
        if self.spatial_reduction_ratio > 1:
            if self._cpu_sr_conv(hidden_states, height, width):
                conv = self.spatial_reduction
                packed = self._inference_cache("sr_conv_pack", (conv.weight,), lambda: ops.pack_weight(conv.weight))
                reduced = ops.sr_conv(hidden_states, conv.weight, conv.bias, height, width, packed, self.op_backend)
                return self.layer_norm(reduced)
            grid = token_map(hidden_states, height, width, channels_last=self.fast)
            reduced = self._conv2d("sr", grid, self.spatial_reduction) if self.fast else self.spatial_reduction(grid)
            return self.layer_norm(reduced.flatten(2).transpose(1, 2))
        return hidden_states

    def _cpu_sr_conv(self, x: torch.Tensor, height: int, width: int) -> bool:
        """Whether the spatial reduction runs the C++ ``ops.sr_conv`` rather than oneDNN's prepacked convolution
        (:meth:`_conv2d`): CPU tensors in fast mode, where "auto" measured it faster (``ops.sr_conv.cpu_kernel_pays``:
        fp32, small calls such as 224²'s stages; README, "CPU spatial-reduction conv"), or always with the "cpu"
        backend. Other devices keep their convolution."""
        if not (self.fast and x.device.type == "cpu" and self.op_backend in ("auto", "cpu")):
            return False
        return self.op_backend == "cpu" or cpu_kernel_pays(x, self.spatial_reduction.weight, height, width)

    def key_value(self, reduced: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B, M, C)`` → keys and values ``(B, M, C)``. Fast mode projects both with one packed GEMM (the
        attention kernels read K and V as strided views of its ``(B, M, 2C)`` result); the reference uses two, as
        transformers does (the sums then round alike)."""
        if not self.fast:
            return self.key(reduced), self.value(reduced)
        params = (self.key.weight, self.value.weight, self.key.bias, self.value.bias)
        kv = self._linear("kv", reduced, params, self._packed_kv_weights)
        return kv[..., : self.hidden_size], kv[..., self.hidden_size :]

    def _packed_kv_weights(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``cat([key, value])`` weights and biases, cached for inference (see :meth:`FastPath._inference_cache`)."""
        params = (self.key.weight, self.value.weight, self.key.bias, self.value.bias)
        return self._inference_cache("kv_cat", params, self._cat_kv)

    def _cat_kv(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        bias = None if self.key.bias is None else torch.cat([self.key.bias, self.value.bias])
        return torch.cat([self.key.weight, self.value.weight]), bias

    def forward(
        self,
        hidden_states: torch.Tensor,
        height: int,
        width: int,
        output_attentions: bool = False,
        residual: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Returns ``(context (B, N, C), attention_probs (B, heads, N, M) or None)``; with ``residual`` (B, N, C),
        ``residual + context`` instead, added in the output projection's epilogue where the fast path can (the
        block passes it only when nothing sits between the projection and the residual add)."""
        if self._fused_layer(hidden_states, output_attentions, residual):
            return self._sra_layer(hidden_states, height, width, residual), None
        query = self._projection("query", self.query, hidden_states)
        key, value = self.key_value(self.reduce(hidden_states, height, width))
        dropout_p = self.attn_drop.p if self.training else 0.0
        probs = None
        if output_attentions or dropout_p > 0.0:
            # The probabilities are wanted, or dropped out: materialise them (what transformers does).
            context, probs = self._explicit_attention(query, key, value)
        else:
            context = ops.sra_attention(query, key, value, self.num_attention_heads, backend=self.op_backend)
        if residual is not None:
            return self._projection("proj", self.proj, context, residual), probs
        return self.proj_drop(self._projection("proj", self.proj, context)), probs

    def _fused_layer(self, x: torch.Tensor, output_attentions: bool, residual: Optional[torch.Tensor]) -> bool:
        """Whether this call runs as one ``ops.sra_layer`` (the C++ layer: no Python or dispatch between its steps):
        in eager mode where :meth:`layer_runs`. Under ``torch.compile`` the graph keeps the per-op path (inductor's
        prepacked linears around the attention op), which measured level with the layer there (0.94-1.05x); the
        block module takes the whole block into the graph instead (``PvtV2Block._fused_block``)."""
        return not torch.compiler.is_compiling() and self.layer_runs(x, output_attentions, residual)

    def layer_runs(
        self, x: torch.Tensor, output_attentions: bool, residual: Optional[torch.Tensor], block: bool = False
    ) -> bool:
        """Whether ``ops.sra_layer`` can take this call and "auto" would: inference on CPU tensors in fast mode with
        the C++ backends, SRA (not Linear SRA), no probabilities wanted, no active dropout, and where "auto" takes it
        (``cpu_layer_slower``: fp32, heads up to 64 wide), or always with "cpu". ``block``: the same for the C++
        block around this layer (``ops.pvt_block``, whose "auto" also takes bf16 where ``cpu_block_slower`` says).
        Traceable (reads only the input's device, dtype and shape)."""
        if (
            torch.is_grad_enabled()
            or not self.fast
            or x.device.type != "cpu"
            or self.op_backend not in ("auto", "cpu")
            or self.linear_attention
            or output_attentions
            or (self.training and (self.attn_drop.p > 0 or (residual is None and self.proj_drop.p > 0)))
        ):
            return False
        # Only where the C++ layer runs here (built, not switched off): otherwise the per-op path keeps whatever fused
        # kernels remain (e.g. Triton under its interpreter) instead of the op's reference fallback.
        runs = ops.OPS["sra_layer"].why_not("cpu", (x,)) is None
        slower = cpu_block_slower if block else cpu_layer_slower
        return runs and (self.op_backend == "cpu" or not slower(x, self.num_attention_heads))

    def layer_tensors(self) -> list:
        """The layer's tensors in ``ops.sra_layer``'s order (``ops.pvt_block.ATTENTION``: q, kv (concatenated),
        proj, then the reduction's conv and LayerNorm, None without one)."""
        q, proj = self.query, self.proj
        sr = self.spatial_reduction if self.spatial_reduction_ratio > 1 else None
        kv_weight, kv_bias = self._packed_kv_weights()
        tensors = [q.weight, q.bias, kv_weight, kv_bias, proj.weight, proj.bias, sr.weight if sr is not None else None]
        return tensors + ([sr.bias, self.layer_norm.weight, self.layer_norm.bias] if sr is not None else [None] * 3)

    @property
    def reduction_eps(self) -> float:
        """The reduction LayerNorm's eps (``ops.sra_layer``'s ``eps``; unused without a reduction)."""
        return self.layer_norm.eps if self.spatial_reduction_ratio > 1 else 1e-6

    def layer_inputs(self) -> Tuple[list, list, float]:
        """:meth:`layer_tensors`, their packed weights (``ops.pack_layer_weights``; cached, see
        :meth:`FastPath._inference_cache`) and the reduction norm's eps."""
        q, k, v, proj = self.query, self.key, self.value, self.proj
        sr = self.spatial_reduction if self.spatial_reduction_ratio > 1 else None
        norm = self.layer_norm if sr is not None else None
        params = (q.weight, q.bias, k.weight, k.bias, v.weight, v.bias, proj.weight, proj.bias)
        params += (sr.weight, sr.bias, norm.weight, norm.bias) if sr is not None else ()

        def make():
            tensors = self.layer_tensors()
            return tensors, ops.pack_layer_weights(tensors[0], tensors[2], tensors[4], tensors[6])

        # One entry keyed on every parameter (a per-call cost of a few microseconds per parameter).
        tensors, packed = self._inference_cache("sra_layer_pack", params, make)
        return tensors, packed, self.reduction_eps

    def _sra_layer(self, x: torch.Tensor, height: int, width: int, residual: Optional[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` as one ``ops.sra_layer`` call, on weights packed once and cached."""
        (qw, qb, kvw, kvb, pw, pb, srw, srb, nw, nb), packed, eps = self.layer_inputs()
        return ops.sra_layer(
            x, qw, qb, kvw, kvb, pw, pb, height, width, self.num_attention_heads, sr_weight=srw, sr_bias=srb,
            norm_weight=nw, norm_bias=nb, eps=eps, residual=residual, packed=packed, backend=self.op_backend,
        )  # fmt: skip

    def _projection(
        self, slot: str, linear: nn.Linear, x: torch.Tensor, residual: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``linear(x)`` (``+ residual``); in fast mode through :meth:`FastPath._linear` (prepacked weights and the
        residual in the epilogue on CPU)."""
        if not self.fast:
            return linear(x) if residual is None else residual + linear(x)
        return self._linear(slot, x, (linear.weight, linear.bias), lambda: (linear.weight, linear.bias), residual)

    def _explicit_attention(self, query, key, value) -> Tuple[torch.Tensor, torch.Tensor]:
        b, n, c = query.shape
        heads, d = self.num_attention_heads, self.attention_head_size
        q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (query, key, value))
        probs = self.attn_drop(((q @ k.transpose(-1, -2)) / math.sqrt(d)).softmax(dim=-1))
        return (probs @ v).transpose(1, 2).reshape(b, n, c), probs
