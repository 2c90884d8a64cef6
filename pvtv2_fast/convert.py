"""Checkpoint formats without file I/O: detection, key conversion between transformers / timm / original PVTv2 /
Segformer names, reading a config off the weights, and mapping canonical keys onto a model's own.

Every format converts to the *canonical* key set — transformers' ``PvtV2Model`` keys (``encoder.layers.…``) plus
``classifier.*`` / ``decode_head.*`` for the heads. The functions here take and return state dicts (key →
tensor) and never touch files (:mod:`pvtv2_fast.checkpoint` reads and writes them), as timm keeps its
``checkpoint_filter_fn`` apart from its builder.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .config import TORCH_LAYER_NORM_EPS, PvtV2Config

__all__ = [
    "CheckpointError",
    "FORMATS",
    "TIMM_EPS",
    "detect_format",
    "to_canonical",
    "segformer_to_canonical",
    "original_to_timm",
    "timm_to_canonical",
    "canonical_to_timm",
    "infer_config",
    "model_keys_view",
]

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
FORMATS = ("auto", "transformers", "timm", "original", "segformer")
# timm and the original code use nn.LayerNorm's default eps in the patch embedding and spatial reduction.
TIMM_EPS = dict(
    layer_norm_eps=1e-6,
    patch_embed_layer_norm_eps=TORCH_LAYER_NORM_EPS,
    spatial_reduction_layer_norm_eps=TORCH_LAYER_NORM_EPS,
)


class CheckpointError(ValueError):
    """The file cannot be read as a PVTv2 checkpoint (truncated, not a checkpoint, unknown layout)."""


# ---------------------------------------------------------------------------------------------- detection
def detect_format(sd: Mapping[str, Any]) -> str:
    keys = list(sd)
    if any(k.startswith(("encoder.layers.", "pvt_v2.encoder.layers.")) for k in keys):
        return "transformers"
    if any(
        ("patch_embeddings." in k or "attention.q_proj." in k or "encoder.block." in k or k.startswith("decode_head."))
        for k in keys
    ):
        return "segformer"
    if any(k.startswith(("patch_embed.", "stages.")) for k in keys):
        return "timm"
    if any(re.match(r"(patch_embed\d|block\d)\.", k) for k in keys):
        return "original"
    raise CheckpointError(
        "unrecognised checkpoint layout: expected transformers (encoder.layers.*), timm (stages.*), original "
        f"PVTv2 (block1.*) or Segformer (segformer.*) keys; first keys are {keys[:5]}"
    )


# ---------------------------------------------------------------------------------------------- key conversion
# transformers' Segformer → canonical, for its hub (v4) and current (v5) key names; applied in order.
_SEGFORMER_RULES = [
    (r"^segformer\.", ""),
    (r"^encoder\.patch_embeddings\.(\d+)\.", r"encoder.layers.\1.patch_embedding."),  # v4
    (r"^encoder\.block\.(\d+)\.(\d+)\.", r"encoder.layers.\1.blocks.\2."),
    (r"^encoder\.layer_norm\.(\d+)\.", r"encoder.layers.\1.layer_norm."),
    (r"^stages\.(\d+)\.patch_embeddings\.", r"encoder.layers.\1.patch_embedding."),  # v5
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.layers.\1.blocks.\2."),
    (r"^stages\.(\d+)\.layer_norm\.", r"encoder.layers.\1.layer_norm."),
    (r"\.attention\.self\.(query|key|value)\.", r".attention.\1."),
    (r"\.attention\.self\.sr\.", ".attention.spatial_reduction."),
    (r"\.attention\.self\.layer_norm\.", ".attention.layer_norm."),
    (r"\.attention\.output\.dense\.", ".attention.proj."),
    (r"\.attention\.q_proj\.", ".attention.query."),
    (r"\.attention\.k_proj\.", ".attention.key."),
    (r"\.attention\.v_proj\.", ".attention.value."),
    (r"\.attention\.o_proj\.", ".attention.proj."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.spatial_reduction."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.layer_norm."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"^decode_head\.linear_c\.", "decode_head.linear_projections."),
]


def segformer_to_canonical(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """transformers ``Segformer*`` keys (v4 hub names or v5 names) → canonical keys; ``decode_head.*`` kept."""
    out = {}
    for k, v in sd.items():
        for pattern, repl in _SEGFORMER_RULES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def original_to_timm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Original PVTv2 names (``patch_embed1``, ``block1.0``, ``norm1``) → timm's (as timm's filter does)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^patch_embed1\.", "patch_embed.", k)
        k = re.sub(r"^patch_embed(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.", k)
        k = k.replace("dwconv.dwconv", "dwconv")
        k = re.sub(r"^block(\d+)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.", k)
        k = re.sub(r"^norm(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm.", k)
        out[k] = v
    return out


_TIMM_BLOCK = [
    ("norm1.", "layer_norm_1."),
    ("norm2.", "layer_norm_2."),
    ("attn.q.", "attention.query."),
    ("attn.proj.", "attention.proj."),
    ("attn.sr.", "attention.spatial_reduction."),
    ("attn.norm.", "attention.layer_norm."),
    ("mlp.fc1.", "mlp.dense1."),
    ("mlp.dwconv.", "mlp.dwconv.dwconv."),
    ("mlp.fc2.", "mlp.dense2."),
]


def timm_to_canonical(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """timm ``PyramidVisionTransformerV2`` keys → canonical (transformers) keys; ``attn.kv`` splits into key/value."""
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("patch_embed."):
            out["encoder.layers.0.patch_embedding." + k[len("patch_embed.") :].replace("norm.", "layer_norm.")] = v
            continue
        if k.startswith("head."):
            out["classifier." + k[len("head.") :]] = v
            continue
        m = re.match(r"stages\.(\d+)\.(.*)", k)
        if not m:
            out[k] = v  # left as is: reported as unexpected later
            continue
        stage, rest = m.group(1), m.group(2)
        prefix = f"encoder.layers.{stage}."
        if rest.startswith("downsample."):
            out[prefix + "patch_embedding." + rest[len("downsample.") :].replace("norm.", "layer_norm.")] = v
        elif rest.startswith("norm."):
            out[prefix + "layer_norm." + rest[len("norm.") :]] = v
        elif rest.startswith("blocks."):
            bm = re.match(r"blocks\.(\d+)\.(.*)", rest)
            block, name = bm.group(1), bm.group(2)
            bprefix = f"{prefix}blocks.{block}."
            if name.startswith("attn.kv."):
                key_part, value_part = v.chunk(2, dim=0)  # kv rows: [keys; values]
                suffix = name[len("attn.kv.") :]
                out[bprefix + "attention.key." + suffix] = key_part.clone()
                out[bprefix + "attention.value." + suffix] = value_part.clone()
                continue
            for old, new in _TIMM_BLOCK:
                if name.startswith(old):
                    name = new + name[len(old) :]
                    break
            out[bprefix + name] = v
        else:
            out[k] = v
    return out


def canonical_to_timm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Canonical keys → timm's, merging key/value into ``attn.kv`` (for exporting to timm)."""
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("classifier."):
            out["head." + k[len("classifier.") :]] = v
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.(.*)", k)
        stage, rest = int(m.group(1)), m.group(2)
        if rest.startswith("patch_embedding."):
            base = "patch_embed." if stage == 0 else f"stages.{stage}.downsample."
            out[base + rest[len("patch_embedding.") :].replace("layer_norm.", "norm.")] = v
        elif rest.startswith("layer_norm."):
            out[f"stages.{stage}.norm." + rest[len("layer_norm.") :]] = v
        else:
            bm = re.match(r"blocks\.(\d+)\.(.*)", rest)
            bprefix = f"stages.{stage}.blocks.{bm.group(1)}."
            name = bm.group(2)
            if name.startswith("attention.key."):
                suffix = name[len("attention.key.") :]
                out[bprefix + "attn.kv." + suffix] = torch.cat([v, sd[k.replace(".key.", ".value.")]])
                continue
            if name.startswith("attention.value."):
                continue
            for old, new in _TIMM_BLOCK:
                if name.startswith(new):
                    name = old + name[len(new) :]
                    break
            out[bprefix + name] = v
    return out


def to_canonical(sd: Mapping[str, torch.Tensor], fmt: str = "auto") -> Tuple[StateDict, str]:
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {FORMATS}")
    fmt = detect_format(sd) if fmt == "auto" else fmt
    if fmt == "transformers":
        prefix = "pvt_v2."
        return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}, fmt
    if fmt == "segformer":
        return segformer_to_canonical(sd), fmt
    if fmt == "original":
        sd = original_to_timm(sd)
    return timm_to_canonical(sd), fmt


def infer_config(sd: Mapping[str, torch.Tensor], fmt: str, **overrides: Any) -> PvtV2Config:
    """A config from canonical weights alone. Head counts cannot be read off weights: every released PVTv2 uses
    (1, 2, 5, 8), the default; pass ``num_attention_heads=`` (or ``config=``) for anything else."""
    stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    if not stages or stages != list(range(len(stages))):
        raise CheckpointError(f"cannot infer a config: stage indices found are {stages}")
    hidden, depths, patch, mlp, srs = [], [], [], [], []
    linear = any(
        k.endswith("attention.spatial_reduction.weight") and sd[k].shape[-1] == 1 and ".layers.0." in k for k in sd
    )
    for s in stages:
        try:
            proj = sd[f"encoder.layers.{s}.patch_embedding.proj.weight"]
            fc1 = sd[f"encoder.layers.{s}.blocks.0.mlp.dense1.weight"]
        except KeyError as e:
            raise CheckpointError(f"cannot infer a config: the weights lack {e.args[0]}; pass config=") from None
        hidden.append(proj.shape[0])
        patch.append(proj.shape[-1])
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"encoder\.layers\.{s}\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        mlp.append(fc1.shape[0] / proj.shape[0])
        sr = sd.get(f"encoder.layers.{s}.blocks.0.attention.spatial_reduction.weight")
        srs.append(1 if sr is None or linear else sr.shape[-1])
    mlp = [int(r) if float(r).is_integer() else r for r in mlp]
    n = len(stages)
    kwargs: Dict[str, Any] = dict(
        num_encoder_blocks=n,
        hidden_sizes=hidden,
        depths=depths,
        patch_sizes=patch,
        mlp_ratios=mlp,
        sr_ratios=[8, 4, 2, 1] if linear and n == 4 else srs,
        linear_attention=linear,
        strides=[4] + [2] * (n - 1),
        num_attention_heads=[1, 2, 5, 8] if n == 4 else [1] * n,
        num_channels=sd["encoder.layers.0.patch_embedding.proj.weight"].shape[1],
        qkv_bias="encoder.layers.0.blocks.0.attention.query.bias" in sd,
    )
    if "classifier.weight" in sd:
        kwargs["num_labels"] = sd["classifier.weight"].shape[0]
    if "decode_head.classifier.weight" in sd:
        kwargs["num_labels"] = sd["decode_head.classifier.weight"].shape[0]
        kwargs["decoder_hidden_size"] = sd["decode_head.linear_fuse.weight"].shape[0]
    if fmt in ("timm", "original"):
        kwargs.update(TIMM_EPS)
    if fmt == "segformer":
        kwargs["layer_norm_eps"] = TORCH_LAYER_NORM_EPS  # Segformer: every LayerNorm at the default
    kwargs.update(overrides)
    return PvtV2Config(**kwargs)


# ---------------------------------------------------------------------------------------------- onto a model
HEAD_PREFIXES = ("classifier.", "decode_head.")


def model_keys_view(model: torch.nn.Module, canonical: Mapping[str, torch.Tensor]) -> Tuple[StateDict, list]:
    """Canonical keys → the target model's key names, and the canonical keys of heads it does not own.

    Models with a head (class attribute ``head_prefix``: ``"classifier."`` / ``"decode_head."``) hold the encoder
    under ``pvt_v2.``; encoder-only models (``head_prefix = None``) hold it at the top level. A head the model does
    not have (a classifier in a backbone, a decode head in a classifier) is left out and returned as unused.
    """
    own: Optional[str] = getattr(model, "head_prefix", None)
    unused = [k for k in canonical if k.startswith(HEAD_PREFIXES) and not (own and k.startswith(own))]
    if unused:
        logger.info("not using checkpoint keys %s in %s", ", ".join(unused[:6]), type(model).__name__)
    out = {}
    for k, v in canonical.items():
        if k in unused:
            continue
        out[k if (own and k.startswith(own)) or own is None else "pvt_v2." + k] = v
    return out, unused
