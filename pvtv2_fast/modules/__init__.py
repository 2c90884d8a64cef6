"""Reference building blocks of PVTv2 (pure PyTorch). Attribute names follow transformers' so state dicts match."""

from .activations import get_activation
from .attention import SpatialReductionAttention
from .block import DropPath, PvtV2Block
from .decode_head import AllMLPDecodeHead
from .fast_path import FastPath
from .ffn import ConvFeedForward, DepthwiseConv
from .layer_norm import TokenLayerNorm
from .patch_embed import OverlapPatchEmbed

__all__ = [
    "AllMLPDecodeHead",
    "ConvFeedForward",
    "DepthwiseConv",
    "DropPath",
    "FastPath",
    "OverlapPatchEmbed",
    "PvtV2Block",
    "SpatialReductionAttention",
    "TokenLayerNorm",
    "get_activation",
]
