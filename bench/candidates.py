"""The models compared in the benchmarks, all holding the same random weights.

A candidate is described by a JSON-able spec ``{"impl", "preset", "size", "batch", "dtype", "device"}`` so the
memory probe can rebuild it in a fresh process.

impl: ``reference`` (this library, fast=False), ``lean`` (the reference with ``set_memory_lean()``), ``fast``
(fast=True), ``transformers``, ``timm``,
``compile:reference`` / ``compile:timm`` (``torch.compile`` of those).
"""

from __future__ import annotations

import warnings
from typing import Callable, Tuple

import torch

from pvtv2_fast import PvtV2Config, PvtV2Model
from pvtv2_fast.checkpoint import canonical_to_timm

TIMM_NAMES = {"b0": "pvt_v2_b0", "b1": "pvt_v2_b1", "b2": "pvt_v2_b2", "b2_linear": "pvt_v2_b2_li", "b3": "pvt_v2_b3",
              "b4": "pvt_v2_b4", "b5": "pvt_v2_b5"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def reference_model(preset: str) -> PvtV2Model:
    torch.manual_seed(0)  # same weights in every process
    return PvtV2Model(PvtV2Config.from_preset(preset)).eval()


def build(spec: dict) -> Tuple[Callable[[], object], torch.nn.Module]:
    """Returns ``(forward thunk, module)`` for one candidate spec."""
    impl, preset = spec["impl"], spec["preset"]
    device, dtype = spec.get("device", "cpu"), DTYPES[spec.get("dtype", "fp32")]
    h, w = (spec["size"], spec["size"]) if isinstance(spec["size"], int) else spec["size"]
    ours = reference_model(preset)
    compiled = impl.startswith("compile:")
    base = impl.split(":", 1)[1] if compiled else impl
    if base in ("reference", "fast", "lean"):
        model = ours.set_fast(base == "fast")
        if base == "lean":
            model.set_memory_lean(True)
    elif base == "transformers":
        import transformers

        data = {k: v for k, v in ours.config.to_dict().items() if k not in ("stage_names", "model_type")}
        model = transformers.PvtV2Model(transformers.PvtV2Config(**data)).eval()
        model.load_state_dict(ours.state_dict(), strict=True)
    elif base == "timm":
        import timm

        model = timm.create_model(TIMM_NAMES[preset], num_classes=0).eval()
        model.load_state_dict(canonical_to_timm(ours.state_dict()), strict=True)
    else:
        raise ValueError(f"unknown impl {impl!r}")
    model = model.to(device=device, dtype=dtype)
    x = torch.randn(spec.get("batch", 1), 3, h, w, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    if base == "timm":
        run = lambda: model.forward_features(x)  # noqa: E731 - the encoder only, like the others
    else:
        run = lambda: model(x)  # noqa: E731
    if compiled:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn = torch.compile(model.forward_features if base == "timm" else model)
        run = lambda: fn(x)  # noqa: E731
    return run, model
