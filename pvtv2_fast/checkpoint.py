"""Checkpoint I/O: transformers folders, timm ``pvt_v2_*`` state dicts and original PVTv2 ``.pth`` files.

Every format is converted to the *canonical* key set — transformers' ``PvtV2Model`` keys (``encoder.layers.…``)
plus ``classifier.*`` for the head — and then mapped onto the target model. Keys and shapes are checked in full
before anything is copied, so a mismatch raises :class:`CheckpointMismatchError` listing missing keys,
unexpected keys and shape mismatches, and never leaves a partly loaded model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .config import PvtV2Config
from .hub import find_weights, resolve_folder

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
FORMATS = ("auto", "transformers", "timm", "original", "segformer")
# timm and the original code use nn.LayerNorm's default eps in the patch embedding and spatial reduction.
TIMM_EPS = dict(layer_norm_eps=1e-6, patch_embed_layer_norm_eps=1e-5, spatial_reduction_layer_norm_eps=1e-5)
# transformers' Segformer builds every LayerNorm with PyTorch's default eps (its config's layer_norm_eps is unused).
SEGFORMER_LAYER_NORM_EPS = 1e-5


class CheckpointError(ValueError):
    """The file cannot be read as a PVTv2 checkpoint (truncated, not a checkpoint, unknown layout)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit the model; lists missing, unexpected and shape-mismatched keys."""

    def __init__(self, missing: List[str], unexpected: List[str], mismatched: List[Tuple[str, tuple, tuple]],
                 source: str = "checkpoint") -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else ""))
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + ", ".join(
                f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:20]))
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------- reading files
def _unwrap(obj: Any, source: str) -> StateDict:
    """Raw state dict, or one nested under "model" / "state_dict" / "module"; strips DDP/mmseg prefixes."""
    for key in ("model", "state_dict", "module", "model_state"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} does not contain a state dict of tensors")
    sd = dict(obj)
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read ``.safetensors``, ``.bin``/``.pth``/``.pt`` (safe ``weights_only`` unpickling) or a sharded index."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{path} is not a sharded-checkpoint index ({e})") from None
        sd: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            sd.update(read_state_dict(path.parent / shard))
        missing = sorted(set(weight_map) - set(sd))
        if missing:
            raise CheckpointError(f"{path}: shards lack {len(missing)} indexed tensors, e.g. {missing[:5]}")
        return sd
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"could not read {path} as safetensors (truncated or not a checkpoint?): {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"could not read {path} as a PyTorch checkpoint (truncated or not a checkpoint?): {e}") from None
    except Exception as e:  # pickle.UnpicklingError and friends from arbitrary files
        raise CheckpointError(f"could not read {path} as a PyTorch checkpoint: {type(e).__name__}: {e}") from None
    return _unwrap(obj, str(path))


# ---------------------------------------------------------------------------------------------- key conversion
def detect_format(sd: Mapping[str, Any]) -> str:
    keys = list(sd)
    if any(k.startswith(("encoder.layers.", "pvt_v2.encoder.layers.")) for k in keys):
        return "transformers"
    if any(("patch_embeddings." in k or "attention.q_proj." in k or "encoder.block." in k
            or k.startswith("decode_head.")) for k in keys):
        return "segformer"
    if any(k.startswith(("patch_embed.", "stages.")) for k in keys):
        return "timm"
    if any(re.match(r"(patch_embed\d|block\d)\.", k) for k in keys):
        return "original"
    raise CheckpointError(
        "unrecognised checkpoint layout: expected transformers (encoder.layers.*), timm (stages.*), original "
        f"PVTv2 (block1.*) or Segformer (segformer.*) keys; first keys are {keys[:5]}"
    )


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
    ("norm1.", "layer_norm_1."), ("norm2.", "layer_norm_2."), ("attn.q.", "attention.query."),
    ("attn.proj.", "attention.proj."), ("attn.sr.", "attention.spatial_reduction."),
    ("attn.norm.", "attention.layer_norm."), ("mlp.fc1.", "mlp.dense1."), ("mlp.dwconv.", "mlp.dwconv.dwconv."),
    ("mlp.fc2.", "mlp.dense2."),
]


def timm_to_canonical(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """timm ``PyramidVisionTransformerV2`` keys → canonical (transformers) keys; ``attn.kv`` splits into key/value."""
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("patch_embed."):
            out["encoder.layers.0.patch_embedding." + k[len("patch_embed."):].replace("norm.", "layer_norm.")] = v
            continue
        if k.startswith("head."):
            out["classifier." + k[len("head."):]] = v
            continue
        m = re.match(r"stages\.(\d+)\.(.*)", k)
        if not m:
            out[k] = v  # left as is: reported as unexpected later
            continue
        stage, rest = m.group(1), m.group(2)
        prefix = f"encoder.layers.{stage}."
        if rest.startswith("downsample."):
            out[prefix + "patch_embedding." + rest[len("downsample."):].replace("norm.", "layer_norm.")] = v
        elif rest.startswith("norm."):
            out[prefix + "layer_norm." + rest[len("norm."):]] = v
        elif rest.startswith("blocks."):
            bm = re.match(r"blocks\.(\d+)\.(.*)", rest)
            block, name = bm.group(1), bm.group(2)
            bprefix = f"{prefix}blocks.{block}."
            if name.startswith("attn.kv."):
                key_part, value_part = v.chunk(2, dim=0)  # kv rows: [keys; values]
                suffix = name[len("attn.kv."):]
                out[bprefix + "attention.key." + suffix] = key_part.clone()
                out[bprefix + "attention.value." + suffix] = value_part.clone()
                continue
            for old, new in _TIMM_BLOCK:
                if name.startswith(old):
                    name = new + name[len(old):]
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
            out["head." + k[len("classifier."):]] = v
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.(.*)", k)
        stage, rest = int(m.group(1)), m.group(2)
        if rest.startswith("patch_embedding."):
            base = "patch_embed." if stage == 0 else f"stages.{stage}.downsample."
            out[base + rest[len("patch_embedding."):].replace("layer_norm.", "norm.")] = v
        elif rest.startswith("layer_norm."):
            out[f"stages.{stage}.norm." + rest[len("layer_norm."):]] = v
        else:
            bm = re.match(r"blocks\.(\d+)\.(.*)", rest)
            bprefix = f"stages.{stage}.blocks.{bm.group(1)}."
            name = bm.group(2)
            if name.startswith("attention.key."):
                suffix = name[len("attention.key."):]
                out[bprefix + "attn.kv." + suffix] = torch.cat([v, sd[k.replace(".key.", ".value.")]])
                continue
            if name.startswith("attention.value."):
                continue
            for old, new in _TIMM_BLOCK:
                if name.startswith(new):
                    name = old + name[len(new):]
                    break
            out[bprefix + name] = v
    return out


def to_canonical(sd: Mapping[str, torch.Tensor], fmt: str = "auto") -> Tuple[StateDict, str]:
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {FORMATS}")
    fmt = detect_format(sd) if fmt == "auto" else fmt
    if fmt == "transformers":
        prefix = "pvt_v2."
        return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}, fmt
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
    linear = any(k.endswith("attention.spatial_reduction.weight") and sd[k].shape[-1] == 1 and
                 ".layers.0." in k for k in sd)
    for s in stages:
        proj = sd[f"encoder.layers.{s}.patch_embedding.proj.weight"]
        hidden.append(proj.shape[0])
        patch.append(proj.shape[-1])
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"encoder\.layers\.{s}\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        mlp.append(sd[f"encoder.layers.{s}.blocks.0.mlp.dense1.weight"].shape[0] / proj.shape[0])
        sr = sd.get(f"encoder.layers.{s}.blocks.0.attention.spatial_reduction.weight")
        srs.append(1 if sr is None or linear else sr.shape[-1])
    mlp = [int(r) if float(r).is_integer() else r for r in mlp]
    n = len(stages)
    kwargs: Dict[str, Any] = dict(
        num_encoder_blocks=n, hidden_sizes=hidden, depths=depths, patch_sizes=patch, mlp_ratios=mlp,
        sr_ratios=[8, 4, 2, 1] if linear and n == 4 else srs, linear_attention=linear,
        strides=[4] + [2] * (n - 1), num_attention_heads=[1, 2, 5, 8] if n == 4 else [1] * n,
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
        kwargs["layer_norm_eps"] = SEGFORMER_LAYER_NORM_EPS
    kwargs.update(overrides)
    return PvtV2Config(**kwargs)


# ---------------------------------------------------------------------------------------------- loading
_HEADS = ("classifier.", "decode_head.")


def _head_prefix(model: torch.nn.Module) -> Optional[str]:
    """The head a model owns: "classifier.", "decode_head." or None (encoder-only models)."""
    from .modeling import PvtV2ForImageClassification, PvtV2ForSemanticSegmentation

    if isinstance(model, PvtV2ForImageClassification):
        return "classifier."
    if isinstance(model, PvtV2ForSemanticSegmentation):
        return "decode_head."
    return None


def _model_keys_view(model: torch.nn.Module, canonical: Mapping[str, torch.Tensor]) -> StateDict:
    """Canonical keys → the target model's key names (models with a head hold the encoder under pvt_v2.).
    A head the model does not have (a classifier in a backbone, a decode head in a classifier) is not used."""
    own = _head_prefix(model)
    unused = [k for k in canonical if k.startswith(_HEADS) and not (own and k.startswith(own))]
    if unused:
        logger.info("not using checkpoint keys %s in %s", ", ".join(unused[:6]), type(model).__name__)
    out = {}
    for k, v in canonical.items():
        if k in unused:
            continue
        out[k if (own and k.startswith(own)) or own is None else "pvt_v2." + k] = v
    return out


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, allow_missing: Iterable[str] = (),
                     source: str = "checkpoint") -> List[Tuple[str, tuple, tuple]]:
    """Raise CheckpointMismatchError unless ``sd`` fits ``model``; returns shape mismatches of allowed keys."""
    own = model.state_dict()
    allow = set(allow_missing)
    missing = sorted(k for k in own if k not in sd and k not in allow)
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    fatal = [m for m in mismatched if m[0] not in allow]
    if missing or unexpected or fatal:
        raise CheckpointMismatchError(missing, unexpected, fatal, source)
    return [m for m in mismatched if m[0] in allow]


def load_into(model: torch.nn.Module, path_or_state_dict: Any, *, format: str = "auto", strict: bool = True,
              ignore_mismatched_sizes: bool = False) -> Dict[str, List[str]]:
    """Check, then copy. The classifier head may be absent (newly initialised, as transformers does) and, with
    ``ignore_mismatched_sizes``, of another size (e.g. fine-tuning to a new label set)."""
    if isinstance(path_or_state_dict, Mapping):
        raw, source = dict(path_or_state_dict), "state dict"
    else:
        raw, source = read_state_dict(path_or_state_dict), str(path_or_state_dict)
    canonical, _ = to_canonical(raw, format)
    sd = _model_keys_view(model, canonical)
    # The final classifier may be new (not in the checkpoint) or, when allowed, resized: as in transformers.
    final = {"classifier.": "classifier.", "decode_head.": "decode_head.classifier."}.get(_head_prefix(model))
    head = [k for k in model.state_dict() if final and k.startswith(final)]
    head_missing = [k for k in head if k not in sd]
    allow = set(head_missing)
    if ignore_mismatched_sizes:
        allow |= set(head)
    if not strict:
        own = model.state_dict()
        allow |= {k for k in own if k not in sd}
        sd = {k: v for k, v in sd.items() if k in own}
    skipped = check_state_dict(model, sd, allow_missing=allow, source=source)
    skipped_keys = {k for k, _, _ in skipped}
    sd = {k: v for k, v in sd.items() if k not in skipped_keys}
    model.load_state_dict(sd, strict=False)
    reinit = sorted(set(head_missing) | skipped_keys)
    if reinit:
        logger.warning("newly initialised (not in the checkpoint or of another shape): %s", ", ".join(reinit))
    return {"reinitialised": reinit}


def from_pretrained(
    cls,
    path_or_id: str | os.PathLike,
    *,
    config: Optional[PvtV2Config] = None,
    format: str = "auto",
    fast: bool = False,
    ignore_mismatched_sizes: bool = False,
    dtype: Optional[torch.dtype] = None,
    device: Optional[str | torch.device] = None,
    **config_overrides: Any,
):
    """Build ``cls`` and load weights from

    * a transformers folder or hub id (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin`` / a
      sharded index);
    * a transformers Segformer folder (``SegformerModel`` / ``SegformerForSemanticSegmentation``, hub v4 or v5
      key names): its MiT encoder is a PVTv2 encoder with every LayerNorm at eps 1e-5;
    * a single weights file: transformers, timm (``pvt_v2_*``) or original PVTv2 (``.pth``, raw or under
      ``"model"``). The format is detected from the keys unless ``format=`` names it; without ``config=``
      (or a ``config.json`` beside it) the config is inferred from the weights.
    """
    from .config import CONFIG_NAME

    path = Path(os.fspath(path_or_id)).expanduser()
    if path.is_file():
        weights, folder = path, path.parent
        cfg_path = folder / CONFIG_NAME if config is None else None
    else:
        folder = resolve_folder(path_or_id)
        weights = find_weights(folder)
        if weights is None:
            raise CheckpointError(f"{os.fspath(path_or_id)!r} holds no model.safetensors, pytorch_model.bin or index")
        cfg_path = folder / CONFIG_NAME
    raw = read_state_dict(weights)
    canonical, fmt = to_canonical(raw, format)
    if config is None:
        if cfg_path is not None and cfg_path.is_file() and fmt == "segformer":
            config = PvtV2Config.from_segformer_dict(json.loads(cfg_path.read_text()), **config_overrides)
        elif cfg_path is not None and cfg_path.is_file() and fmt == "transformers":
            config = PvtV2Config.from_json_file(cfg_path, **config_overrides)
        else:
            config = infer_config(canonical, fmt, **config_overrides)
    elif config_overrides:
        config = PvtV2Config.from_dict({**config.to_dict(), **config_overrides})
    model = cls(config)
    load_into(model, canonical, format="transformers", ignore_mismatched_sizes=ignore_mismatched_sizes)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    model.set_fast(fast)
    return model.eval()


def save_pretrained(model: torch.nn.Module, save_directory: str | os.PathLike, max_shard_size: Optional[int] = None) -> None:
    """``config.json`` + ``model.safetensors`` (or shards + index when ``max_shard_size`` bytes is exceeded)."""
    from safetensors.torch import save_file

    os.makedirs(save_directory, exist_ok=True)
    config = PvtV2Config.from_dict({**model.config.to_dict(), "architectures": [type(model).__name__]})
    config.save_pretrained(save_directory)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": "pt"}
    total = sum(v.numel() * v.element_size() for v in sd.values())
    if max_shard_size is None or total <= max_shard_size:
        save_file(sd, os.path.join(save_directory, "model.safetensors"), metadata=metadata)
        return
    shards, current, size = [], {}, 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if current and size + nbytes > max_shard_size:
            shards.append(current)
            current, size = {}, 0
        current[k] = v
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(save_directory, name), metadata=metadata)
        weight_map.update({k: name for k in shard})
    with open(os.path.join(save_directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
