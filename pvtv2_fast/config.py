"""`PvtV2Config`: the same fields and defaults as transformers' `PvtV2Config`, plus the presets B0–B5.

The config reads and writes the hub's ``config.json`` so a transformers checkpoint folder loads as it is, and a
folder written by :meth:`PvtV2Config.save_pretrained` loads in transformers.

Two fields go beyond transformers': ``patch_embed_layer_norm_eps`` and ``spatial_reduction_layer_norm_eps``.
transformers uses ``layer_norm_eps`` (1e-6) for every LayerNorm, while timm and the original PVTv2 code use
PyTorch's default 1e-5 in the patch-embedding and spatial-reduction LayerNorms. ``None`` (the default) means
"same as ``layer_norm_eps``", i.e. transformers' numerics; timm and original checkpoints set both to 1e-5.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["PvtV2Config", "PRESETS", "preset_names", "SUPPORTED_ACTIVATIONS"]

CONFIG_NAME = "config.json"

# Activations a config may name in ``hidden_act`` (transformers' ACT2FN names that make sense here).
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish")

_PER_STAGE_FIELDS = (
    "depths",
    "sr_ratios",
    "hidden_sizes",
    "patch_sizes",
    "strides",
    "num_attention_heads",
    "mlp_ratios",
)

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
            key = key[len(prefix):]
    key = key.lstrip("_")
    key = _PRESET_ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"preset: unknown PVTv2 preset {name!r}; choose one of {', '.join(PRESETS)}")
    return key


class PvtV2Config:
    """Configuration of a PVTv2 model; field names and defaults follow transformers' ``PvtV2Config``.

    The defaults describe PVTv2-B0. ``PvtV2Config.from_preset("b2")`` gives the other published sizes.
    Invalid values raise ``ValueError`` naming the field.
    """

    model_type = "pvt_v2"

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        num_channels: int = 3,
        num_encoder_blocks: int = 4,
        depths: Sequence[int] = (2, 2, 2, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        hidden_sizes: Sequence[int] = (32, 64, 160, 256),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        num_attention_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        linear_attention: bool = False,
        out_features: Optional[List[str]] = None,
        out_indices: Optional[List[int]] = None,
        patch_embed_layer_norm_eps: Optional[float] = None,
        spatial_reduction_layer_norm_eps: Optional[float] = None,
        num_labels: Optional[int] = None,
        id2label: Optional[Dict[Any, str]] = None,
        label2id: Optional[Dict[str, int]] = None,
        problem_type: Optional[str] = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> None:
        self.image_size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        self.num_channels = num_channels
        self.num_encoder_blocks = num_encoder_blocks
        self.depths = list(depths)
        self.sr_ratios = list(sr_ratios)
        self.hidden_sizes = list(hidden_sizes)
        self.patch_sizes = list(patch_sizes)
        self.strides = list(strides)
        self.num_attention_heads = list(num_attention_heads)
        self.mlp_ratios = list(mlp_ratios)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.linear_attention = linear_attention
        self.patch_embed_layer_norm_eps = patch_embed_layer_norm_eps
        self.spatial_reduction_layer_norm_eps = spatial_reduction_layer_norm_eps
        self.problem_type = problem_type
        self.output_hidden_states = output_hidden_states
        self.output_attentions = output_attentions
        self.return_dict = return_dict

        # Labels, as transformers' PretrainedConfig: id2label wins, else num_labels (default 2).
        if id2label is not None:
            self.id2label = {int(k): v for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                raise ValueError(
                    f"num_labels: {num_labels} disagrees with id2label, which has {len(self.id2label)} entries"
                )
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(2 if num_labels is None else num_labels)}
        self.label2id = (
            {k: int(v) for k, v in label2id.items()} if label2id is not None else {v: k for k, v in self.id2label.items()}
        )

        # Keys this library does not use (architectures, torch_dtype, ...) are kept so a config round-trips.
        for derived in ("stage_names", "model_type", "transformers_version", "_out_features", "_out_indices"):
            kwargs.pop(derived, None)
        self._extra = dict(kwargs)
        for key, value in kwargs.items():
            setattr(self, key, value)

        self._validate()
        self._out_features, self._out_indices = self._align_out_features(out_features, out_indices)

    # ------------------------------------------------------------------ derived values
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if value != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {v: k for k, v in self.id2label.items()}

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
        return list(self._out_indices)

    @out_indices.setter
    def out_indices(self, value: Optional[List[int]]) -> None:
        self._out_features, self._out_indices = self._align_out_features(None, value)

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

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        n = self.num_encoder_blocks
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"num_encoder_blocks: must be a positive integer, got {n!r}")
        for name in _PER_STAGE_FIELDS:
            values = getattr(self, name)
            if len(values) != n:
                raise ValueError(
                    f"{name}: has {len(values)} entries but num_encoder_blocks is {n}; every per-stage list "
                    f"({', '.join(_PER_STAGE_FIELDS)}) needs one entry per stage"
                )
        for name in ("depths", "hidden_sizes", "patch_sizes", "strides", "num_attention_heads"):
            for v in getattr(self, name):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ValueError(f"{name}: entries must be positive integers, got {getattr(self, name)}")
        for v in self.sr_ratios:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"sr_ratios: entries must be integers >= 1, got {self.sr_ratios}")
        for v in self.mlp_ratios:
            if not v > 0:
                raise ValueError(f"mlp_ratios: entries must be > 0, got {self.mlp_ratios}")
        for i, (c, h) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)):
            if c % h:
                raise ValueError(
                    f"hidden_sizes: stage {i + 1} hidden size {c} is not divisible by its "
                    f"num_attention_heads {h}"
                )
        if not isinstance(self.num_channels, int) or self.num_channels < 1:
            raise ValueError(f"num_channels: must be a positive integer, got {self.num_channels!r}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act: {self.hidden_act!r} is not one of {', '.join(SUPPORTED_ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: must be within [0, 1], got {p}")
        for name in ("layer_norm_eps", "patch_embed_layer_norm_eps", "spatial_reduction_layer_norm_eps"):
            eps = getattr(self, name)
            if eps is not None and not eps > 0:
                raise ValueError(f"{name}: must be > 0, got {eps}")
        if self.problem_type not in (None, "regression", "single_label_classification", "multi_label_classification"):
            raise ValueError(f"problem_type: unknown value {self.problem_type!r}")

    def _align_out_features(self, out_features, out_indices):
        """transformers' BackboneConfigMixin semantics: either may be given; default is the last stage."""
        names = self.stage_names
        if out_features is not None:
            out_features = list(out_features)
            unknown = [f for f in out_features if f not in names]
            if unknown:
                raise ValueError(f"out_features: {unknown} are not stage names; choose from {names}")
            if out_features != [f for f in names if f in out_features]:
                raise ValueError(f"out_features: must be in stage order without duplicates, got {out_features}")
        if out_indices is not None:
            out_indices = list(out_indices)
            if any(not -len(names) <= i < len(names) for i in out_indices):
                raise ValueError(f"out_indices: {out_indices} out of range for {len(names)} stages")
            positive = [i % len(names) for i in out_indices]
            if positive != sorted(set(positive)):
                raise ValueError(f"out_indices: must be increasing without duplicates, got {out_indices}")
            out_indices = positive
        if out_features is None and out_indices is None:
            return [names[-1]], [len(names) - 1]
        if out_features is None:
            return [names[i] for i in out_indices], out_indices
        if out_indices is None:
            return out_features, [names.index(f) for f in out_features]
        if [names[i] for i in out_indices] != out_features:
            raise ValueError(f"out_features: {out_features} and out_indices {out_indices} name different stages")
        return out_features, out_indices

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "PvtV2Config":
        """``b0, b1, b2, b2_linear, b3, b4, b5`` (also ``pvt_v2_b2_li`` style names); keyword overrides win."""
        return cls(**{**PRESETS[_normalise_preset(name)], **overrides})

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        """The dictionary transformers writes to ``config.json`` for this config."""
        out: Dict[str, Any] = {
            "model_type": self.model_type,
            "image_size": list(self.image_size),
            "num_channels": self.num_channels,
            "num_encoder_blocks": self.num_encoder_blocks,
            "depths": list(self.depths),
            "sr_ratios": list(self.sr_ratios),
            "hidden_sizes": list(self.hidden_sizes),
            "patch_sizes": list(self.patch_sizes),
            "strides": list(self.strides),
            "num_attention_heads": list(self.num_attention_heads),
            "mlp_ratios": list(self.mlp_ratios),
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "initializer_range": self.initializer_range,
            "drop_path_rate": self.drop_path_rate,
            "layer_norm_eps": self.layer_norm_eps,
            "qkv_bias": self.qkv_bias,
            "linear_attention": self.linear_attention,
            "stage_names": self.stage_names,
            "out_features": self.out_features,
            "out_indices": self.out_indices,
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "label2id": dict(self.label2id),
        }
        if self.problem_type is not None:
            out["problem_type"] = self.problem_type
        # Only written when they differ from transformers' numerics, so transformers-made folders stay byte-alike.
        if self.patch_embed_layer_norm_eps is not None:
            out["patch_embed_layer_norm_eps"] = self.patch_embed_layer_norm_eps
        if self.spatial_reduction_layer_norm_eps is not None:
            out["spatial_reduction_layer_norm_eps"] = self.spatial_reduction_layer_norm_eps
        for key in self._extra:
            out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any], **overrides: Any) -> "PvtV2Config":
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

    @classmethod
    def from_segformer_dict(cls, data: Dict[str, Any], **overrides: Any) -> "PvtV2Config":
        """A transformers ``SegformerConfig`` dict as a PvtV2 config: the MiT encoder is PVTv2's with mlp ratio 4,
        no Linear SRA and every LayerNorm at PyTorch's default eps (Segformer ignores its ``layer_norm_eps``);
        the decode head's settings are carried as extra fields."""
        if data.get("model_type", "segformer") != "segformer":
            raise ValueError(f"model_type: expected 'segformer', the config says {data.get('model_type')!r}")
        keep = ("num_channels", "num_encoder_blocks", "depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides",
                "num_attention_heads", "mlp_ratios", "hidden_act", "hidden_dropout_prob",
                "attention_probs_dropout_prob", "initializer_range", "drop_path_rate", "id2label", "label2id",
                "decoder_hidden_size", "classifier_dropout_prob", "semantic_loss_ignore_index", "num_labels")
        kwargs = {k: data[k] for k in keep if k in data}
        kwargs.setdefault("mlp_ratios", [4] * kwargs.get("num_encoder_blocks", 4))
        kwargs.update(layer_norm_eps=1e-5, qkv_bias=True, linear_attention=False)
        return cls(**{**kwargs, **overrides})

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "PvtV2Config":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **overrides: Any) -> "PvtV2Config":
        """A folder or file path holding ``config.json``, or a hub id (resolved through huggingface_hub)."""
        from .hub import resolve_file

        path = resolve_file(path_or_id, CONFIG_NAME)
        return cls.from_json_file(path, **overrides)

    def copy(self) -> "PvtV2Config":
        return copy.deepcopy(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PvtV2Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"PvtV2Config {self.to_json_string()}"
