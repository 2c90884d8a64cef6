"""Functional ops of PVTv2 with a ``backend=`` choice (``"auto" | "triton" | "cpu" | "cuda" | "torch"``).

Each op is registered with ``torch.library`` (custom op + fake implementation + autograd), so ``torch.compile``
and ``torch.export`` see one opaque node per fused call. See :mod:`pvtv2_fast.ops._dispatch` for the rules.
"""

from ._dispatch import BACKENDS, FallbackWarning, reset_warnings, triton_status
from .conv_ffn import conv_ffn, conv_ffn_reference
from .dwconv_gelu import dwconv_gelu, dwconv_gelu_reference
from .linear_sra_pool import linear_sra_pool, linear_sra_pool_reference
from .sra_attention import sra_attention, sra_attention_reference

__all__ = [
    "BACKENDS",
    "FallbackWarning",
    "conv_ffn",
    "conv_ffn_reference",
    "dwconv_gelu",
    "dwconv_gelu_reference",
    "linear_sra_pool",
    "linear_sra_pool_reference",
    "reset_warnings",
    "sra_attention",
    "sra_attention_reference",
    "triton_status",
]
