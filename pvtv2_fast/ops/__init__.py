"""Functional ops of PVTv2 with a ``backend=`` choice (``"auto" | "triton" | "cpu" | "cuda" | "torch"``).

Each fused kernel is registered with ``torch.library`` (custom op + fake implementation + autograd), so
``torch.compile`` and ``torch.export`` see one opaque node per fused call. Backends are data: see
:mod:`pvtv2_fast.ops.registry` for the rules and ``CONTRIBUTING.md`` for adding an op or a backend.
"""

from .conv_ffn import conv_ffn, conv_ffn_reference
from .dwconv_gelu import dwconv_gelu, dwconv_gelu_reference
from .layer_norm import layer_norm, layer_norm_reference
from .linear_sra_pool import linear_sra_pool, linear_sra_pool_reference
from .packing import pack_weight, pack_weight_pairs
from .pvt_block import bind_pvt_block, pack_block_weights, pvt_block, pvt_block_reference
from .registry import AUTO_ORDER, BACKENDS, OPS, FallbackWarning, reset_warnings, simulate, triton_status
from .sr_conv import sr_conv, sr_conv_reference
from .sra_attention import sra_attention, sra_attention_reference
from .sra_layer import pack_layer_weights, sra_layer, sra_layer_reference
from .token_conv import token_conv, token_conv_reference
from .upsample_accumulate import upsample_accumulate, upsample_accumulate_reference
from .upsample_argmax import upsample_argmax, upsample_argmax_reference

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "FallbackWarning",
    "OPS",
    "bind_pvt_block",
    "conv_ffn",
    "conv_ffn_reference",
    "dwconv_gelu",
    "dwconv_gelu_reference",
    "layer_norm",
    "layer_norm_reference",
    "linear_sra_pool",
    "linear_sra_pool_reference",
    "pack_block_weights",
    "pack_layer_weights",
    "pack_weight",
    "pack_weight_pairs",
    "pvt_block",
    "pvt_block_reference",
    "reset_warnings",
    "simulate",
    "sr_conv",
    "sr_conv_reference",
    "sra_attention",
    "sra_attention_reference",
    "sra_layer",
    "sra_layer_reference",
    "token_conv",
    "token_conv_reference",
    "triton_status",
    "upsample_accumulate",
    "upsample_accumulate_reference",
    "upsample_argmax",
    "upsample_argmax_reference",
]
