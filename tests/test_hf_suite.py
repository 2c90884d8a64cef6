"""transformers' own model tests, ported: the assertions of ``tests/models/pvt_v2/test_modeling_pvt_v2.py``,
``tests/models/segformer/test_modeling_segformer.py`` and the common tests they inherit (``ModelTesterMixin``,
``BackboneTesterMixin``), run against this library with ``fast=False`` and ``fast=True``. Every numeric check
also compares with transformers' own model holding the same weights. Config tests (``ConfigTester``, the backbone
config tests) are in ``tests/test_hf_config_suite.py``.

The tiny configs are the testers' (PvtV2ModelTester, SegformerModelTester). Where this library deliberately
differs, the test asserts the documented behaviour (README, "transformers' own tests, and where we differ on
purpose"): the tests with "deliberate" in their name, NESTED_VS_FLAT and the backbone's attentions.
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings

import pytest
import torch
import transformers
from conftest import hf_config, randomize_

from pvtv2_fast import (
    PvtV2Backbone,
    PvtV2Config,
    PvtV2ForImageClassification,
    PvtV2ForSemanticSegmentation,
    PvtV2Model,
)
from pvtv2_fast.checkpoint import CheckpointMismatchError

ATOL = 1e-5
BATCHING_ATOL = 5e-4  # transformers' PvtV2ModelTest.test_batching_equivalence

# PvtV2ModelTester (batch 2, 64², dropout 0.1, 3 labels, all four stages out) and SegformerModelTester (batch 13
# there; 3 here, the assertions do not depend on it).
PVT_TESTER = dict(
    image_size=64,
    depths=[2, 2, 2, 2],
    sr_ratios=[8, 4, 2, 1],
    hidden_sizes=[16, 32, 64, 128],
    num_attention_heads=[1, 2, 4, 8],
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    num_labels=3,
    out_indices=[0, 1, 2, 3],
)
SEG_TESTER = dict(
    image_size=64,
    depths=[1, 1, 1, 1],
    sr_ratios=[8, 4, 2, 1],
    hidden_sizes=[8, 8, 16, 16],
    num_attention_heads=[1, 1, 2, 2],
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    num_labels=3,
    decoder_hidden_size=16,
)
IMAGE = 64
BATCH = {"pvt": 2, "seg": 3}

# kind: (our class, transformers' class, which tester). "seg_*": built from a transformers Segformer checkpoint.
KINDS = {
    "model": (PvtV2Model, "PvtV2Model", "pvt"),
    "classifier": (PvtV2ForImageClassification, "PvtV2ForImageClassification", "pvt"),
    "backbone": (PvtV2Backbone, "PvtV2Backbone", "pvt"),
    "seg_model": (PvtV2Model, "SegformerModel", "seg"),
    "seg_classifier": (PvtV2ForImageClassification, "SegformerForImageClassification", "seg"),
    "segmentation": (PvtV2ForSemanticSegmentation, "SegformerForSemanticSegmentation", "seg"),
}
HEADS = ["classifier", "seg_classifier", "segmentation"]
# Deliberate: PvtV2Model / PvtV2ForImageClassification nest attentions per stage (transformers' PvtV2 layout) also
# when loaded from a SegformerModel / SegformerForImageClassification checkpoint, whose attentions are flat. The
# maps are the same, in the same order; for these kinds attentions are compared flattened.
NESTED_VS_FLAT = {"seg_model", "seg_classifier"}
FAST = pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])


def _theirs(kind: str, **overrides):
    _, name, tester = KINDS[kind]
    if tester == "pvt":
        config = hf_config(PvtV2Config(**{**PVT_TESTER, **overrides}))
    else:
        config = transformers.SegformerConfig(**{**SEG_TESTER, **overrides})
    config._attn_implementation = "eager"  # SDPA there returns no attention maps
    return randomize_(getattr(transformers, name)(config), seed=7).eval()


@functools.lru_cache(maxsize=None)
def _saved(kind: str, tmp_root: str):
    """transformers' model saved with random weights; ours is loaded from that folder (the way users get it)."""
    theirs = _theirs(kind)
    folder = f"{tmp_root}/{kind}"
    theirs.save_pretrained(folder)
    return theirs, folder


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_suite"))


def make_pair(kind: str, fast: bool, tmp_root: str):
    theirs, folder = _saved(kind, tmp_root)
    ours = KINDS[kind][0].from_pretrained(folder, fast=fast)
    return ours.eval(), theirs


def pixels(kind: str, batch=None, seed=0, size=IMAGE):
    b = BATCH[KINDS[kind][2]] if batch is None else batch
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def labels_for(model, kind: str, batch: int):
    g = torch.Generator().manual_seed(3)
    if kind == "segmentation":
        return torch.randint(0, model.config.num_labels, (batch, IMAGE, IMAGE), generator=g)
    return torch.randint(0, model.config.num_labels, (batch,), generator=g)


def leaves(out):
    """Every tensor of a (nested) output, in order: the structure transformers' tests recurse through."""
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in leaves(o)]
    return []


def structure(out):
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return tuple(structure(o) for o in out)


def assert_same_outputs(ours, theirs, atol=ATOL, what="outputs", flat=False):
    """Same nesting and shapes (``flat``: same tensors in the same order), every tensor within ``atol``."""
    if flat:
        assert [t.shape for t in leaves(ours)] == [t.shape for t in leaves(theirs)], what
    else:
        assert structure(ours) == structure(theirs), f"{what}: {structure(ours)} vs {structure(theirs)}"
    for i, (a, b) in enumerate(zip(leaves(ours), leaves(theirs))):
        err = (a.float() - b.float()).abs().max().item()
        assert err <= atol, f"{what}: tensor {i} max abs error {err:.3e} > {atol}"


OUTPUT_OPTIONS = [
    {},
    {"output_hidden_states": True},
    {"output_attentions": True},
    {"output_hidden_states": True, "output_attentions": True},
]


# ------------------------------------------------------------------------------------------ model tests
@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_signature(kind, tmp_root):
    """test_forward_signature / test_model_main_input_name: ``pixel_values`` first; every named argument of
    transformers' forward is accepted by ours."""
    ours_cls, name, _ = KINDS[kind]
    ours_args = list(inspect.signature(ours_cls.forward).parameters)[1:]
    theirs_args = [
        p.name
        for p in inspect.signature(getattr(transformers, name).forward).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ][1:]
    assert ours_args[0] == "pixel_values" == ours_cls.main_input_name
    assert set(theirs_args) <= set(ours_args)


@FAST
@pytest.mark.parametrize("kind", ["model", "seg_model"])
def test_model(kind, fast, tmp_root):
    """create_and_check_model: last_hidden_state (B, C_4, H/32, W/32), equal to transformers'."""
    ours, theirs = make_pair(kind, fast, tmp_root)
    x = pixels(kind)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    cfg = ours.config
    assert a.last_hidden_state.shape == (x.shape[0], cfg.hidden_sizes[-1], IMAGE // 32, IMAGE // 32)
    assert_same_outputs(a.last_hidden_state, b.last_hidden_state)


@FAST
@pytest.mark.parametrize("kind", list(KINDS))
def test_hidden_states_output(kind, fast, tmp_root):
    """test_hidden_states_output: one map per stage, the first (C_1, H/4, W/4), by argument and by config."""
    ours, theirs = make_pair(kind, fast, tmp_root)
    x = pixels(kind)
    for by_config in (False, True):
        model = copy.deepcopy(ours)
        kwargs = {"output_hidden_states": True}
        if by_config:
            model.config.output_hidden_states = True
            kwargs = {}
        with torch.no_grad():
            hidden = model(x, **kwargs).hidden_states
            reference = theirs(x, output_hidden_states=True).hidden_states
        assert len(hidden) == model.config.num_encoder_blocks
        assert list(hidden[0].shape[-3:]) == [model.config.hidden_sizes[0], IMAGE // 4, IMAGE // 4]
        assert_same_outputs(hidden, reference, what="hidden_states")


@FAST
@pytest.mark.parametrize("kind", ["model", "classifier", "seg_model", "segmentation"])
def test_attention_outputs(kind, fast, tmp_root):
    """test_attention_outputs: Segformer's semantic-segmentation model returns one (B, heads, N, M) map per block,
    flat; PvtV2 (and the encoder models) one tuple per stage. By argument and by config, attentions last."""
    ours, theirs = make_pair(kind, fast, tmp_root)
    cfg = ours.config
    x = pixels(kind)
    with torch.no_grad():
        out = ours(x, output_attentions=True)
        ref = theirs(x, output_attentions=True)
        by_config = copy.deepcopy(ours)
        by_config.config.output_attentions = True
        again = by_config(x)
        with_hidden = ours(x, output_attentions=True, output_hidden_states=True)
    maps = leaves(out.attentions)
    if kind != "segmentation":
        assert [len(stage) for stage in out.attentions] == cfg.depths
    assert len(maps) == sum(cfg.depths)
    n1, m1 = (IMAGE // 4) ** 2, (IMAGE // (4 * cfg.sr_ratios[0])) ** 2
    assert list(maps[0].shape[-3:]) == [cfg.num_attention_heads[0], n1, m1]
    n4, m4 = (IMAGE // 32) ** 2, (IMAGE // (32 * cfg.sr_ratios[-1])) ** 2
    assert list(maps[-1].shape[-3:]) == [cfg.num_attention_heads[-1], n4, m4]
    assert_same_outputs(out.attentions, ref.attentions, what="attentions", flat=kind in NESTED_VS_FLAT)
    assert_same_outputs(again.attentions, out.attentions, atol=0, what="attentions by config")
    assert len(with_hidden) == len(out) + 1 and with_hidden[-1] is with_hidden.attentions


@FAST
@pytest.mark.parametrize("kind", list(KINDS))
def test_model_outputs_equivalence(kind, fast, tmp_root):
    """test_model_outputs_equivalence: ``return_dict=False`` equals the dict's ``to_tuple()``, for every
    combination of hidden states / attentions (and labels for heads); both equal transformers' tuple."""
    ours, theirs = make_pair(kind, fast, tmp_root)
    x = pixels(kind)
    label_options = [None, labels_for(ours, kind, x.shape[0])] if kind in HEADS else [None]
    for labels in label_options:
        for kwargs in OUTPUT_OPTIONS:
            if labels is not None:
                kwargs = {**kwargs, "labels": labels}
            with torch.no_grad():
                as_tuple = ours(x, return_dict=False, **kwargs)
                as_dict = ours(x, return_dict=True, **kwargs)
                reference = theirs(x, return_dict=False, **kwargs)
            assert isinstance(as_tuple, tuple)
            assert_same_outputs(
                as_tuple,
                reference,
                what=f"tuple {sorted(kwargs)}",
                flat=kind in NESTED_VS_FLAT and kwargs.get("output_attentions", False),
            )
            if kind == "backbone" and kwargs.get("output_attentions"):
                continue  # deliberate: the dict also carries attentions; test_backbone_attentions_deliberate
            assert_same_outputs(as_tuple, as_dict.to_tuple(), atol=0, what=f"dict {sorted(kwargs)}")


@FAST
@pytest.mark.parametrize("kind", list(KINDS))
def test_determinism(kind, fast, tmp_root):
    ours, _ = make_pair(kind, fast, tmp_root)
    x = pixels(kind)
    with torch.no_grad():
        assert_same_outputs(ours(x), ours(x), atol=0)


@FAST
@pytest.mark.parametrize("kind", list(KINDS))
def test_batching_equivalence(kind, fast, tmp_root):
    """test_batching_equivalence: each sample of a batch equals that sample run alone (every output tensor)."""
    ours, _ = make_pair(kind, fast, tmp_root)
    x = pixels(kind, batch=3, seed=4)
    with torch.no_grad():
        batched = leaves(ours(x, output_hidden_states=True))
        for i in range(x.shape[0]):
            single = leaves(ours(x[i : i + 1], output_hidden_states=True))
            for a, b in zip(batched, single):
                assert (a[i : i + 1] - b).abs().max().item() <= BATCHING_ATOL


@FAST
@pytest.mark.parametrize("kind", list(KINDS))
def test_save_load(kind, fast, tmp_root, tmp_path):
    """test_save_load / test_can_use_safetensors: our save loads back to the same outputs and state dict; the
    PvtV2 classes' saves load in transformers too."""
    ours, theirs = make_pair(kind, fast, tmp_root)
    ours.save_pretrained(tmp_path)
    again = type(ours).from_pretrained(tmp_path, fast=fast)
    assert again.state_dict().keys() == ours.state_dict().keys()
    x = pixels(kind)
    with torch.no_grad():
        assert_same_outputs(again(x), ours(x), atol=0)
    if KINDS[kind][2] == "pvt":
        reloaded = getattr(transformers, KINDS[kind][1]).from_pretrained(tmp_path).eval()
        with torch.no_grad():
            assert_same_outputs(ours(x), reloaded(x))


def test_save_load_head_to_base_and_back(tmp_path, caplog):
    """test_save_load_fast_init_from_base / _to_base: a head checkpoint loads into the base model and a base
    checkpoint into a head model (the head is initialised, with a warning), as in transformers."""
    ours, _ = make_pair("classifier", False, str(tmp_path))
    ours.save_pretrained(tmp_path / "head")
    base = PvtV2Model.from_pretrained(tmp_path / "head")
    for k, v in base.state_dict().items():
        assert torch.equal(v, ours.state_dict()["pvt_v2." + k])
    base.save_pretrained(tmp_path / "base")
    with caplog.at_level("WARNING", logger="pvtv2_fast.checkpoint"):
        head = PvtV2ForImageClassification.from_pretrained(tmp_path / "base", num_labels=3)
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text
    for k, v in base.state_dict().items():
        assert torch.equal(head.state_dict()["pvt_v2." + k], v)


def test_load_with_mismatched_shapes_deliberate(tmp_path):
    """test_load_with_mismatched_shapes. Deliberate difference: transformers raises RuntimeError for a head of
    another size; we raise CheckpointMismatchError (a ValueError naming every mismatched key) before copying
    anything. With ignore_mismatched_sizes=True both load and re-initialise the head."""
    ours, _ = make_pair("classifier", False, str(tmp_path))
    ours.save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="classifier.weight"):
        PvtV2ForImageClassification.from_pretrained(tmp_path, num_labels=42)
    with pytest.raises(RuntimeError):
        transformers.PvtV2ForImageClassification.from_pretrained(tmp_path, num_labels=42)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PvtV2ForImageClassification.from_pretrained(tmp_path, num_labels=42, ignore_mismatched_sizes=True)
    assert model(pixels("classifier")).logits.shape == (2, 42)


@FAST
@pytest.mark.parametrize("kind", HEADS)
def test_training(kind, fast, tmp_root):
    """test_training: train mode (dropout on), the loss back-propagates into every parameter."""
    ours, _ = make_pair(kind, fast, tmp_root)
    ours.train()
    x = pixels(kind)
    loss = ours(x, labels=labels_for(ours, kind, x.shape[0])).loss
    loss.backward()
    missing = [n for n, p in ours.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


@FAST
@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("kind", ["classifier", "segmentation"])
def test_training_gradient_checkpointing(kind, use_reentrant, fast, tmp_root):
    """test_training_gradient_checkpointing(_use_reentrant): the blocks really are recomputed in the backward
    pass (each block runs twice), and the gradients equal those without checkpointing (same dropout masks: the
    checkpoint restores the RNG state)."""
    ours, _ = make_pair(kind, fast, tmp_root)
    x = pixels(kind)
    labels = labels_for(ours, kind, x.shape[0])
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(ours).train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": use_reentrant})
        calls = []
        block = model.base_model.encoder.layers[0].blocks[0]
        # a pre-hook: non-reentrant checkpointing stops the recomputation once it has what backward needs, so
        # the block's post-forward hooks need not run the second time
        block.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        torch.manual_seed(0)
        model(x, labels=labels).loss.backward()
        assert len(calls) == (2 if checkpointing else 1)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert grads[1][name] is not None, name
        assert (g - grads[1][name]).abs().max().item() <= ATOL, name


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradient_checkpointing_enable_disable(kind, tmp_root):
    ours, theirs = make_pair(kind, False, tmp_root)
    assert ours.supports_gradient_checkpointing and not ours.is_gradient_checkpointing
    ours.gradient_checkpointing_enable()
    assert ours.is_gradient_checkpointing
    assert all(stage.gradient_checkpointing for stage in ours.base_model.encoder.layers)
    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing
    assert theirs.supports_gradient_checkpointing
    ours.activation_checkpointing_enable({"use_reentrant": True})  # transformers 5's names
    assert ours.is_activation_checkpointing and ours.base_model.encoder.layers[0].checkpoint_kwargs["use_reentrant"]
    ours.activation_checkpointing_disable()
    assert not ours.is_activation_checkpointing


@FAST
@pytest.mark.parametrize("kind", ["classifier", "segmentation"])
def test_retain_grad_hidden_states_attentions(kind, fast, tmp_root):
    ours, _ = make_pair(kind, fast, tmp_root)
    ours.config.output_hidden_states = ours.config.output_attentions = True
    try:
        out = ours(pixels(kind))
        hidden = out.hidden_states[0]
        attention = out.attentions[0] if kind == "segmentation" else out.attentions[0][0]
        hidden.retain_grad()
        attention.retain_grad()
        out[0].flatten()[0].backward()
        assert hidden.grad is not None and attention.grad is not None
    finally:
        ours.config.output_hidden_states = ours.config.output_attentions = False


PROBLEMS = [
    ("regression", 1, torch.float),
    ("single_label_classification", 3, torch.long),
    ("multi_label_classification", 3, torch.float),
]


@FAST
@pytest.mark.parametrize("problem, num_labels, dtype", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_problem_types(problem, num_labels, dtype, fast, tmp_path):
    """test_problem_types: each problem type's loss (by config and inferred from labels), no broadcasting
    warning, equal to transformers' loss."""
    theirs = _theirs("classifier", num_labels=num_labels, problem_type=problem)
    theirs.save_pretrained(tmp_path)
    ours = PvtV2ForImageClassification.from_pretrained(tmp_path, fast=fast)
    x = pixels("classifier")
    g = torch.Generator().manual_seed(5)
    if problem == "multi_label_classification":
        labels = torch.randint(0, 2, (2, num_labels), generator=g).to(dtype)
    elif problem == "regression":
        labels = torch.randn(2, generator=g)
    else:
        labels = torch.randint(0, num_labels, (2,), generator=g)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*target size.*")
        loss = ours(x, labels=labels).loss
    with torch.no_grad():
        reference = theirs(x, labels=labels).loss
    assert abs(loss.item() - reference.item()) <= ATOL
    loss.backward()
    inferred = copy.deepcopy(ours)
    inferred.config.problem_type = None
    with torch.no_grad():
        assert abs(inferred(x, labels=labels).loss.item() - loss.item()) <= ATOL


@FAST
@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
def test_for_image_segmentation(binary, fast, tmp_path):
    """create_and_check_for_(binary_)image_segmentation: logits (B, labels, H/4, W/4), a positive loss equal to
    transformers'. Binary: num_labels=1 and all-zero labels."""
    num_labels = 1 if binary else 3
    theirs = _theirs("segmentation", num_labels=num_labels)
    theirs.save_pretrained(tmp_path)
    ours = PvtV2ForSemanticSegmentation.from_pretrained(tmp_path, fast=fast)
    x = pixels("segmentation")
    labels = torch.zeros(3, IMAGE, IMAGE, dtype=torch.long) if binary else labels_for(ours, "segmentation", 3)
    with torch.no_grad():
        plain, out, ref = ours(x), ours(x, labels=labels), theirs(x, labels=labels)
    assert plain.logits.shape == out.logits.shape == (3, num_labels, IMAGE // 4, IMAGE // 4)
    assert out.loss > 0
    assert abs(out.loss.item() - ref.loss.item()) <= ATOL


def test_segmentation_labels_without_classes():
    model = PvtV2ForSemanticSegmentation(PvtV2Config(**PVT_TESTER))
    model.config.num_labels = 0
    with pytest.raises(ValueError, match="num_labels"):
        model(pixels("segmentation"), labels=torch.zeros(3, IMAGE, IMAGE, dtype=torch.long))


@FAST
@pytest.mark.parametrize("kind", ["model", "classifier", "backbone", "segmentation"])
def test_torch_export(kind, fast, tmp_root):
    """test_torch_export (PvtV2ModelTest.test_torch_exportable): torch.export traces the model, same outputs."""
    ours, _ = make_pair(kind, fast, tmp_root)
    x = pixels(kind)
    program = torch.export.export(ours, (x,))
    with torch.no_grad():
        assert_same_outputs(program.module()(x), ours(x))


@pytest.mark.parametrize("kind", list(KINDS))
def test_pretrained_model_attributes(kind, tmp_root):
    """base_model, can_generate(), main_input_name, config_class, device, dtype as on transformers' models."""
    ours, theirs = make_pair(kind, False, tmp_root)
    assert (ours.base_model is ours) == (theirs.base_model is theirs)
    if ours.base_model is not ours:
        assert isinstance(ours.base_model, PvtV2Model)
    assert ours.can_generate() is theirs.can_generate() is False
    assert ours.main_input_name == theirs.main_input_name
    assert ours.device == theirs.device and ours.dtype == theirs.dtype


# ------------------------------------------------------------------------------------------ backbone tests
def _backbone(fast, tmp_root, **changes):
    ours, theirs = make_pair("backbone", fast, tmp_root)
    for name, value in changes.items():
        setattr(ours, name, value)
        setattr(theirs, name, value)
    return ours, theirs


@pytest.mark.parametrize("attr", ["stage_names", "num_features", "out_features", "out_feature_channels", "channels"])
def test_backbone_common_attributes(attr, tmp_root):
    """test_backbone_common_attributes: the BackboneMixin attributes, equal to transformers'."""
    ours, theirs = _backbone(False, tmp_root)
    assert getattr(ours, attr) == getattr(theirs, attr)
    assert ours.backbone_type == theirs.backbone_type.value == "transformers"
    assert len(ours.channels) == len(ours.out_indices) <= len(ours.num_features) == len(ours.stage_names)
    assert len(ours.out_feature_channels) == len(ours.stage_names)


@FAST
@pytest.mark.parametrize(
    "selection",
    [{"out_indices": [-2, -1]}, {"out_features": ["stage1", "stage3"]}, {"out_features": None}, {"out_indices": None}],
    ids=["indices-2-1", "features13", "features-none", "indices-none"],
)
def test_backbone_stage_selection(selection, fast, tmp_root):
    """test_backbone_stage_selection / test_channels / test_create_from_modified_config: setting out_features
    or out_indices on the model (None = last stage) selects the maps and channels transformers selects."""
    ours, theirs = _backbone(fast, tmp_root, **selection)
    assert ours.out_features == theirs.out_features
    assert ours.channels == theirs.channels
    assert ours.channels == [ours.out_feature_channels[n] for n in ours.stage_names if n in ours.out_features]
    x = pixels("backbone")
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert isinstance(a.feature_maps, tuple) and len(a.feature_maps) == len(ours.channels)
    for m, c in zip(a.feature_maps, ours.channels):
        assert m.shape[:2] == (x.shape[0], c)
    assert_same_outputs(a.feature_maps, b.feature_maps)
    model_config = PvtV2Backbone(ours.config)  # the config is untouched by the setters
    assert model_config.out_features == ours.config.out_features


def test_backbone_out_features_setter_validates(tmp_root):
    ours, _ = _backbone(False, tmp_root)
    with pytest.raises(ValueError, match="out_features"):
        ours.out_features = ["stage9"]
    assert ours.out_features == ["stage1", "stage2", "stage3", "stage4"]


@FAST
def test_backbone_outputs(fast, tmp_root):
    """test_backbone_outputs: feature maps only by default; hidden_states for every stage when asked."""
    ours, theirs = _backbone(fast, tmp_root)
    x = pixels("backbone")
    with torch.no_grad():
        plain = ours(x)
        hidden = ours(x, output_hidden_states=True)
        ref = theirs(x, output_hidden_states=True)
    assert plain.hidden_states is None and plain.attentions is None
    assert len(hidden.hidden_states) == len(ours.stage_names)
    assert_same_outputs(hidden.hidden_states, ref.hidden_states)


@FAST
def test_backbone_attentions_deliberate(fast, tmp_root):
    """Deliberate difference: transformers' PvtV2Backbone ignores output_attentions (attentions=None); ours
    returns them in the BackboneOutput. The tuple (return_dict=False) is transformers' (feature_maps, [hidden])."""
    ours, theirs = _backbone(fast, tmp_root)
    x = pixels("backbone")
    with torch.no_grad():
        out = ours(x, output_attentions=True)
        ref = theirs(x, output_attentions=True)
        as_tuple = ours(x, output_attentions=True, return_dict=False)
    assert ref.attentions is None
    assert [len(stage) for stage in out.attentions] == ours.config.depths
    assert len(as_tuple) == len(theirs(x, output_attentions=True, return_dict=False)) == 1
