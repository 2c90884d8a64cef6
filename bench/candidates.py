"""The models compared in the benchmarks, all holding the same random weights.

A candidate is described by a JSON-able spec ``{"impl", "preset", "size", "batch", "dtype", "device"}`` so the
memory probe can rebuild it in a fresh process.

impl: ``reference`` (this library, fast=False), ``lean`` (the reference with ``set_memory_lean()``), ``fast``
(fast=True), ``inference`` (:func:`pvtv2_fast.optimize_for_inference`: fast=True compiled with inductor freezing,
by AOTInductor on CPU), ``inference-compile`` (the same with its ``torch.compile`` engine), ``transformers``,
``timm``, ``timm-cl`` (timm with its depthwise-conv weights made channels-last, the one-line change a timm user
can make), ``compile:reference`` / ``compile:timm``
(``torch.compile`` of those), and the deployment peers, which run timm's ``forward_features`` exported with
``torch.onnx.export``: ``onnxruntime``, ``openvino`` (``PERFORMANCE_HINT`` LATENCY, one request for the whole
batch) and ``openvino-tput`` (THROUGHPUT hint: the batch split into one-image requests over its streams). The peers
use ``threads`` threads; ``dtype`` bf16 sets OpenVINO's ``INFERENCE_PRECISION_HINT`` (its inputs stay fp32).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Callable, Tuple

import torch

from pvtv2_fast import PvtV2Config, PvtV2Model
from pvtv2_fast.checkpoint import canonical_to_timm

PEERS = ("onnxruntime", "openvino", "openvino-tput")
TIMM_NAMES = {
    "b0": "pvt_v2_b0",
    "b1": "pvt_v2_b1",
    "b2": "pvt_v2_b2",
    "b2_linear": "pvt_v2_b2_li",
    "b3": "pvt_v2_b3",
    "b4": "pvt_v2_b4",
    "b5": "pvt_v2_b5",
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def reference_model(preset: str) -> PvtV2Model:
    torch.manual_seed(0)  # same weights in every process
    return PvtV2Model(PvtV2Config.from_preset(preset)).eval()


def output_tensor(out) -> torch.Tensor:
    """The encoder's last map ``(B, C, h, w)`` as an fp32 tensor, from any candidate's return value."""
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    if not isinstance(out, torch.Tensor):
        out = torch.from_numpy(out)
    return out.float()


def timm_model(preset: str, ours: torch.nn.Module) -> torch.nn.Module:
    import timm

    model = timm.create_model(TIMM_NAMES[preset], num_classes=0).eval()
    model.load_state_dict(canonical_to_timm(ours.state_dict()), strict=True)
    return model


def channels_last_dwconv(model: torch.nn.Module) -> torch.nn.Module:
    """Depthwise-conv weights in channels-last memory: oneDNN then runs those convs channels-last (its fast
    depthwise path) instead of a grouped NCHW conv. Values and ``state_dict`` are unchanged."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return model


class _Features(torch.nn.Module):
    """timm's encoder (``forward_features``) as the module to export."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def export_onnx(preset: str, ours: torch.nn.Module, shape: Tuple[int, ...]) -> Path:
    """timm's encoder for ``preset`` exported to ONNX at a fixed input ``shape``, cached in the temp dir (the
    weights are seeded, so the file depends only on the preset, the shape and the library versions)."""
    import timm

    folder = Path(tempfile.gettempdir()) / "pvtv2_fast_bench_onnx"
    folder.mkdir(exist_ok=True)
    path = folder / f"{preset}_{'x'.join(map(str, shape))}_torch{torch.__version__}_timm{timm.__version__}.onnx"
    if not path.exists():
        tmp = path.with_suffix(f".{id(path)}.tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: ~5 s here; its graph runs within 1e-5 of timm in both runtimes.
            torch.onnx.export(
                _Features(timm_model(preset, ours)),
                (torch.zeros(shape),),
                str(tmp),
                dynamo=False,
                input_names=["pixel_values"],
                output_names=["features"],
                opset_version=17,
            )
        tmp.replace(path)
    return path


def build_peer(impl: str, preset: str, ours: torch.nn.Module, x: torch.Tensor, threads: int, dtype: str):
    """A forward thunk running ``impl`` (one of :data:`PEERS`) on ``x``; returns numpy ``(B, C, h, w)``."""
    xs = x.float().numpy()
    if impl == "onnxruntime":
        import onnxruntime as ort

        if dtype != "fp32":
            raise ValueError(f"onnxruntime runs fp32 only here, got {dtype}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            str(export_onnx(preset, ours, tuple(x.shape))), opts, providers=["CPUExecutionProvider"]
        )
        return lambda: session.run(None, {"pixel_values": xs})[0]
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16" if dtype == "bf16" else "f32"}
    if impl == "openvino":
        config["PERFORMANCE_HINT"] = "LATENCY"
        compiled = core.compile_model(str(export_onnx(preset, ours, tuple(x.shape))), "CPU", config)
        request = compiled.create_infer_request()
        return lambda: request.infer({0: xs})[compiled.output(0)]
    config["PERFORMANCE_HINT"] = "THROUGHPUT"
    compiled = core.compile_model(str(export_onnx(preset, ours, (1, *x.shape[1:]))), "CPU", config)
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    results = [None] * xs.shape[0]

    def collect(request, i):
        results[i] = request.get_output_tensor(0).data.copy()

    queue.set_callback(collect)

    def run():
        for i in range(xs.shape[0]):
            queue.start_async({0: xs[i : i + 1]}, i)
        queue.wait_all()
        import numpy as np

        return np.concatenate(results)

    return run


def build(spec: dict) -> Tuple[Callable[[], object], torch.nn.Module]:
    """Returns ``(forward thunk, module)`` for one candidate spec."""
    impl, preset = spec["impl"], spec["preset"]
    device, dtype = spec.get("device", "cpu"), DTYPES[spec.get("dtype", "fp32")]
    h, w = (spec["size"], spec["size"]) if isinstance(spec["size"], int) else spec["size"]
    ours = reference_model(preset)
    x = torch.randn(spec.get("batch", 1), 3, h, w, generator=torch.Generator().manual_seed(0))
    if impl in PEERS:
        if device != "cpu":
            raise ValueError(f"{impl} is a CPU peer, got device {device!r}")
        run = build_peer(impl, preset, ours, x, spec.get("threads", torch.get_num_threads()), spec.get("dtype", "fp32"))
        return run, ours
    x = x.to(device, dtype)
    compiled = impl.startswith("compile:")
    base = impl.split(":", 1)[1] if compiled else impl
    if base in ("reference", "fast", "lean", "inference", "inference-compile"):
        model = ours.set_fast(base not in ("reference", "lean"))
        if base == "lean":
            model.set_memory_lean(True)
    elif base == "transformers":
        import transformers

        data = {k: v for k, v in ours.config.to_dict().items() if k not in ("stage_names", "model_type")}
        model = transformers.PvtV2Model(transformers.PvtV2Config(**data)).eval()
        model.load_state_dict(ours.state_dict(), strict=True)
    elif base in ("timm", "timm-cl"):
        model = timm_model(preset, ours)
    else:
        raise ValueError(f"unknown impl {impl!r}")
    model = model.to(device=device, dtype=dtype)
    if base == "timm-cl":
        channels_last_dwconv(model)
    if base.startswith("timm"):
        run = lambda: model.forward_features(x)  # noqa: E731 - the encoder only, like the others
    else:
        run = lambda: model(x)  # noqa: E731
    if base.startswith("inference"):
        from pvtv2_fast.inference import optimize_for_inference

        wrapper = optimize_for_inference(model, engine="compile" if base == "inference-compile" else "auto")
        run = lambda: wrapper(x)  # noqa: E731
        run.inference_model = wrapper  # for bench.memory_probe: its compiled signatures
    if compiled:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn = torch.compile(model.forward_features if base.startswith("timm") else model)
        run = lambda: fn(x)  # noqa: E731
    return run, model
