"""ONNX export at any size: the exportable adaptive pool, export mode, ONNX Runtime parity at odd sizes (1e-4) for
SRA and Linear SRA (7×7 pool at sizes not divisible by 7), a plain ``torch.onnx.export`` of a ``fast=True`` model,
OpenVINO loading the file, and the ``export`` CLI."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_

from pvtv2_fast import (
    PvtV2Backbone,
    PvtV2Config,
    PvtV2ForImageClassification,
    PvtV2ForSemanticSegmentation,
    PvtV2Model,
)
from pvtv2_fast.__main__ import main
from pvtv2_fast.export import (
    ExportableAdaptiveAvgPool2d,
    adaptive_avg_pool2d_exportable,
    adaptive_pool_matrix,
    check_onnx,
    export_mode,
    export_onnx,
)
from pvtv2_fast.modules import ConvFeedForward
from pvtv2_fast.modules.fast_path import FastPath

ort = pytest.importorskip("onnxruntime")  # test-time dependency (requirements-dev.txt)

ONNX_ATOL = 1e-4
# Odd sizes, none a multiple of 7 at the Linear SRA stages, one below 7 tokens a side at stage 4, one square.
ODD_SIZES = [(97, 131), (61, 45), (33, 200), (224, 224)]
# Real stage widths (b0, b2_linear) with one block per stage: the graph's structure, at export-test cost.
FAMILIES = {"sra": ("b0", {}), "linear": ("b2_linear", {})}


def _model(family: str, cls=PvtV2ForImageClassification, fast=True, **overrides):
    preset, extra = FAMILIES[family]
    config = PvtV2Config.from_preset(preset, depths=[1, 1, 1, 1], num_labels=7, **extra, **overrides)
    model = randomize_(cls(config), seed=2)
    return model.set_fast(fast).eval()


@pytest.mark.parametrize("size, bins", list(itertools.product([1, 2, 5, 6, 7, 8, 13, 14, 15, 23, 49, 50], [1, 3, 7])))
def test_adaptive_pool_matrix_bins(size, bins):
    x = torch.randn(2, 3, size, 11, dtype=torch.float64)
    expected = F.adaptive_avg_pool2d(x, (bins, 11))
    rows = adaptive_pool_matrix(size, bins, dtype=torch.float64)
    assert rows.shape == (bins, size)
    torch.testing.assert_close(torch.matmul(rows, x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("hw", [(1, 1), (5, 9), (7, 7), (15, 17), (25, 33), (64, 3)])
def test_exportable_pool_matches_adaptive_avg_pool(hw):
    x = torch.randn(2, 8, *hw)
    torch.testing.assert_close(ExportableAdaptiveAvgPool2d(7)(x), F.adaptive_avg_pool2d(x, 7), rtol=0, atol=1e-6)
    torch.testing.assert_close(adaptive_avg_pool2d_exportable(x, 3), F.adaptive_avg_pool2d(x, 3), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="square"):
        ExportableAdaptiveAvgPool2d((7, 5))


def test_export_mode_switches_and_restores():
    model = _model("linear")
    backends = {name: m.backend for name, m in model.named_modules() if isinstance(m, FastPath)}
    keys = list(model.state_dict())
    x = torch.randn(1, 3, 61, 45)
    with torch.no_grad():
        fast_out = model(x).logits
        with export_mode(model):
            assert not model.fast and not any(m.fast for m in model.modules() if isinstance(m, FastPath))
            assert all(m.max_hidden_bytes is None for m in model.modules() if isinstance(m, ConvFeedForward))
            assert list(model.state_dict()) == keys
            exported_path = model(x).logits
        assert model.fast
        assert {name: m.backend for name, m in model.named_modules() if isinstance(m, FastPath)} == backends
        reference = _model("linear", fast=False)(x).logits
    assert (exported_path - reference).abs().max().item() <= 1e-5
    assert (fast_out - reference).abs().max().item() <= 1e-5


@functools.lru_cache(maxsize=None)
def _exported(family: str, tmp_dir: str):
    model = _model(family)
    path = export_onnx(model, f"{tmp_dir}/{family}.onnx", height=64, width=64, batch=2)
    return model, path


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("onnx"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_runtime_matches_reference_at_odd_sizes(family, onnx_dir):
    """One file exported at 64×64 runs at every odd size (and batch 1 or 3) within 1e-4 of the reference."""
    model, path = _exported(family, onnx_dir)
    reference = _model(family, fast=False)
    assert check_onnx(path, reference, sizes=ODD_SIZES, batch=1) <= ONNX_ATOL
    assert check_onnx(path, reference, sizes=[(45, 77)], batch=3) <= ONNX_ATOL
    assert model.fast  # exporting left the model as it was


class _Pool(torch.nn.Module):
    def __init__(self, exportable: bool):
        super().__init__()
        self.exportable = exportable

    def forward(self, x):
        return adaptive_avg_pool2d_exportable(x, 7) if self.exportable else F.adaptive_avg_pool2d(x, 7)


def test_adaptive_pool_needs_the_exportable_form(tmp_path):
    """The reason for the matrix form: with dynamic height and width the TorchScript exporter rejects
    F.adaptive_avg_pool2d (the dynamo exporter instead bakes the traced size's window); the matrix form exports
    and pools correctly at sizes that divide by 7 differently from the traced one."""
    spec = dict(input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}}, dynamo=False)
    with pytest.raises(Exception, match="adaptive_avg_pool2d"):
        torch.onnx.export(_Pool(False), (torch.randn(1, 4, 64, 64),), str(tmp_path / "plain.onnx"), **spec)
    torch.onnx.export(_Pool(True), (torch.randn(1, 4, 64, 64),), str(tmp_path / "matrix.onnx"), **spec)
    session = ort.InferenceSession(str(tmp_path / "matrix.onnx"), providers=["CPUExecutionProvider"])
    for hw in [(64, 64), (61, 45), (5, 9), (33, 200)]:
        x = torch.randn(1, 4, *hw)
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        assert (got - F.adaptive_avg_pool2d(x, 7)).abs().max().item() <= 1e-5


def test_plain_torch_onnx_export_of_fast_model(tmp_path):
    """torch.onnx.export of a fast=True model takes the reference path by itself (no custom ops in the graph)."""
    model = _model("linear")
    path = str(tmp_path / "plain.onnx")
    wrapper = _Plain(model)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (torch.randn(1, 3, 64, 64),),
            path,
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "b", 2: "h", 3: "w"}},
        )
    assert model.fast
    assert check_onnx(path, _model("linear", fast=False), sizes=[(97, 131), (61, 45)]) <= ONNX_ATOL


class _Plain(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


@pytest.mark.slow
def test_plain_torch_onnx_export_dynamo(tmp_path):
    """The torch.export-based exporter (torch's default) with dynamic height and width."""
    pytest.importorskip("onnxscript")
    model = _model("linear")
    path = str(tmp_path / "dynamo.onnx")
    h, w = torch.export.Dim("height", min=32), torch.export.Dim("width", min=32)
    torch.onnx.export(
        _Plain(model),
        (torch.randn(1, 3, 64, 64),),
        path,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_shapes={"x": {2: h, 3: w}},
    )
    assert check_onnx(path, _model("linear", fast=False), sizes=[(97, 131), (61, 45)]) <= ONNX_ATOL


@pytest.mark.parametrize("cls", [PvtV2Model, PvtV2Backbone, PvtV2ForSemanticSegmentation], ids=lambda c: c.__name__)
def test_export_other_models(cls, tmp_path):
    """Base model, backbone (every stage out) and Segformer: all outputs, at a size other than the traced one."""
    overrides = {"out_indices": [0, 1, 2, 3]} if cls is PvtV2Backbone else {}
    if cls is PvtV2ForSemanticSegmentation:
        overrides["decoder_hidden_size"] = 32
    model = _model("linear", cls=cls, **overrides)
    path = export_onnx(model, tmp_path / "m.onnx", height=64, width=64)
    assert check_onnx(path, _model("linear", cls=cls, fast=False, **overrides), sizes=[(61, 45)]) <= ONNX_ATOL


def test_openvino_loads_exported_file(onnx_dir):
    ov = pytest.importorskip("openvino")
    model, path = _exported("linear", onnx_dir)
    core = ov.Core()
    # fp32 as exported: on CPUs with bf16 / AMX units OpenVINO otherwise infers in bf16 (~1e-2 off)
    compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(1, 3, 61, 45, generator=torch.Generator().manual_seed(3))
    got = torch.from_numpy(compiled([x.numpy()])[0])
    with torch.no_grad():
        ref = _model("linear", fast=False)(x).logits
    assert (got - ref).abs().max().item() <= ONNX_ATOL


def test_cli_export(tmp_path, capsys):
    model = _model("sra")
    model.save_pretrained(tmp_path / "weights")
    out = tmp_path / "model.onnx"
    assert (
        main(
            [
                "export",
                "--weights",
                str(tmp_path / "weights"),
                "--out",
                str(out),
                "--height",
                "64",
                "--width",
                "64",
                "--check",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert out.is_file() and "dynamic batch, height and width" in printed and "max abs difference" in printed
    assert main(["export", "--weights", str(tmp_path / "missing"), "--out", str(out)]) == 2
