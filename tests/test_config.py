"""PvtV2Config: transformers' fields and defaults, presets and parameter counts, validation, config.json I/O."""

import json

import pytest
import transformers

from pvtv2_fast import PvtV2Config, PvtV2ForImageClassification, preset_names
from conftest import hf_config

FIELDS = [
    "image_size", "num_channels", "num_encoder_blocks", "depths", "sr_ratios", "hidden_sizes", "patch_sizes",
    "strides", "num_attention_heads", "mlp_ratios", "hidden_act", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "initializer_range", "drop_path_rate", "layer_norm_eps", "qkv_bias",
    "linear_attention", "out_features", "out_indices", "num_labels", "id2label", "label2id",
]

# Published sizes (arXiv 2106.13797): 3.7 / 14.0 / 25.4 / 22.6 / 45.2 / 62.6 / 82.0 M with a 1000-class head.
PARAMS_M = {"b0": 3.67, "b1": 14.01, "b2": 25.36, "b2_linear": 22.55, "b3": 45.24, "b4": 62.56, "b5": 81.96}


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


@pytest.mark.parametrize("field", FIELDS)
def test_defaults_match_transformers(field):
    ours, theirs = PvtV2Config(), transformers.PvtV2Config()
    assert _norm(getattr(ours, field)) == _norm(getattr(theirs, field))


def test_presets_listed():
    assert preset_names() == ["b0", "b1", "b2", "b2_linear", "b3", "b4", "b5"]


@pytest.mark.parametrize("name", list(PARAMS_M))
def test_preset_parameter_counts(name):
    model = PvtV2ForImageClassification(PvtV2Config.from_preset(name, num_labels=1000))
    assert round(model.num_parameters() / 1e6, 2) == PARAMS_M[name]


@pytest.mark.parametrize("alias,name", [("pvt_v2_b2_li", "b2_linear"), ("B0", "b0"), ("pvt-v2-b5", "b5"),
                                        ("OpenGVLab/pvt_v2_b1", "b1")])
def test_preset_aliases(alias, name):
    assert PvtV2Config.from_preset(alias) == PvtV2Config.from_preset(name)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(depths=[2, 2, 2]), "depths"),
        (dict(hidden_sizes=[32, 64, 160, 250]), "hidden_sizes"),
        (dict(sr_ratios=[8, 4, 0, 1]), "sr_ratios"),
        (dict(mlp_ratios=[8, 8, -1, 4]), "mlp_ratios"),
        (dict(num_encoder_blocks=0), "num_encoder_blocks"),
        (dict(hidden_act="mish"), "hidden_act"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(out_features=["stage9"]), "out_features"),
        (dict(out_indices=[3, 1]), "out_indices"),
        (dict(num_labels=3, id2label={0: "a"}), "num_labels"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PvtV2Config(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        PvtV2Config.from_preset("b9")


def test_out_features_and_indices_align():
    c = PvtV2Config(out_indices=[0, 2])
    assert c.out_features == ["stage1", "stage3"]
    c = PvtV2Config(out_features=["stage2", "stage4"])
    assert c.out_indices == [1, 3]
    assert PvtV2Config().out_features == ["stage4"]  # transformers' default: last stage


def test_json_round_trip_with_transformers(tmp_path):
    ours = PvtV2Config.from_preset("b2_linear", num_labels=3, out_indices=[1, 2, 3])
    ours.save_pretrained(tmp_path)
    theirs = transformers.PvtV2Config.from_pretrained(tmp_path)
    for field in FIELDS:
        assert _norm(getattr(theirs, field)) == _norm(getattr(ours, field)), field
    theirs.save_pretrained(tmp_path / "hf")
    back = PvtV2Config.from_pretrained(tmp_path / "hf")
    assert back.to_dict() | {"transformers_version": None} == ours.to_dict() | {"transformers_version": None}


def test_timm_eps_fields_round_trip(tmp_path):
    c = PvtV2Config(patch_embed_layer_norm_eps=1e-5, spatial_reduction_layer_norm_eps=1e-5)
    c.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["patch_embed_layer_norm_eps"] == 1e-5
    back = PvtV2Config.from_pretrained(tmp_path)
    assert back.embed_layer_norm_eps == 1e-5 and back.sr_layer_norm_eps == 1e-5 and back.layer_norm_eps == 1e-6
    # transformers-style configs keep a single eps everywhere
    assert PvtV2Config().embed_layer_norm_eps == 1e-6


def test_wrong_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="model_type"):
        PvtV2Config.from_pretrained(tmp_path)


def test_hf_config_helper_is_equal():
    c = PvtV2Config.from_preset("b1", num_labels=7)
    assert _norm(hf_config(c).hidden_sizes) == c.hidden_sizes
