"""PvtV2Config: transformers' fields and defaults, presets and parameter counts, validation, config.json I/O."""

import json

import pytest
import transformers
from conftest import hf_config

from pvtv2_fast import PvtV2Config, PvtV2ForImageClassification, preset_names

FIELDS = [
    "image_size",
    "num_channels",
    "num_encoder_blocks",
    "depths",
    "sr_ratios",
    "hidden_sizes",
    "patch_sizes",
    "strides",
    "num_attention_heads",
    "mlp_ratios",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "drop_path_rate",
    "layer_norm_eps",
    "qkv_bias",
    "linear_attention",
    "out_features",
    "out_indices",
    "num_labels",
    "id2label",
    "label2id",
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


@pytest.mark.parametrize(
    "alias,name", [("pvt_v2_b2_li", "b2_linear"), ("B0", "b0"), ("pvt-v2-b5", "b5"), ("OpenGVLab/pvt_v2_b1", "b1")]
)
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


# ---------------------------------------------------------------------------------------------- declared once
def test_signature_and_to_dict_derive_from_the_field_table():
    import inspect

    from pvtv2_fast.config import FIELDS

    params = inspect.signature(PvtV2Config).parameters
    assert [p for p in params if p != "kwargs"] == [f.name for f in FIELDS]
    assert all(params[f.name].default == f.default for f in FIELDS)
    c = PvtV2Config()
    for f in FIELDS:  # every field readable, with its default
        value = getattr(c, f.name)
        if f.plain and f.name != "image_size":
            assert value == (list(f.default) if isinstance(f.default, tuple) else f.default), f.name
    always = {f.name for f in FIELDS if f.written == "always"}
    assert always <= set(c.to_dict())
    assert not {f.name for f in FIELDS if f.written == "never"} & set(c.to_dict())


def test_segformer_fields_are_declared():
    c = PvtV2Config()
    assert (c.decoder_hidden_size, c.classifier_dropout_prob, c.semantic_loss_ignore_index) == (256, 0.1, 255)
    assert "decoder_hidden_size" not in c.to_dict()  # transformers-made folders stay alike
    c = PvtV2Config(decoder_hidden_size=64, semantic_loss_ignore_index=-100)
    back = PvtV2Config.from_dict(json.loads(c.to_json_string()))
    assert (back.decoder_hidden_size, back.semantic_loss_ignore_index) == (64, -100)
    with pytest.raises(ValueError, match="decoder_hidden_size"):
        PvtV2Config(decoder_hidden_size=0)


# ---------------------------------------------------------------------------------------------- transformers parity
HF_CASES = [
    dict(),
    dict(num_labels=3),
    dict(id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2}),
    dict(output_hidden_states=True, output_attentions=True, return_dict=False),
    dict(problem_type="regression", num_labels=1),
    dict(out_indices=[-1]),
    dict(out_indices=[0, -1]),
    dict(out_features=["stage2", "stage3"]),
    dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], linear_attention=True, image_size=[256, 320]),
    dict(
        num_encoder_blocks=3,
        depths=[1, 1, 1],
        sr_ratios=[4, 2, 1],
        hidden_sizes=[8, 16, 32],
        patch_sizes=[7, 3, 3],
        strides=[4, 2, 2],
        num_attention_heads=[1, 2, 4],
        mlp_ratios=[4, 4, 4],
    ),
]


@pytest.mark.parametrize("kwargs", HF_CASES, ids=lambda kw: ",".join(kw) or "defaults")
def test_config_json_equals_transformers(tmp_path, kwargs):
    """The config.json we write holds exactly the keys and values transformers 5 writes (its version aside)."""
    theirs = transformers.PvtV2Config(**kwargs)
    theirs.save_pretrained(tmp_path / "hf")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    hf.pop("transformers_version")
    ours = PvtV2Config(**kwargs)
    ours.save_pretrained(tmp_path / "ours")
    text = (tmp_path / "ours" / "config.json").read_text()
    assert json.loads(text) == hf
    assert text == json.dumps(hf, indent=2, sort_keys=True) + "\n"  # same layout too
    for name in ("out_indices", "out_features", "stage_names", "num_labels", "id2label"):
        assert _norm(getattr(ours, name)) == _norm(getattr(theirs, name)), name
    back = PvtV2Config.from_pretrained(tmp_path / "hf")  # and transformers' file reads back to the same config
    assert back == ours


def test_out_indices_setter_keeps_negatives_like_transformers():
    ours, theirs = PvtV2Config(), transformers.PvtV2Config()
    ours.out_indices = theirs.out_indices = [-2, -1]
    assert ours.out_indices == theirs.out_indices == [-2, -1]
    assert ours.out_features == theirs.out_features == ["stage3", "stage4"]
    assert ours.out_stage_indices == [2, 3]
    ours.out_features = theirs.out_features = ["stage1"]
    assert ours.out_indices == theirs.out_indices == [0]


def test_single_label_classification_needs_two_labels():
    kwargs = dict(problem_type="single_label_classification", num_labels=1)
    with pytest.raises(ValueError, match="single_label_classification"):
        transformers.PvtV2Config(**kwargs)  # the behaviour we match
    with pytest.raises(ValueError, match="problem_type"):
        PvtV2Config(**kwargs)
    PvtV2Config(problem_type="single_label_classification", num_labels=2)


def test_to_json_file(tmp_path):
    c = PvtV2Config(num_labels=4, torch_dtype=__import__("torch").float16)
    c.to_json_file(tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["torch_dtype"] == "float16" and len(data["id2label"]) == 4
    assert PvtV2Config.from_json_file(tmp_path / "c.json") == c
    assert not [p for p in tmp_path.iterdir() if p.name != "c.json"]  # no temporary file left


# ---------------------------------------------------------------------------------------------- validation
BAD_VALUES = [
    ("mlp_ratios", "8844"),
    ("mlp_ratios", None),
    ("mlp_ratios", [8, 8, "4", 4]),
    ("layer_norm_eps", "1e-6"),
    ("layer_norm_eps", 0),
    ("layer_norm_eps", float("nan")),
    ("num_labels", -1),
    ("num_labels", 2.5),
    ("depths", None),
    ("depths", 2),
    ("depths", [2, 2, 2.0, 2]),
    ("hidden_sizes", [32, 64, 160, True]),
    ("sr_ratios", "8421"),
    ("num_attention_heads", [1, 2, 0, 8]),
    ("strides", [4, 2, 2, -2]),
    ("patch_sizes", {"a": 1}),
    ("num_channels", "3"),
    ("num_channels", 0),
    ("num_encoder_blocks", 4.0),
    ("image_size", 0),
    ("image_size", [224]),
    ("image_size", "224"),
    ("hidden_act", None),
    ("hidden_act", "mish"),
    ("hidden_dropout_prob", "0.1"),
    ("attention_probs_dropout_prob", -0.1),
    ("drop_path_rate", float("inf")),
    ("initializer_range", -1.0),
    ("qkv_bias", "yes"),
    ("qkv_bias", 1),
    ("linear_attention", None),
    ("patch_embed_layer_norm_eps", -1e-5),
    ("spatial_reduction_layer_norm_eps", "x"),
    ("out_indices", "0"),
    ("out_indices", [5]),
    ("out_indices", [-5]),
    ("out_indices", [1, 1]),
    ("out_features", "stage1"),
    ("out_features", ["stage4", "stage1"]),
    ("id2label", ["a", "b"]),
    ("id2label", {"x": "a"}),
    ("id2label", {0: 1}),
    ("label2id", {"a": "zero"}),
    ("problem_type", "ranking"),
    ("output_hidden_states", "true"),
    ("return_dict", None),
    ("classifier_dropout_prob", 2),
    ("semantic_loss_ignore_index", 255.0),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_every_bad_value_is_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PvtV2Config(**{field: value})
    with pytest.raises(ValueError, match=field):  # the same through config.json
        PvtV2Config.from_dict({field: value})


@pytest.mark.parametrize(
    "field,value",
    [("layer_norm_eps", "x"), ("depths", None), ("num_labels", -1), ("mlp_ratios", "8844"), ("out_indices", [9])],
)
def test_assignment_is_validated(field, value):
    c = PvtV2Config()
    with pytest.raises(ValueError, match=field):
        setattr(c, field, value)


def test_cross_field_checks_run_before_saving(tmp_path):
    c = PvtV2Config()
    c.depths = [2, 2, 2]  # fine alone, inconsistent with num_encoder_blocks
    with pytest.raises(ValueError, match="depths"):
        c.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize(
    "text,what", [("[1, 2]", "array"), ("3", "int"), ('"pvt"', "str"), ("null", "NoneType"), ("true", "bool")]
)
def test_config_json_top_level_must_be_an_object(tmp_path, text, what):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=f"config: .*JSON object.*{what}"):
        PvtV2Config.from_pretrained(tmp_path)


@pytest.mark.parametrize("value", [None, "8844", [8, 8, None, 4]])
def test_config_json_bad_list_names_the_field(tmp_path, value):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "pvt_v2", "mlp_ratios": value}))
    with pytest.raises(ValueError, match="mlp_ratios"):
        PvtV2Config.from_pretrained(tmp_path)


def test_unserialisable_extra_is_refused():
    with pytest.raises(ValueError, match="my_field"):
        PvtV2Config(my_field=object())
    with pytest.raises(ValueError, match="my_nan"):
        PvtV2Config(my_nan=float("nan"))  # json would write NaN, which is not JSON
