"""from_pretrained keyword handling as transformers' (config fields vs loading options, dtype, loading info,
state_dict=, subfolder, hub options, device_map) and save_pretrained's folder hygiene (stale weights, kept files,
confined shard names, failures that leave the old model)."""

import json

import pytest
import torch
import transformers
from conftest import randomize_

from pvtv2_fast import PvtV2Backbone, PvtV2Config, PvtV2ForImageClassification, PvtV2Model
from pvtv2_fast.checkpoint import CheckpointError

TINY = dict(hidden_sizes=[16, 32, 40, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 5, 8], num_labels=3)


def _tiny(cls=PvtV2ForImageClassification, **kw):
    return randomize_(cls(PvtV2Config(**{**TINY, **kw}))).eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture()
def saved(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "float16"])
def test_dtype_casts_the_parameters(saved, tmp_path, key, dtype):
    model, path = saved
    ours = PvtV2ForImageClassification.from_pretrained(path, **{key: dtype})
    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    assert {p.dtype for p in ours.parameters()} == {want}
    theirs = transformers.PvtV2ForImageClassification.from_pretrained(path, **{key: dtype})
    assert {p.dtype for p in theirs.parameters()} == {want}
    ours.save_pretrained(tmp_path / "again")  # config.json stays JSON (the dtype is not written as an object)
    data = json.loads((tmp_path / "again" / "config.json").read_text())
    assert data["dtype"] == str(want).removeprefix("torch.") and "torch_dtype" not in data
    again = PvtV2ForImageClassification.from_pretrained(tmp_path / "again", dtype="auto")
    assert next(again.parameters()).dtype == want and _same_weights(again, ours)


def test_default_dtype_and_bad_dtype(saved):
    _, path = saved
    assert next(PvtV2ForImageClassification.from_pretrained(path).parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        PvtV2ForImageClassification.from_pretrained(path, dtype=torch.int8)
    with pytest.raises(ValueError, match="dtype"):
        PvtV2ForImageClassification.from_pretrained(path, dtype="float17")


def test_output_loading_info_matches_transformers(saved, tmp_path):
    _, path = saved
    cases = [
        (PvtV2Model, transformers.PvtV2Model, {}),  # classifier in the checkpoint, unused by the encoder
        (
            PvtV2ForImageClassification,
            transformers.PvtV2ForImageClassification,
            dict(num_labels=5, ignore_mismatched_sizes=True),
        ),
    ]
    for ours_cls, theirs_cls, kw in cases:
        model, info = ours_cls.from_pretrained(path, output_loading_info=True, **kw)
        _, hf = theirs_cls.from_pretrained(path, output_loading_info=True, **kw)
        assert isinstance(model, ours_cls) and set(info) == set(hf)
        for key in ("missing_keys", "unexpected_keys"):
            assert set(info[key]) == set(hf[key]), key
        assert {(k, tuple(a), tuple(b)) for k, a, b in info["mismatched_keys"]} == {
            (k, tuple(a), tuple(b)) for k, a, b in hf["mismatched_keys"]
        }
    _tiny(PvtV2Model).save_pretrained(tmp_path / "base")
    _, info = PvtV2ForImageClassification.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}
    assert "output_loading_info" not in json.loads((path / "config.json").read_text())


def test_config_fields_go_to_the_config_and_unknown_keywords_raise(saved):
    _, path = saved
    model = PvtV2ForImageClassification.from_pretrained(path, output_hidden_states=True, drop_path_rate=0.1)
    assert model.config.output_hidden_states and model.config.drop_path_rate == 0.1
    with pytest.raises(TypeError, match="'trust_me'"):
        PvtV2ForImageClassification.from_pretrained(path, trust_me=True)
    with pytest.raises(TypeError, match="'low_cpu_mem_usage', 'mirror'"):
        PvtV2ForImageClassification.from_pretrained(path, mirror="x", low_cpu_mem_usage=True)
    with pytest.raises(TypeError, match="positional"):
        PvtV2ForImageClassification.from_pretrained(path, PvtV2Config())
    with pytest.raises(ValueError, match="layer_norm_eps"):  # a field with a bad value: the field's error
        PvtV2ForImageClassification.from_pretrained(path, layer_norm_eps="tiny")


def test_state_dict_keyword(saved):
    model, path = saved
    sd = model.state_dict()
    again = PvtV2ForImageClassification.from_pretrained(None, config=model.config, state_dict=sd)
    assert _same_weights(again, model)
    with_path = PvtV2ForImageClassification.from_pretrained(path, state_dict=sd)  # config from the folder
    assert _same_weights(with_path, model)
    assert with_path.config.architectures == ["PvtV2ForImageClassification"]  # read from the folder's config.json
    with pytest.raises(TypeError, match="config= and state_dict="):
        PvtV2ForImageClassification.from_pretrained(None, state_dict=sd)
    backbone = PvtV2Backbone.from_pretrained(None, config=model.config, state_dict=sd, out_indices=[-1])
    assert backbone.config.out_indices == [-1]  # overrides apply to a given config too
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 64)).feature_maps
    assert len(maps) == 1 and maps[0].shape[1] == 64


def test_config_keyword_may_be_a_path(saved, tmp_path):
    model, path = saved
    PvtV2Config(**{**TINY, "num_labels": 3}, output_attentions=True).save_pretrained(tmp_path / "cfg")
    again = PvtV2ForImageClassification.from_pretrained(path, config=tmp_path / "cfg")
    assert again.config.output_attentions and _same_weights(again, model)


def test_subfolder(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path / "repo" / "sub")
    again = PvtV2ForImageClassification.from_pretrained(tmp_path / "repo", subfolder="sub")
    assert _same_weights(again, model)
    with pytest.raises(FileNotFoundError, match="subfolder"):
        PvtV2ForImageClassification.from_pretrained(tmp_path / "repo", subfolder="nope")
    with pytest.raises(ValueError, match="subfolder"):
        PvtV2ForImageClassification.from_pretrained(tmp_path / "repo", subfolder="../repo/sub")


@pytest.mark.parametrize("device_map", ["cpu", {"": "cpu"}, torch.device("cpu"), "auto"])
def test_device_map(saved, device_map):
    _, path = saved
    model = PvtV2ForImageClassification.from_pretrained(path, device_map=device_map)
    want = "cuda" if device_map == "auto" and torch.cuda.is_available() else "cpu"
    assert {p.device.type for p in model.parameters()} == {want}


def test_device_map_rejects_what_it_cannot_do(saved):
    _, path = saved
    with pytest.raises(ValueError, match="device_map"):
        PvtV2ForImageClassification.from_pretrained(path, device_map={"pvt_v2": "cpu", "classifier": "cpu"})
    with pytest.raises(ValueError, match="device_map"):
        PvtV2ForImageClassification.from_pretrained(path, device_map="toaster")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_map_cuda(saved):
    _, path = saved
    model = PvtV2ForImageClassification.from_pretrained(path, device_map="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}


def test_use_safetensors(saved):
    model, path = saved
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    assert _same_weights(PvtV2ForImageClassification.from_pretrained(path, use_safetensors=False), model)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        PvtV2ForImageClassification.from_pretrained(path, use_safetensors=True)


def _fake_hub_cache(root, model, repo="org/tiny-pvt", commit="0" * 40):
    cache = root / ("models--" + repo.replace("/", "--"))
    model.save_pretrained(cache / "snapshots" / commit)
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    return repo


def test_hub_options_reach_the_cache(saved, tmp_path, monkeypatch):
    model, _ = saved
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = _fake_hub_cache(tmp_path / "cache", model)
    again = PvtV2ForImageClassification.from_pretrained(
        repo, cache_dir=tmp_path / "cache", local_files_only=True, revision="main"
    )
    assert _same_weights(again, model)
    with pytest.raises(OSError, match="could not reach hub id 'org/tiny-pvt' at revision 'v9'"):
        PvtV2ForImageClassification.from_pretrained(
            repo, cache_dir=tmp_path / "cache", revision="v9", local_files_only=True
        )
    with pytest.raises(OSError, match="local_files_only"):
        PvtV2ForImageClassification.from_pretrained(repo, cache_dir=tmp_path / "empty", local_files_only=True)


# ---------------------------------------------------------------------------------------------- save_pretrained
def test_sharded_save_removes_the_stale_single_file(saved):
    model, path = saved
    other = _tiny(num_labels=3)
    other.save_pretrained(path, max_shard_size="100kB")
    names = sorted(p.name for p in path.iterdir())
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    assert _same_weights(PvtV2ForImageClassification.from_pretrained(path), other)
    model.save_pretrained(path)  # and back: the shards and the index go
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert _same_weights(PvtV2ForImageClassification.from_pretrained(path), model)


def test_save_keeps_other_files_and_drops_old_weight_files(saved):
    model, path = saved
    (path / "preprocessor_config.json").write_text("{}")
    (path / "notes").mkdir()
    (path / "notes" / "a.txt").write_text("keep me")
    (path / "pytorch_model.bin").write_bytes(b"stale")
    model.save_pretrained(path)
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "notes",
        "preprocessor_config.json",
    ]
    assert (path / "notes" / "a.txt").read_text() == "keep me"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_save_through_a_symlink_replaces_the_real_folder(saved, tmp_path):
    model, path = saved
    (tmp_path / "link").symlink_to(path)
    other = _tiny()
    other.save_pretrained(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert _same_weights(PvtV2ForImageClassification.from_pretrained(path), other)


def test_failed_save_leaves_the_old_model(saved, monkeypatch):
    model, path = saved
    import safetensors.torch

    def broken(*args, **kwargs):
        raise PermissionError("disk says no")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(PermissionError):
        _tiny(num_labels=7).save_pretrained(path)
    assert _same_weights(PvtV2ForImageClassification.from_pretrained(path), model)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_save_refuses_a_file_target(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        _tiny().save_pretrained(tmp_path / "f")


def test_max_shard_size_strings(saved, tmp_path):
    model, _ = saved
    with pytest.raises(ValueError, match="max_shard_size"):
        model.save_pretrained(tmp_path / "x", max_shard_size="lots")
    with pytest.raises(ValueError, match="max_shard_size"):
        model.save_pretrained(tmp_path / "x", max_shard_size=0)
    model.save_pretrained(tmp_path / "y", max_shard_size="0.1MiB", safe_serialization=False)
    assert (tmp_path / "y" / "pytorch_model.bin.index.json").is_file()
    assert _same_weights(PvtV2ForImageClassification.from_pretrained(tmp_path / "y"), model)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", "..", ""])
def test_index_cannot_point_outside_the_folder(saved, tmp_path, shard):
    model, path = saved
    model.save_pretrained(path, max_shard_size="100kB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shard name"):
        PvtV2ForImageClassification.from_pretrained(path)


@pytest.mark.parametrize("out_indices", [[-2], [0, -1], [-3, -2]])
def test_backbone_negative_out_indices_match_transformers(tmp_path, out_indices):
    _tiny(PvtV2Model).save_pretrained(tmp_path)
    ours = PvtV2Backbone.from_pretrained(tmp_path, out_indices=out_indices)
    theirs = transformers.PvtV2Backbone.from_pretrained(tmp_path, out_indices=out_indices).eval()
    assert ours.config.out_indices == theirs.config.out_indices == out_indices
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = ours(x).feature_maps, theirs(x).feature_maps
    assert len(a) == len(b) == len(out_indices)
    for u, v in zip(a, b):
        assert u.shape == v.shape and torch.allclose(u, v, atol=1e-5)


@pytest.mark.parametrize("module", ["checkpoint", "convert", "config", "hub", "_atomic"])
def test_checkpoint_code_does_not_import_the_models(module):
    """No checkpoint.py <-> modeling.py import circle: the models' heads are class attributes (head_prefix)."""
    import ast
    import pathlib

    import pvtv2_fast

    tree = ast.parse((pathlib.Path(pvtv2_fast.__file__).parent / f"{module}.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.split(".")[-1] == "modeling"}, imported
