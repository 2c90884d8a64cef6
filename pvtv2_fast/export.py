"""ONNX export at any input size.

Two things stand between the models and a dynamic-size ONNX graph, and this module handles both:

* ``fast=True`` runs custom ops (``pvtv2_fast::*``) that ONNX has no operator for, and the memory-lean FFN loops
  over bands of rows, a trip count that depends on the input size. Export therefore takes the reference path.
* Linear SRA's 7×7 adaptive average pool: exporters lower it to a fixed pooling window computed from the traced
  size, so a graph traced at one size silently computes wrong bins at a size that divides by 7 differently
  (or rejects it). While ``torch.onnx.export`` runs, the reference of ``ops.linear_sra_pool`` computes it as two
  matrix products with bin-averaging matrices built in the graph from H and W (:func:`adaptive_pool_matrix`),
  exact for every size, H or W < 7 included.

:func:`export_mode` switches a model to the reference path for the duration of an export (nothing is copied;
parameters and ``state_dict`` are untouched), and the models' forward enters it by itself while
``torch.onnx.export`` runs, so a plain ``torch.onnx.export(model, ...)`` of a ``fast=True`` model works too.
:func:`export_onnx` is the one-call version with dynamic batch, height and width.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, List, Optional, Sequence

import torch
from torch import nn

__all__ = [
    "adaptive_pool_matrix",
    "adaptive_avg_pool2d_exportable",
    "ExportableAdaptiveAvgPool2d",
    "export_mode",
    "export_onnx",
    "output_names",
]


def adaptive_pool_matrix(size: int | torch.Tensor, bins: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(bins, size)`` averaging matrix of ``AdaptiveAvgPool1d(bins)`` over ``size`` inputs: row ``i`` averages
    ``[floor(i·size/bins), ceil((i+1)·size/bins))``, PyTorch's bins (overlapping when ``size`` does not divide,
    repeated inputs when ``size < bins``). ``size`` may be a traced (symbolic) size."""
    index = torch.arange(size, device=device)
    i = torch.arange(bins, device=device).unsqueeze(1)
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    mask = ((index >= start) & (index < end)).to(dtype)
    return mask / mask.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d_exportable(x: torch.Tensor, output_size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)`` for ``x: (B, C, H, W)`` as ``P_H · x · P_Wᵀ``: two matrix
    products that export to ONNX for every H and W."""
    height, width = x.shape[-2], x.shape[-1]
    rows = adaptive_pool_matrix(height, output_size, device=x.device, dtype=x.dtype)
    cols = adaptive_pool_matrix(width, output_size, device=x.device, dtype=x.dtype)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class ExportableAdaptiveAvgPool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveAvgPool2d(P)`` (square ``P``) without parameters: see
    :func:`adaptive_avg_pool2d_exportable`."""

    def __init__(self, output_size: int) -> None:
        super().__init__()
        if isinstance(output_size, (tuple, list)):
            if len(set(output_size)) != 1:
                raise ValueError(f"only square output sizes are supported, got {output_size}")
            output_size = output_size[0]
        self.output_size = int(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d_exportable(x, self.output_size)


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` (a pvtv2_fast model or any module containing one) computes with the reference
    path and without memory-lean banding (a loop whose trip count depends on the input size); restored on exit.
    (The reference's adaptive pool turns exportable by itself while ``torch.onnx.export`` runs.)"""
    from .modules import ConvFeedForward
    from .modules.fast_path import FastPath

    saved = []
    for module in model.modules():
        if getattr(module, "_pvtv2_export_mode", False):
            continue
        state = {}
        if isinstance(module, FastPath):
            state["backend"] = module.backend
        if isinstance(module, ConvFeedForward):
            state["max_hidden_bytes"] = module.max_hidden_bytes
        if not state:
            continue
        saved.append((module, state))
        for name in state:
            setattr(module, name, None)
        module._pvtv2_export_mode = True
    try:
        yield model
    finally:
        for module, state in saved:
            for name, value in state.items():
                setattr(module, name, value)
            del module._pvtv2_export_mode


def output_names(model: nn.Module) -> List[str]:
    """ONNX output names of :func:`export_onnx` for this model class."""
    from .modeling import PvtV2Backbone, PvtV2ForImageClassification, PvtV2ForSemanticSegmentation

    if isinstance(model, PvtV2Backbone):
        return [f"feature_map_{i}" for i in range(len(model.out_indices))]
    if isinstance(model, (PvtV2ForImageClassification, PvtV2ForSemanticSegmentation)):
        return ["logits"]
    return ["last_hidden_state"]


class _TensorOutputs(nn.Module):
    """The model with plain tensor outputs (what an ONNX graph returns), in :func:`output_names` order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values, return_dict=True)
        if hasattr(out, "feature_maps"):
            return tuple(out.feature_maps)
        if hasattr(out, "logits"):
            return out.logits
        return out.last_hidden_state


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    height: int = 224,
    width: int = 224,
    batch: int = 1,
    dynamic: bool = True,
    opset: Optional[int] = None,
    dynamo: bool = False,
    min_size: Optional[int] = None,
) -> str:
    """Write ``model`` (a pvtv2_fast model, ``fast`` or not) to an ONNX file at ``path`` and return the path.

    The graph takes ``pixel_values (batch, C, height, width)``; with ``dynamic`` (default) batch, height and width
    are dynamic and any size from the config's minimum up computes what the PyTorch model computes. ``height`` /
    ``width`` are the example input's. ``dynamo=False`` (default) uses the TorchScript exporter, which is the
    quicker of the two here; ``dynamo=True`` the ``torch.export``-based one (needs ``onnxscript``).
    """
    from .validation import min_input_size

    model_was_training = model.training
    model.eval()
    channels = model.config.num_channels
    example = torch.randn(batch, channels, height, width, device=next(model.parameters()).device)
    wrapper = _TensorOutputs(model).eval()
    names = output_names(model)
    kwargs = {"input_names": ["pixel_values"], "output_names": names}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic:
        if dynamo:
            low = max(2, min_size or min_input_size(model.config))
            kwargs["dynamic_shapes"] = {
                "pixel_values": {
                    0: torch.export.Dim("batch", min=1, max=1024),
                    2: torch.export.Dim("height", min=low),
                    3: torch.export.Dim("width", min=low),
                }
            }
        else:
            axes = {0: "batch", 2: "height", 3: "width"}
            out_axes = {0: "batch", 2: "out_height", 3: "out_width"}
            kwargs["dynamic_axes"] = {"pixel_values": axes, **{n: dict(out_axes) for n in names}}
            if names == ["logits"] and not hasattr(model, "decode_head"):
                kwargs["dynamic_axes"]["logits"] = {0: "batch"}
    try:
        with export_mode(model), torch.no_grad():
            torch.onnx.export(wrapper, (example,), os.fspath(path), dynamo=dynamo, **kwargs)
    finally:
        model.train(model_was_training)
    return os.fspath(path)


def check_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    sizes: Sequence[tuple] = ((97, 131), (61, 45)),
    batch: int = 1,
    seed: int = 0,
) -> float:
    """Run the ONNX file in ONNX Runtime at each ``(height, width)`` and return the largest absolute difference
    from ``model`` (evaluated in PyTorch) over all outputs and sizes."""
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    wrapper = _TensorOutputs(model).eval()
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for h, w in sizes:
        x = torch.randn(batch, model.config.num_channels, h, w, generator=g)
        with torch.no_grad():
            ref = wrapper(x)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run(None, {"pixel_values": x.numpy()})
        if len(got) != len(ref):
            raise AssertionError(f"{len(got)} ONNX outputs, {len(ref)} expected")
        for a, b in zip(got, ref):
            if tuple(a.shape) != tuple(b.shape):
                raise AssertionError(f"at {h}×{w}: ONNX output {a.shape}, PyTorch {tuple(b.shape)}")
            worst = max(worst, float(abs(torch.from_numpy(a) - b.cpu()).max()))
    return worst
