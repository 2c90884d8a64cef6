"""Checkpoint formats, detection, conversion and every error path (never a partly loaded model)."""

import json
import re

import pytest
import timm
import torch
from conftest import assert_max_abs_close, randomize_

from pvtv2_fast import PvtV2Backbone, PvtV2Config, PvtV2ForImageClassification, PvtV2Model
from pvtv2_fast.checkpoint import CheckpointError, CheckpointMismatchError, canonical_to_timm, detect_format


def _timm_to_original(sd):
    """timm keys → the original PVTv2 repository's (inverse of timm's checkpoint_filter_fn)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^patch_embed\.", "patch_embed1.", k)
        k = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", k)
        k = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.", k)
        k = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", k)
        k = k.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
        out[k] = v
    return out


@pytest.fixture(scope="module")
def timm_b0():
    return randomize_(timm.create_model("pvt_v2_b0", num_classes=5), seed=9).eval()


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "module_prefix"])
def test_original_checkpoint(timm_b0, tmp_path, wrap):
    sd = _timm_to_original(timm_b0.state_dict())
    assert detect_format(sd) == "original"
    if wrap == "module_prefix":
        obj = {"module." + k: v for k, v in sd.items()}
    else:
        obj = sd if wrap == "raw" else {wrap: sd, "epoch": torch.tensor(3)}
    torch.save(obj, tmp_path / "pvt_v2_b0.pth")
    ours = PvtV2ForImageClassification.from_pretrained(tmp_path / "pvt_v2_b0.pth")
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        assert_max_abs_close(ours(x).logits, timm_b0(x), "logits vs timm")


def test_forced_format_and_backbone(timm_b0, tmp_path):
    torch.save(timm_b0.state_dict(), tmp_path / "w.pth")
    bb = PvtV2Backbone.from_pretrained(tmp_path / "w.pth", format="timm", out_indices=[0, 1, 2, 3])
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        for u, v in zip(bb(x).feature_maps, timm_b0.forward_intermediates(x, intermediates_only=True)):
            assert_max_abs_close(u, v, "feature map vs timm")
    with pytest.raises(ValueError, match="format"):
        PvtV2Model.from_pretrained(tmp_path / "w.pth", format="onnx")


def _saved(tmp_path, preset="b0", num_labels=4):
    model = randomize_(PvtV2ForImageClassification(PvtV2Config.from_preset(preset, num_labels=num_labels))).eval()
    model.save_pretrained(tmp_path)
    return model


def test_sharded_round_trip(tmp_path):
    model = PvtV2ForImageClassification(PvtV2Config.from_preset("b0", num_labels=4)).eval()
    model.save_pretrained(tmp_path, max_shard_size=2_000_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    again = PvtV2ForImageClassification.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)


def test_pytorch_model_bin_folder(tmp_path):
    model = _saved(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    again = PvtV2ForImageClassification.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    model = _saved(tmp_path)
    sd = {k: v for k, v in model.state_dict().items()}
    sd.pop("pvt_v2.encoder.layers.1.blocks.0.attention.query.weight")
    sd["pvt_v2.encoder.layers.0.extra.weight"] = torch.zeros(1)
    sd["pvt_v2.encoder.layers.2.layer_norm.weight"] = torch.zeros(7)
    target = PvtV2ForImageClassification(PvtV2Config.from_preset("b0", num_labels=4))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        target.load_checkpoint(sd)
    msg = str(info.value)
    assert "missing keys (1)" in msg and "layers.1.blocks.0.attention.query.weight" in msg
    assert "unexpected keys (1)" in msg and "layers.0.extra.weight" in msg
    assert "shape mismatches (1)" in msg and "(7,)" in msg and "(160,)" in msg
    # nothing was copied
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_wrong_preset_is_a_mismatch(tmp_path):
    _saved(tmp_path, "b0")
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        PvtV2ForImageClassification.from_pretrained(tmp_path, config=PvtV2Config.from_preset("b1", num_labels=4))


def test_head_size_mismatch_needs_opt_in(tmp_path):
    _saved(tmp_path, num_labels=4)
    with pytest.raises(CheckpointMismatchError, match="classifier.weight"):
        PvtV2ForImageClassification.from_pretrained(tmp_path, num_labels=9)
    model = PvtV2ForImageClassification.from_pretrained(tmp_path, num_labels=9, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 9


def test_headless_checkpoint_into_classifier_initialises_head(tmp_path, caplog):
    base = randomize_(PvtV2Model(PvtV2Config(num_labels=3)))
    base.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = PvtV2ForImageClassification.from_pretrained(tmp_path)
    assert "classifier.weight" in caplog.text
    assert torch.equal(
        model.pvt_v2.encoder.layers[0].patch_embedding.proj.weight, base.encoder.layers[0].patch_embedding.proj.weight
    )


def test_truncated_safetensors(tmp_path):
    _saved(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        PvtV2ForImageClassification.from_pretrained(tmp_path)


def test_truncated_pth(timm_b0, tmp_path):
    torch.save(timm_b0.state_dict(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "w.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="could not read"):
        PvtV2ForImageClassification.from_pretrained(tmp_path / "w.pth")


@pytest.mark.parametrize("content", [b"hello, not a checkpoint", b""])
def test_not_a_checkpoint(tmp_path, content):
    (tmp_path / "w.pth").write_bytes(content)
    with pytest.raises(CheckpointError):
        PvtV2Model.from_pretrained(tmp_path / "w.pth")


def test_pickle_of_non_tensors(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="state dict"):
        PvtV2Model.from_pretrained(tmp_path / "w.pth")


def test_unrelated_state_dict(tmp_path):
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        PvtV2Model.from_pretrained(tmp_path / "w.pth")


def test_folder_without_weights(tmp_path):
    PvtV2Config().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        PvtV2Model.from_pretrained(tmp_path)


def test_unreachable_hub_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(OSError, match="could not reach hub id 'OpenGVLab/pvt_v2_b0'.*local folder"):
        PvtV2ForImageClassification.from_pretrained("OpenGVLab/pvt_v2_b0")


def test_hub_cache_is_used(monkeypatch, tmp_path):
    """A hub id already in huggingface_hub's cache loads offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub" / "models--org--tiny-pvt"
    snapshot = cache / "snapshots" / ("0" * 40)
    model = _saved(snapshot)
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    again = PvtV2ForImageClassification.from_pretrained("org/tiny-pvt")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_missing_path():
    with pytest.raises(FileNotFoundError):
        PvtV2Model.from_pretrained("./no/such/dir/anywhere")


def test_config_file_is_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PvtV2Config.from_pretrained(tmp_path)


def test_saved_config_names_architecture(tmp_path):
    _saved(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["PvtV2ForImageClassification"]


def test_export_to_timm_loads_strict(tmp_path):
    ours = randomize_(
        PvtV2ForImageClassification(
            PvtV2Config.from_preset(
                "b0", num_labels=5, patch_embed_layer_norm_eps=1e-5, spatial_reduction_layer_norm_eps=1e-5
            )
        )
    ).eval()
    sd = {k.removeprefix("pvt_v2."): v for k, v in ours.state_dict().items()}
    theirs = timm.create_model("pvt_v2_b0", num_classes=5).eval()
    theirs.load_state_dict(canonical_to_timm(sd), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_max_abs_close(ours(x).logits, theirs(x), "logits vs timm")
