"""pvtv2_fast: a transformers-compatible PVTv2 reference in pure PyTorch, with fused kernels behind ``fast=True``."""

from .config import PRESETS, PvtV2Config, preset_names
from .inference import InferenceModel, optimize_for_inference
from .modeling import (
    PvtV2Backbone,
    PvtV2ForImageClassification,
    PvtV2ForSemanticSegmentation,
    PvtV2Model,
    PvtV2PreTrainedModel,
)
from .ops.block_cache import cpu_cache_stats, empty_cpu_cache
from .patch import is_patched, patch, unpatch  # noqa: E402  (binds pvtv2_fast.patch to the function)
from .validation import min_input_size, stage_shapes, stage_sizes

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "PvtV2Backbone",
    "PvtV2Config",
    "PvtV2ForImageClassification",
    "PvtV2ForSemanticSegmentation",
    "PvtV2Model",
    "PvtV2PreTrainedModel",
    "InferenceModel",
    "cpu_cache_stats",
    "empty_cpu_cache",
    "optimize_for_inference",
    "is_patched",
    "min_input_size",
    "patch",
    "preset_names",
    "stage_shapes",
    "stage_sizes",
    "unpatch",
]
