"""PVTv2's convolutional feed-forward network: fc1 → (ReLU) → depthwise 3×3 conv → GELU → fc2."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from .. import ops
from .._ext import cpu_has_amx
from .activations import get_activation
from .fast_path import FastPath, onednn_takes, token_map

# Where inference on CPU runs the FFN as oneDNN fc1 → dwconv_gelu → oneDNN fc2 (+ residual) instead of conv_ffn,
# measured through this module on b0/b2 stage shapes (2 threads, AVX-512 + AMX, interleaved; `python -m
# bench.ffn_schedule --module [--dtype bf16]`, bench/results/cpu_ffn_onednn[_bf16].md).
# bf16 with AMX: 1.04-1.71x conv_ffn's speed up to 8 MB of widened state on b2's shapes (MKL's bf16 GEMM in conv_ffn
# repacks the weights every call; oneDNN's are packed once and its AMX kernels add bias and residual in the
# epilogue); 0.61-0.82x at 12-32 MB. Misses: 0.81-0.88x at b0's last stage (C = 256, 8²-16²).
# bf16 without AMX (AVX512-BF16: an AMD EPYC, 2 threads, interleaved in one process): MKL's bf16 GEMM ran at half
# oneDNN's rate (e.g. b2's 14² FFN 2.0 ms in conv_ffn, 0.93 ms as oneDNN fc1 + dwconv_gelu + fc2), and oneDNN up to
# 64 MB (the memory-lean default's cap) ran whole models 1.07x (b2 512², b0 1024²) and 1.25x (b2 1024²) faster than
# the 8 MB rule.
ONEDNN_FFN_MAX_HIDDEN_BYTES_BF16_AMX = 8 << 20
ONEDNN_FFN_MAX_HIDDEN_BYTES_BF16_NO_AMX = 64 << 20
ONEDNN_FFN_MAX_HIDDEN_BYTES_BF16 = (
    ONEDNN_FFN_MAX_HIDDEN_BYTES_BF16_AMX if cpu_has_amx() else ONEDNN_FFN_MAX_HIDDEN_BYTES_BF16_NO_AMX
)
# fp32: only small maps under large weights (the C = 512 last stage: 1.03-1.34x up to 2 MB); elsewhere conv_ffn's
# streaming won (0.46-0.96x) or tied. Not over at most CONV_FFN_PACKED_MAX_TOKENS tokens, where conv_ffn's whole-map
# GEMMs run on the packed weights (csrc/cpu/conv_ffn.cpp, kPackedWholeMaxTokens) and measured 1.11-1.12x oneDNN's
# (b2's 7² stage at 224²; level at 256 tokens).
ONEDNN_FFN_MIN_WEIGHT_BYTES_FP32 = 4 << 20
ONEDNN_FFN_MAX_HIDDEN_BYTES_FP32 = 4 << 20
CONV_FFN_PACKED_MAX_TOKENS = 196


class DepthwiseConv(nn.Module):
    """3×3 depthwise conv with zero padding on ``(B, N, C)`` tokens of an H×W map; it replaces position embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = token_map(hidden_states, height, width, channels_last=False)
        return self.dwconv(grid).flatten(2).transpose(1, 2)


# set_memory_lean's default budgets for the widened hidden state, by device type. On CUDA each band costs launches
# and copies that outweigh the bytes it saves: measured on an H200 (bench/results/gpu/), b2 at 1024², batch 8, bf16,
# 64 MB bands ran the backbone in 38.8 ms and the whole 512 MB map in 22.6 ms, at 0.68× the reference's peak memory.
DEFAULT_HIDDEN_BUDGETS: Dict[str, int] = {"cpu": 64 << 20, "cuda": 1 << 30}


class ConvFeedForward(FastPath, nn.Module):
    """``(B, N, C)`` → ``(B, N, C)``. The linear-attention variant (PVTv2-Li) adds a ReLU after fc1.

    The GELU FFN (every preset) is one :func:`pvtv2_fast.ops.conv_ffn` call on ``op_backend``: the reference is its
    "torch" backend; on CPU the fused one is a kernel that streams bands of rows through the cache (the widened
    hidden state is never materialised). CPU inference where oneDNN's prepacked GEMMs measured faster (bf16 up to
    8 MB of widened state, 64 MB on CPUs without AMX; fp32 small maps under large weights) runs fc1 →
    ``dwconv_gelu`` → fc2 on them instead. Other activations, and active dropout in training, run this module's own
    layers. ``max_hidden_bytes`` (memory-lean mode) bounds the widened state of the composed backends by bands.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        hidden_act: str = "gelu",
        dropout: float = 0.0,
        extra_relu: bool = False,
    ) -> None:
        super().__init__()
        self.dense1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DepthwiseConv(hidden_features)
        self.hidden_act = hidden_act
        self.intermediate_act_fn = get_activation(hidden_act)
        self.dense2 = nn.Linear(hidden_features, in_features)
        self.dropout = nn.Dropout(dropout)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        self.extra_relu = extra_relu
        # See PvtV2PreTrainedModel.set_memory_lean; None: the whole map at once; a dict: by device type.
        self.max_hidden_bytes: Union[None, int, Dict[str, int]] = None

    def forward(
        self, hidden_states: torch.Tensor, height: int, width: int, residual: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``(B, H·W, C)`` → ``(B, H·W, C)``; with ``residual`` (B, H·W, C), ``residual + ffn(x)`` (added in fc2's
        epilogue where the fast path can; the block passes it only when nothing sits between)."""
        if self.hidden_act == "gelu" and not (self.training and self.dropout.p > 0):
            if self._onednn_schedule(hidden_states):
                return self._onednn_forward(hidden_states, height, width, residual)
            conv = self.dwconv.dwconv
            fc1_packed, fc2_packed = self._packed_weights(hidden_states)
            out = ops.conv_ffn(
                hidden_states,
                self.dense1.weight,
                self.dense1.bias,
                conv.weight,
                conv.bias,
                self.dense2.weight,
                self.dense2.bias,
                height,
                width,
                relu_input=self.extra_relu,
                backend=self.op_backend,
                max_hidden_bytes=self.hidden_budget(hidden_states),
                fc1_packed=fc1_packed,
                fc2_packed=fc2_packed,
            )
        else:
            hidden_states = self.relu(self.dense1(hidden_states))
            hidden_states = self.intermediate_act_fn(self.dwconv(hidden_states, height, width))
            out = self.dropout(self.dense2(self.dropout(hidden_states)))
        if residual is None:
            return out
        # In place into the fresh output for inference (fp addition commutes: the bits of residual + out).
        return residual + out if torch.is_grad_enabled() else out.add_(residual)

    def hidden_budget(self, x: torch.Tensor) -> Optional[int]:
        """The memory-lean budget for ``x``'s device (None: not lean); per-device budgets fall back to the CPU's."""
        budget = self.max_hidden_bytes
        return budget.get(x.device.type, budget["cpu"]) if isinstance(budget, dict) else budget

    def _packed_weights(self, x: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """fc1 and fc2's weights packed for the C++ kernel's fp32 GEMMs (``ops.pack_weight``), cached for inference
        on CPU in fast mode; ``(None, None)`` elsewhere (bf16 runs MKL's bf16 GEMM on the plain weights; other
        devices and the reference do not use them)."""
        if (
            not (self.fast and x.device.type == "cpu" and self.op_backend in ("auto", "cpu"))
            or x.dtype == torch.bfloat16
        ):
            return None, None
        w1, w2 = self.dense1.weight, self.dense2.weight
        return self._inference_cache("ffn_pack", (w1, w2), lambda: (ops.pack_weight(w1), ops.pack_weight(w2)))

    def _onednn_schedule(self, x: torch.Tensor) -> bool:
        """Whether this inference call runs :meth:`_onednn_forward` (the measured rule above; CPU tensors, the C++
        backends, eager mode, within the memory-lean budget)."""
        if (
            torch.compiler.is_compiling()  # first: the checks below are not traceable
            or torch.is_grad_enabled()
            or x.device.type != "cpu"
            or self.op_backend not in ("auto", "cpu")
            or not onednn_takes(x.dtype)
            or x.shape[-1] == 0
        ):
            return False
        hidden = self.dense1.out_features
        hidden_bytes = x.numel() // x.shape[-1] * hidden * x.element_size()
        budget = self.hidden_budget(x)
        if budget is not None and hidden_bytes > budget:
            return False
        if x.dtype == torch.bfloat16:
            return hidden_bytes <= ONEDNN_FFN_MAX_HIDDEN_BYTES_BF16
        weight_bytes = 2 * x.shape[-1] * hidden * x.element_size()
        tokens = x.numel() // x.shape[-1]
        return (
            weight_bytes >= ONEDNN_FFN_MIN_WEIGHT_BYTES_FP32
            and hidden_bytes <= ONEDNN_FFN_MAX_HIDDEN_BYTES_FP32
            and tokens > CONV_FFN_PACKED_MAX_TOKENS
        )

    def _onednn_forward(
        self, x: torch.Tensor, height: int, width: int, residual: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """fc1 and fc2 on prepacked oneDNN weights (bias, and fc2's residual, in their epilogues) around the fused
        depthwise conv + GELU (``relu_input`` for the linear variant); the widened state is materialised once."""
        fc1, fc2, conv = self.dense1, self.dense2, self.dwconv.dwconv
        hidden = self._linear("fc1", x, (fc1.weight, fc1.bias), lambda: (fc1.weight, fc1.bias), onednn=True)
        hidden = ops.dwconv_gelu(
            hidden, conv.weight, conv.bias, height, width, relu_input=self.extra_relu, backend=self.op_backend
        )
        return self._linear(
            "fc2", hidden, (fc2.weight, fc2.bias), lambda: (fc2.weight, fc2.bias), residual, onednn=True
        )
