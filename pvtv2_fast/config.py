"""`PvtV2Config`: the same fields and defaults as transformers' `PvtV2Config`, plus the presets B0–B5.

Every field is declared once, in :data:`FIELDS` (name, default, validator, where it comes from, when it is written
to ``config.json``); the constructor's signature, attribute assignment, validation and :meth:`PvtV2Config.to_dict`
all derive from that table. Invalid values raise ``ValueError`` naming the field, on construction and on
assignment; checks that relate fields (per-stage list lengths, head divisibility, labels vs ``problem_type``) run
on construction and before saving.

The config reads and writes the hub's ``config.json`` so a transformers checkpoint folder loads as it is, and a
folder written by :meth:`PvtV2Config.save_pretrained` loads in transformers: the transformers fields are written as
transformers 5 writes them (same keys, same values; ``id2label`` / ``label2id``, ``problem_type`` and the output
flags only when they differ from the defaults).

Fields beyond transformers' PvtV2Config:

* ``patch_embed_layer_norm_eps`` and ``spatial_reduction_layer_norm_eps``: transformers uses ``layer_norm_eps``
  (1e-6) for every LayerNorm, while timm and the original PVTv2 code use PyTorch's default
  (:data:`TORCH_LAYER_NORM_EPS`) in the patch-embedding and spatial-reduction LayerNorms. ``None`` (the default)
  means "same as ``layer_norm_eps``", i.e. transformers' numerics; timm and original checkpoints set both.
* ``decoder_hidden_size``, ``classifier_dropout_prob``, ``semantic_loss_ignore_index``: the Segformer decode head
  of :class:`~pvtv2_fast.PvtV2ForSemanticSegmentation` (transformers' ``SegformerConfig`` names and defaults).

Both groups are written to ``config.json`` only when they differ from their defaults, so transformers-made folders
stay alike.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

__all__ = [
    "PvtV2Config",
    "PRESETS",
    "preset_names",
    "SUPPORTED_ACTIVATIONS",
    "FIELDS",
    "Field",
    "TORCH_LAYER_NORM_EPS",
    "CONFIG_NAME",
]

CONFIG_NAME = "config.json"

# PyTorch's nn.LayerNorm default: timm's and the original code's patch-embedding / spatial-reduction LayerNorms,
# and every LayerNorm of transformers' Segformer (whatever its config's layer_norm_eps says).
TORCH_LAYER_NORM_EPS = 1e-5

# Activations a config may name in ``hidden_act`` (transformers' ACT2FN names that make sense here).
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# Hidden sizes, depths, heads and MLP ratios of the published models (arXiv 2106.13797, Table 1 / the released code).
_WIDE = [64, 128, 320, 512]
PRESETS: Dict[str, Dict[str, Any]] = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2]),
    "b1": dict(hidden_sizes=_WIDE, depths=[2, 2, 2, 2]),
    "b2": dict(hidden_sizes=_WIDE, depths=[3, 4, 6, 3]),
    "b2_linear": dict(hidden_sizes=_WIDE, depths=[3, 4, 6, 3], linear_attention=True),
    "b3": dict(hidden_sizes=_WIDE, depths=[3, 4, 18, 3]),
    "b4": dict(hidden_sizes=_WIDE, depths=[3, 8, 27, 3]),
    "b5": dict(hidden_sizes=_WIDE, depths=[3, 6, 40, 3], mlp_ratios=[4, 4, 4, 4]),
}
_PRESET_ALIASES = {"b2_li": "b2_linear", "b2li": "b2_linear", "b2_lin": "b2_linear"}


def preset_names() -> List[str]:
    return list(PRESETS)


def _normalise_preset(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    for prefix in ("opengvlab/", "pvt_v2_", "pvtv2_", "pvt_v2", "pvtv2"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    key = key.lstrip("_")
    key = _PRESET_ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"preset: unknown PVTv2 preset {name!r}; choose one of {', '.join(PRESETS)}")
    return key


# ---------------------------------------------------------------------------------------------- validators
# Each validator takes (field name, value) and returns the value to store, or raises ValueError naming the field.
Validator = Callable[[str, Any], Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(minimum: Optional[int] = None) -> Validator:
    def check(name: str, v: Any) -> int:
        if not _is_int(v) or (minimum is not None and v < minimum):
            bound = "an integer" if minimum is None else f"an integer >= {minimum}"
            raise ValueError(f"{name}: must be {bound}, got {v!r}")
        return v

    return check


def _number(low: float, high: float = math.inf, low_open: bool = False) -> Validator:
    def check(name: str, v: Any) -> float:
        if not _is_number(v) or v < low or (low_open and v == low) or v > high:
            rng = f"> {low}" if low_open else f">= {low}" if high == math.inf else f"within [{low}, {high}]"
            raise ValueError(f"{name}: must be a finite number {rng}, got {v!r}")
        return v

    return check


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name}: must be true or false, got {v!r}")
    return v


def _choice(options: Sequence[Any]) -> Validator:
    def check(name: str, v: Any) -> Any:
        if not isinstance(v, str) or v not in options:
            raise ValueError(f"{name}: {v!r} is not one of {', '.join(map(str, options))}")
        return v

    return check


def _optional(inner: Validator) -> Validator:
    def check(name: str, v: Any) -> Any:
        return None if v is None else inner(name, v)

    return check


def _per_stage(item: Validator, what: str) -> Validator:
    """A list (or tuple) with one entry per stage; each entry checked by ``item``. Stored as a list."""

    def check(name: str, v: Any) -> list:
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"{name}: must be a list with one {what} per stage, got {type(v).__name__} {v!r}")
        for x in v:
            try:
                item(name, x)
            except ValueError:
                raise ValueError(f"{name}: entries must be {what}s, got {list(v)!r}") from None
        return list(v)

    return check


def _image_size(name: str, v: Any) -> list:
    if _is_int(v) and v > 0:
        return [v, v]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v):
        return list(v)
    raise ValueError(f"{name}: must be a positive integer or a [height, width] pair of them, got {v!r}")


def _out_features(name: str, v: Any) -> Optional[list]:
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{name}: must be a list of stage names, got {v!r}")
    return list(v)


def _out_indices(name: str, v: Any) -> Optional[list]:
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or not all(_is_int(x) for x in v):
        raise ValueError(f"{name}: must be a list of stage indices, got {v!r}")
    return list(v)


def _id2label(name: str, v: Any) -> Optional[dict]:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise ValueError(f"{name}: must be a mapping from class index to label name, got {type(v).__name__}")
    out = {}
    for k, label in v.items():
        try:
            index = int(k)  # JSON keys are strings
        except (TypeError, ValueError):
            raise ValueError(f"{name}: keys must be class indices, got {k!r}") from None
        if isinstance(k, (bool, float)) or index < 0 or (isinstance(k, str) and k.strip() != str(index)):
            raise ValueError(f"{name}: keys must be class indices >= 0, got {k!r}")
        if not isinstance(label, str):
            raise ValueError(f"{name}: label names must be strings, got {label!r} for class {index}")
        out[index] = label
    return out


def _label2id(name: str, v: Any) -> Optional[dict]:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise ValueError(f"{name}: must be a mapping from label name to class index, got {type(v).__name__}")
    out = {}
    for label, index in v.items():
        try:
            out[str(label)] = int(index)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: values must be class indices, got {index!r} for {label!r}") from None
        if isinstance(index, (bool, float)) or out[str(label)] < 0:
            raise ValueError(f"{name}: values must be class indices >= 0, got {index!r} for {label!r}")
    return out


# ---------------------------------------------------------------------------------------------- the field table
@dataclass(frozen=True)
class Field:
    """One config field. ``origin``: ``"transformers"`` (transformers' PvtV2Config), ``"common"`` (transformers'
    PretrainedConfig, shared by every model), ``"pvtv2_fast"`` or ``"segformer"`` (this library's additions).
    ``written``: ``"always"``, ``"unless_default"`` or ``"never"`` (derived from other fields).
    ``plain``: stored as an attribute; False for the fields kept in step with others through properties."""

    name: str
    default: Any
    check: Validator
    origin: str = "transformers"
    written: str = "always"
    plain: bool = True
    doc: str = ""


_POS_INT = _int(1)
_PROB = _number(0.0, 1.0)
_EPS = _number(0.0, low_open=True)

FIELDS: tuple = (
    Field("image_size", 224, _image_size, doc="nominal input size (not a limit: any size works)"),
    Field("num_channels", 3, _POS_INT),
    Field("num_encoder_blocks", 4, _POS_INT, doc="number of stages"),
    Field("depths", (2, 2, 2, 2), _per_stage(_POS_INT, "positive integer"), doc="blocks per stage"),
    Field("sr_ratios", (8, 4, 2, 1), _per_stage(_POS_INT, "integer >= 1"), doc="spatial-reduction ratio per stage"),
    Field("hidden_sizes", (32, 64, 160, 256), _per_stage(_POS_INT, "positive integer")),
    Field("patch_sizes", (7, 3, 3, 3), _per_stage(_POS_INT, "positive integer")),
    Field("strides", (4, 2, 2, 2), _per_stage(_POS_INT, "positive integer")),
    Field("num_attention_heads", (1, 2, 5, 8), _per_stage(_POS_INT, "positive integer")),
    Field("mlp_ratios", (8, 8, 4, 4), _per_stage(_number(0.0, low_open=True), "number > 0")),
    Field("hidden_act", "gelu", _choice(SUPPORTED_ACTIVATIONS)),
    Field("hidden_dropout_prob", 0.0, _PROB),
    Field("attention_probs_dropout_prob", 0.0, _PROB),
    Field("initializer_range", 0.02, _number(0.0)),
    Field("drop_path_rate", 0.0, _PROB),
    Field("layer_norm_eps", 1e-6, _EPS),
    Field("qkv_bias", True, _bool),
    Field("linear_attention", False, _bool, doc="Linear SRA: 7x7 average pooling instead of strided convs"),
    Field("out_features", None, _out_features, plain=False, doc="backbone outputs, by stage name"),
    Field("out_indices", None, _out_indices, plain=False, doc="backbone outputs, by stage index (negatives kept)"),
    Field(
        "patch_embed_layer_norm_eps",
        None,
        _optional(_EPS),
        origin="pvtv2_fast",
        written="unless_default",
        doc="eps of the patch-embedding LayerNorms; None: layer_norm_eps",
    ),
    Field(
        "spatial_reduction_layer_norm_eps",
        None,
        _optional(_EPS),
        origin="pvtv2_fast",
        written="unless_default",
        doc="eps of the spatial-reduction LayerNorms; None: layer_norm_eps",
    ),
    Field("decoder_hidden_size", 256, _POS_INT, origin="segformer", written="unless_default"),
    Field("classifier_dropout_prob", 0.1, _PROB, origin="segformer", written="unless_default"),
    Field("semantic_loss_ignore_index", 255, _int(), origin="segformer", written="unless_default"),
    Field(
        "num_labels",
        None,
        _optional(_int(0)),
        origin="common",
        written="never",
        plain=False,
        doc="classes (default 2, or len(id2label)); 0 gives an identity head",
    ),
    Field("id2label", None, _id2label, origin="common", written="unless_default", plain=False),
    Field("label2id", None, _label2id, origin="common", written="unless_default", plain=False),
    Field("problem_type", None, _optional(_choice(PROBLEM_TYPES)), origin="common", written="unless_default"),
    Field("output_hidden_states", False, _bool, origin="common", written="unless_default"),
    Field("output_attentions", False, _bool, origin="common", written="unless_default"),
    Field("return_dict", True, _bool, origin="common", written="unless_default"),
)
FIELD = {f.name: f for f in FIELDS}
_PLAIN = {f.name for f in FIELDS if f.plain}
PER_STAGE_FIELDS = (
    "depths",
    "sr_ratios",
    "hidden_sizes",
    "patch_sizes",
    "strides",
    "num_attention_heads",
    "mlp_ratios",
)
# Keys transformers writes that are derived here (or describe the writer): read and dropped.
_DERIVED_KEYS = ("stage_names", "model_type", "transformers_version", "_out_features", "_out_indices")


def _json_value(name: str, value: Any) -> Any:
    """An extra (undeclared) key's value as it will be written; config.json must stay valid JSON."""
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":  # torch_dtype / dtype, as transformers
        return str(value).removeprefix("torch.")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: the value {value!r} cannot be written to config.json ({e})") from None
    return value


class PvtV2Config:
    """Configuration of a PVTv2 model; field names and defaults follow transformers' ``PvtV2Config``.

    The defaults describe PVTv2-B0. ``PvtV2Config.from_preset("b2")`` gives the other published sizes.
    Invalid values raise ``ValueError`` naming the field. Keys this library does not use (``architectures``,
    ``torch_dtype``, ...) are kept, so a config.json round-trips.
    """

    model_type = "pvt_v2"

    def __init__(self, **kwargs: Any) -> None:  # signature: see __signature__ below, derived from FIELDS
        values = {f.name: kwargs.pop(f.name, f.default) for f in FIELDS}
        for name in _PLAIN:
            setattr(self, name, values[name])  # validated by __setattr__

        self._set_labels(values["num_labels"], values["id2label"], values["label2id"])

        # Keys this library does not use (architectures, torch_dtype, ...) are kept so a config round-trips.
        for derived in _DERIVED_KEYS:
            kwargs.pop(derived, None)
        extra = {}
        for key, value in kwargs.items():
            if not isinstance(key, str) or not key.isidentifier() or key.startswith("_"):
                raise ValueError(f"{key!r}: not a config field name")
            extra[key] = _json_value(key, value)
        object.__setattr__(self, "_extra", extra)
        for key, value in extra.items():
            object.__setattr__(self, key, value)

        self.validate()
        self._out_features, self._out_indices = self._align_out_features(values["out_features"], values["out_indices"])

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PLAIN:
            value = FIELD[name].check(name, value)
        elif name in getattr(self, "_extra", ()):
            value = _json_value(name, value)
            self._extra[name] = value
        object.__setattr__(self, name, value)

    @classmethod
    def field_names(cls) -> List[str]:
        """Every declared field (the keyword arguments of the constructor)."""
        return [f.name for f in FIELDS]

    # ------------------------------------------------------------------ labels
    def _set_labels(self, num_labels, id2label, label2id) -> None:
        """transformers' PretrainedConfig rules: id2label wins, else num_labels (default 2) LABEL_i names."""
        num_labels = FIELD["num_labels"].check("num_labels", num_labels)
        id2label = _id2label("id2label", id2label)
        label2id = _label2id("label2id", label2id)
        if id2label is not None:
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(f"num_labels: {num_labels} disagrees with id2label, which has {len(id2label)} entries")
        else:
            id2label = {i: f"LABEL_{i}" for i in range(2 if num_labels is None else num_labels)}
        object.__setattr__(self, "id2label", id2label)
        object.__setattr__(self, "label2id", label2id if label2id is not None else {v: k for k, v in id2label.items()})

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        value = FIELD["num_labels"].check("num_labels", value)
        if value is None:
            raise ValueError("num_labels: must be an integer >= 0, got None")
        if value != len(self.id2label):
            self._set_labels(value, None, None)

    # ------------------------------------------------------------------ backbone outputs
    @property
    def stage_names(self) -> List[str]:
        return [f"stage{i}" for i in range(1, len(self.depths) + 1)]

    @property
    def out_features(self) -> List[str]:
        return list(self._out_features)

    @out_features.setter
    def out_features(self, value: Optional[List[str]]) -> None:
        self._out_features, self._out_indices = self._align_out_features(value, None)

    @property
    def out_indices(self) -> List[int]:
        """As given (negative indices kept, as transformers keeps them); see :attr:`out_stage_indices`."""
        return list(self._out_indices)

    @out_indices.setter
    def out_indices(self, value: Optional[List[int]]) -> None:
        self._out_features, self._out_indices = self._align_out_features(None, value)

    @property
    def out_stage_indices(self) -> List[int]:
        """:attr:`out_indices` as positions ``0 .. num_encoder_blocks - 1``."""
        return [i % len(self.stage_names) for i in self._out_indices]

    def _align_out_features(self, out_features, out_indices):
        """transformers' BackboneConfigMixin semantics: either may be given (the other is derived; out_indices
        keeps negative entries); the default is the last stage."""
        out_features = _out_features("out_features", out_features)
        out_indices = _out_indices("out_indices", out_indices)
        names = self.stage_names
        if out_features is not None:
            unknown = [f for f in out_features if f not in names]
            if unknown:
                raise ValueError(f"out_features: {unknown} are not stage names; choose from {names}")
            if out_features != [f for f in names if f in out_features]:
                raise ValueError(f"out_features: must be in stage order without duplicates, got {out_features}")
        if out_indices is not None:
            if any(not -len(names) <= i < len(names) for i in out_indices):
                raise ValueError(f"out_indices: {out_indices} out of range for {len(names)} stages")
            positive = [i % len(names) for i in out_indices]
            if positive != sorted(set(positive)):
                raise ValueError(f"out_indices: must be in stage order without duplicates, got {out_indices}")
        if out_features is None and out_indices is None:
            return [names[-1]], [len(names) - 1]
        if out_features is None:
            return [names[i] for i in out_indices], out_indices
        if out_indices is None:
            return out_features, [names.index(f) for f in out_features]
        if [names[i] for i in out_indices] != out_features:
            raise ValueError(f"out_features: {out_features} and out_indices {out_indices} name different stages")
        return out_features, out_indices

    # ------------------------------------------------------------------ derived values
    @property
    def embed_layer_norm_eps(self) -> float:
        """eps of the patch-embedding LayerNorms."""
        eps = self.patch_embed_layer_norm_eps
        return self.layer_norm_eps if eps is None else eps

    @property
    def sr_layer_norm_eps(self) -> float:
        """eps of the spatial-reduction LayerNorms."""
        eps = self.spatial_reduction_layer_norm_eps
        return self.layer_norm_eps if eps is None else eps

    # ------------------------------------------------------------------ validation across fields
    def validate(self) -> None:
        """Checks that relate fields (each field alone is checked when it is set). Raises ValueError naming one."""
        for name in _PLAIN:  # values may have been put in __dict__ directly
            FIELD[name].check(name, getattr(self, name))
        n = self.num_encoder_blocks
        for name in PER_STAGE_FIELDS:
            values = getattr(self, name)
            if len(values) != n:
                raise ValueError(
                    f"{name}: has {len(values)} entries but num_encoder_blocks is {n}; every per-stage list "
                    f"({', '.join(PER_STAGE_FIELDS)}) needs one entry per stage"
                )
        for i, (c, h) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)):
            if c % h:
                raise ValueError(
                    f"hidden_sizes: stage {i + 1} hidden size {c} is not divisible by its num_attention_heads {h}"
                )
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ValueError(  # as transformers' PretrainedConfig: its cross-entropy over one class is always 0
                'problem_type: "single_label_classification" requires num_labels > 1; for binary classification '
                'use num_labels=2, or problem_type="regression" for a single-output regression head'
            )

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "PvtV2Config":
        """``b0, b1, b2, b2_linear, b3, b4, b5`` (also ``pvt_v2_b2_li`` style names); keyword overrides win."""
        return cls(**{**PRESETS[_normalise_preset(name)], **overrides})

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        """The dictionary transformers writes to ``config.json`` for this config (plus this library's fields
        where they differ from their defaults, and the undeclared keys it was given)."""
        out: Dict[str, Any] = {"model_type": self.model_type, "stage_names": self.stage_names}
        for f in FIELDS:
            if f.written == "never":
                continue
            value = getattr(self, f.name)
            if f.name == "id2label":
                value = {str(k): v for k, v in value.items()}
                default = {str(i): f"LABEL_{i}" for i in range(2)}
            elif f.name == "label2id":
                value, default = dict(value), {f"LABEL_{i}": i for i in range(2)}
            else:
                value = copy.deepcopy(value)
                default = list(f.default) if isinstance(f.default, tuple) else f.default
            if f.written == "unless_default" and value == default:
                continue
            out[f.name] = value
        for key in self._extra:
            out[key] = copy.deepcopy(getattr(self, key))
        return out

    @classmethod
    def from_dict(cls, data: Any, **overrides: Any) -> "PvtV2Config":
        if not isinstance(data, Mapping):
            raise ValueError(
                f"config: must be a JSON object (a mapping of field names to values), got "
                f"{type(data).__name__} {data!r:.80}"
            )
        bad_keys = [k for k in data if not isinstance(k, str)]
        if bad_keys:
            raise ValueError(f"config: field names must be strings, got {bad_keys[:5]}")
        # Overriding one of out_features / out_indices replaces both (they are two views of one choice).
        if "out_indices" in overrides and "out_features" not in overrides:
            data = {k: v for k, v in data.items() if k != "out_features"}
        if "out_features" in overrides and "out_indices" not in overrides:
            data = {k: v for k, v in data.items() if k != "out_indices"}
        if "num_labels" in overrides and "id2label" not in overrides:
            data = {k: v for k, v in data.items() if k not in ("id2label", "label2id")}
        data = {**data, **overrides}
        model_type = data.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"model_type: expected {cls.model_type!r}, the config says {model_type!r}")
        return cls(**data)

    # Segformer config keys that carry over (the encoder's and the decode head's); the rest describe transformers'
    # Segformer classes (reshape_last_stage, ...) and are dropped.
    _SEGFORMER_KEYS = (
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
        "id2label",
        "label2id",
        "decoder_hidden_size",
        "classifier_dropout_prob",
        "semantic_loss_ignore_index",
        "num_labels",
        "problem_type",
    )

    @classmethod
    def from_segformer_dict(cls, data: Any, **overrides: Any) -> "PvtV2Config":
        """A transformers ``SegformerConfig`` dict as a PvtV2 config: the MiT encoder is PVTv2's with mlp ratio 4,
        no Linear SRA and every LayerNorm at PyTorch's default eps (Segformer ignores its ``layer_norm_eps``);
        the decode head's settings are the ``segformer`` fields."""
        if not isinstance(data, Mapping):
            raise ValueError(f"config: must be a JSON object, got {type(data).__name__}")
        if data.get("model_type", "segformer") != "segformer":
            raise ValueError(f"model_type: expected 'segformer', the config says {data.get('model_type')!r}")
        kwargs = {k: data[k] for k in cls._SEGFORMER_KEYS if k in data}
        n = kwargs.get("num_encoder_blocks", 4)
        kwargs.setdefault("mlp_ratios", [4] * (n if _is_int(n) else 4))
        kwargs.update(layer_norm_eps=TORCH_LAYER_NORM_EPS, qkv_bias=True, linear_attention=False)
        return cls(**{**kwargs, **overrides})

    def to_json_string(self, use_diff: bool = True) -> str:
        """``config.json``'s text (sorted keys, 2-space indent, as transformers); always valid JSON.
        ``use_diff`` is accepted for transformers' signature: the written fields are always those above."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        """Write :meth:`to_json_string` to ``json_file_path`` (atomically: the old file or the new, never half)."""
        from ._atomic import write_text_atomic

        self.validate()
        write_text_atomic(json_file_path, self.to_json_string(use_diff))

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        self.to_json_file(path)
        return path

    @classmethod
    def read_json(cls, path: str | os.PathLike) -> Dict[str, Any]:
        """The JSON object in ``path``; ValueError when the file is not JSON or its top level is not an object."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"config: {os.fspath(path)} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"config: {os.fspath(path)} must hold a JSON object (field names to values), got a "
                f"JSON {'array' if isinstance(data, list) else type(data).__name__}"
            )
        return data

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "PvtV2Config":
        return cls.from_dict(cls.read_json(path), **overrides)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **overrides: Any) -> "PvtV2Config":
        """A folder or file path holding ``config.json``, or a hub id (resolved through huggingface_hub).
        Hub options (``revision``, ``cache_dir``, ``local_files_only``, ``force_download``, ``token``,
        ``subfolder``) are passed to the hub; the other keywords override fields."""
        from .hub import HUB_OPTIONS, resolve_file

        hub = {k: overrides.pop(k) for k in HUB_OPTIONS if k in overrides}
        path = resolve_file(path_or_id, CONFIG_NAME, **hub)
        return cls.from_json_file(path, **overrides)

    def copy(self) -> "PvtV2Config":
        return copy.deepcopy(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PvtV2Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"PvtV2Config {self.to_json_string()}"


def _signature() -> inspect.Signature:
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(f.name, kw, default=f.default) for f in FIELDS]
    params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


# help(PvtV2Config) and IDEs show every field with its default, although __init__ is written once over FIELDS.
PvtV2Config.__init__.__signature__ = _signature()
PvtV2Config.__init__.__doc__ = "Fields (name = default): " + ", ".join(
    f"{f.name}={f.default!r}" + (f" ({f.doc})" if f.doc else "") for f in FIELDS
)
