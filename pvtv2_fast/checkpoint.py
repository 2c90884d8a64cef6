"""Checkpoint files: reading (transformers folders, sharded indexes, timm / original ``.pth``), loading into a model
after a full check, ``from_pretrained`` with transformers' keywords, and crash-safe ``save_pretrained``.

Format detection and key conversion live in :mod:`pvtv2_fast.convert` (no file I/O there). Keys and shapes are
checked in full before anything is copied, so a mismatch raises :class:`CheckpointMismatchError` listing missing
keys, unexpected keys and shape mismatches, and never leaves a partly loaded model.

``save_pretrained`` writes the new checkpoint (weights, index, then ``config.json``) into a staging folder beside
the target and swaps it in (:mod:`pvtv2_fast._atomic`): a crash at any instant leaves the old model or the new one,
never a mix; weight files the new checkpoint does not use are gone with the old folder, other files are kept.
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

from .config import CONFIG_NAME, FIELD, PvtV2Config
from .convert import (  # noqa: F401 - re-exported: the conversions were importable from here
    FORMATS,
    TIMM_EPS,
    CheckpointError,
    canonical_to_timm,
    detect_format,
    infer_config,
    model_keys_view,
    original_to_timm,
    segformer_to_canonical,
    timm_to_canonical,
    to_canonical,
)
from .hub import HUB_OPTIONS, find_weights, resolve_folder

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit the model; lists missing, unexpected and shape-mismatched keys."""

    def __init__(
        self,
        missing: List[str],
        unexpected: List[str],
        mismatched: List[Tuple[str, tuple, tuple]],
        source: str = "checkpoint",
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(
                f"  missing keys ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            )
        if unexpected:
            lines.append(
                f"  unexpected keys ({len(unexpected)}): "
                + ", ".join(unexpected[:20])
                + (" ..." if len(unexpected) > 20 else "")
            )
        if mismatched:
            lines.append(
                f"  shape mismatches ({len(mismatched)}): "
                + ", ".join(f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:20])
            )
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
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def read_index(path: str | os.PathLike) -> Dict[str, str]:
    """The ``weight_map`` (tensor name → shard file name) of a sharded-checkpoint index. Shard names must be plain
    file names: an index cannot make the loader read outside its folder (``../x``, absolute paths)."""
    path = Path(path)
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a sharded-checkpoint index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{path}: weight_map must map tensor names to shard file names")
    for shard in set(weight_map.values()):
        if shard in ("", ".", "..") or "/" in shard or "\\" in shard or os.path.isabs(shard) or "\0" in shard:
            raise CheckpointError(f"{path}: shard name {shard!r} is not a file name inside the checkpoint folder")
    return weight_map


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read ``.safetensors``, ``.bin``/``.pth``/``.pt`` (safe ``weights_only`` unpickling) or a sharded index."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.name.endswith(".index.json"):
        weight_map = read_index(path)
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
            raise CheckpointError(
                f"could not read {path} as safetensors (truncated or not a checkpoint?): {e}"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(
            f"could not read {path} as a PyTorch checkpoint (truncated or not a checkpoint?): {e}"
        ) from None
    except Exception as e:  # pickle.UnpicklingError and friends from arbitrary files
        raise CheckpointError(f"could not read {path} as a PyTorch checkpoint: {type(e).__name__}: {e}") from None
    return _unwrap(obj, str(path))


# ---------------------------------------------------------------------------------------------- loading
def check_state_dict(
    model: torch.nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    allow_missing: Iterable[str] = (),
    source: str = "checkpoint",
) -> List[Tuple[str, tuple, tuple]]:
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


def load_into(
    model: torch.nn.Module,
    path_or_state_dict: Any,
    *,
    format: str = "auto",
    strict: bool = True,
    ignore_mismatched_sizes: bool = False,
) -> Dict[str, Any]:
    """Check, then copy. The final head layer may be absent (newly initialised, as transformers does) and, with
    ``ignore_mismatched_sizes``, of another size (e.g. fine-tuning to a new label set); ``strict=False`` also
    leaves other missing keys initialised and drops unexpected ones.

    Returns transformers' loading info: ``missing_keys`` (left initialised), ``unexpected_keys`` (in the
    checkpoint, not used: e.g. a classifier head loaded into a backbone), ``mismatched_keys`` (``(key,
    checkpoint shape, model shape)``, left initialised) as sets, and ``error_msgs`` (a list; always empty, since
    every error raises).
    """
    if isinstance(path_or_state_dict, Mapping):
        raw, source = dict(path_or_state_dict), "state dict"
        bad = [k for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"state dict: entries must map names to tensors; not so for {bad[:5]}")
    else:
        raw, source = read_state_dict(path_or_state_dict), str(path_or_state_dict)
    canonical, _ = to_canonical(raw, format)
    sd, unused = model_keys_view(model, canonical)
    own = model.state_dict()
    # The final head layer may be new (not in the checkpoint) or, when allowed, resized: as in transformers.
    final = getattr(model, "head_output_prefix", None)
    head = [k for k in own if final and k.startswith(final)]
    head_missing = [k for k in head if k not in sd]
    allow = set(head_missing)
    if ignore_mismatched_sizes:
        allow |= set(head)
    unexpected = set(unused)
    if not strict:
        allow |= {k for k in own if k not in sd}
        unexpected |= {k for k in sd if k not in own}
        sd = {k: v for k, v in sd.items() if k in own}
    skipped = check_state_dict(model, sd, allow_missing=allow, source=source)
    skipped_keys = {k for k, _, _ in skipped}
    sd = {k: v for k, v in sd.items() if k not in skipped_keys}
    model.load_state_dict(sd, strict=False)
    missing = {k for k in own if k not in sd and k not in skipped_keys}
    if missing | skipped_keys:
        logger.warning(
            "newly initialised (not in the checkpoint or of another shape): %s",
            ", ".join(sorted(missing | skipped_keys)),
        )
    return {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": set(skipped), "error_msgs": []}


# ---------------------------------------------------------------------------------------------- from_pretrained
# Keywords from_pretrained accepts besides the config fields (transformers' names where transformers has them).
LOAD_OPTIONS = (
    "config",
    "state_dict",
    "format",
    "fast",
    "ignore_mismatched_sizes",
    "dtype",
    "torch_dtype",
    "device",
    "device_map",
    "output_loading_info",
    "use_safetensors",
) + HUB_OPTIONS


def _resolve_dtype(dtype: Any, raw: Optional[Mapping[str, torch.Tensor]], config: PvtV2Config) -> Optional[torch.dtype]:
    """``None`` keeps float32; ``"auto"`` takes the checkpoint's floating dtype (else the config's ``dtype`` /
    ``torch_dtype``); a ``torch.dtype`` or its name (``"float16"``, ``"torch.bfloat16"``) casts to it."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype == "auto":
        floats = [v.dtype for v in (raw or {}).values() if v.is_floating_point()]
        if floats:
            return floats[0]
        named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        return _resolve_dtype(named, None, config) if named else None
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype: {dtype!r} is not a torch dtype name (e.g. 'float16', 'bfloat16', 'auto')")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: must be a floating torch.dtype, its name or 'auto', got {dtype!r}")
    return dtype


def _resolve_device(device: Any, device_map: Any) -> Optional[torch.device]:
    """``device_map`` as transformers takes it for a model on one device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
    an index, a ``torch.device``, ``"auto"`` (CUDA when available) or ``{"": device}``."""
    if device_map is not None:
        if isinstance(device_map, Mapping):
            if set(device_map) != {""}:
                raise ValueError(
                    f"device_map: only a whole-model map {{'': device}} is supported (the model is "
                    f"small enough for one device), got keys {sorted(device_map)}"
                )
            device_map = device_map[""]
        if device_map == "auto":
            device_map = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            mapped = torch.device(device_map)
        except (RuntimeError, TypeError):
            raise ValueError(f"device_map: {device_map!r} is not a device") from None
        if device is not None and torch.device(device) != mapped:
            raise ValueError(f"device_map: {device_map!r} disagrees with device={device!r}")
        return mapped
    return None if device is None else torch.device(device)


def _split_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Config-field keywords, or a TypeError naming the keywords that are neither fields nor loading options."""
    unknown = sorted(k for k in kwargs if k not in FIELD)
    if unknown:
        raise TypeError(
            f"from_pretrained() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: neither a "
            f"loading option ({', '.join(LOAD_OPTIONS)}) nor a PvtV2Config field"
        )
    return kwargs


def from_pretrained(
    cls,
    pretrained_model_name_or_path: Optional[str | os.PathLike] = None,
    *model_args: Any,
    config: Optional[PvtV2Config | str | os.PathLike] = None,
    state_dict: Optional[Mapping[str, torch.Tensor]] = None,
    format: str = "auto",
    fast: bool = False,
    ignore_mismatched_sizes: bool = False,
    dtype: Any = None,
    torch_dtype: Any = None,
    device: Optional[str | torch.device] = None,
    device_map: Any = None,
    output_loading_info: bool = False,
    use_safetensors: Optional[bool] = None,
    subfolder: str = "",
    revision: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    local_files_only: bool = False,
    force_download: bool = False,
    token: Optional[str | bool] = None,
    **config_overrides: Any,
):
    """Build ``cls`` and load weights from

    * a transformers folder or hub id (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin`` / a
      sharded index);
    * a transformers Segformer folder (``SegformerModel`` / ``SegformerForSemanticSegmentation``, hub v4 or v5
      key names): its MiT encoder is a PVTv2 encoder with every LayerNorm at eps 1e-5;
    * a single weights file: transformers, timm (``pvt_v2_*``) or original PVTv2 (``.pth``, raw or under
      ``"model"``). The format is detected from the keys unless ``format=`` names it; without ``config=``
      (or a ``config.json`` beside it) the config is inferred from the weights;
    * ``state_dict=`` (any of those formats), with ``config=`` or a path to read the config from.

    Keywords, as transformers': ``config`` (a PvtV2Config or a path / hub id to read one from), ``state_dict``,
    ``dtype`` / ``torch_dtype`` (cast the parameters; ``"auto"``: the checkpoint's dtype; default float32),
    ``device_map`` (one device), ``output_loading_info`` (returns ``(model, info)``), ``use_safetensors``,
    ``subfolder``, ``revision``, ``cache_dir``, ``local_files_only``, ``force_download``, ``token``; this
    library's ``format``, ``fast``, ``ignore_mismatched_sizes``, ``device``. Every other keyword must be a config
    field and overrides it (also when ``config=`` is given); anything else raises ``TypeError``.
    """
    if model_args:
        raise TypeError(
            f"from_pretrained() takes the path and keyword arguments only; got {len(model_args)} "
            f"extra positional argument(s)"
        )
    overrides = _split_kwargs(config_overrides)
    if format not in FORMATS:
        raise ValueError(f"format: {format!r} is not one of {FORMATS}")
    if state_dict is not None and not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    hub = dict(
        subfolder=subfolder,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        force_download=force_download,
        token=token,
    )
    dtype = dtype if dtype is not None else torch_dtype  # transformers: dtype wins
    target_device = _resolve_device(device, device_map)

    # Where the weights and config.json are.
    weights: Optional[Path] = None
    cfg_path: Optional[Path] = None
    if pretrained_model_name_or_path is None:
        if state_dict is None or config is None:
            raise TypeError("from_pretrained(None, ...) needs both config= and state_dict=")
    else:
        path = Path(os.fspath(pretrained_model_name_or_path)).expanduser()
        if path.is_file() and not subfolder:
            weights, cfg_path = path, path.parent / CONFIG_NAME
        else:
            folder = resolve_folder(pretrained_model_name_or_path, **hub)
            cfg_path = folder / CONFIG_NAME
            if state_dict is None:
                weights = find_weights(folder, use_safetensors)
                if weights is None:
                    raise CheckpointError(
                        f"{os.fspath(pretrained_model_name_or_path)!r} holds no "
                        + {True: "model.safetensors or its index", False: "pytorch_model.bin or its index"}.get(
                            use_safetensors, "model.safetensors, pytorch_model.bin or index"
                        )
                        + (f" in subfolder {subfolder!r}" if subfolder else "")
                    )

    raw = dict(state_dict) if state_dict is not None else read_state_dict(weights)
    canonical, fmt = to_canonical(raw, format)
    if isinstance(config, (str, os.PathLike)):
        config = PvtV2Config.from_pretrained(config, **overrides)
    elif config is not None:
        if not isinstance(config, PvtV2Config):
            raise TypeError(f"config must be a PvtV2Config or a path, got {type(config).__name__}")
        config = PvtV2Config.from_dict(config.to_dict(), **overrides) if overrides else config.copy()
    elif cfg_path is not None and cfg_path.is_file() and fmt == "segformer":
        config = PvtV2Config.from_segformer_dict(PvtV2Config.read_json(cfg_path), **overrides)
    elif cfg_path is not None and cfg_path.is_file() and fmt == "transformers":
        config = PvtV2Config.from_json_file(cfg_path, **overrides)
    else:
        config = infer_config(canonical, fmt, **overrides)
    cast = _resolve_dtype(dtype, raw, config)

    model = cls(config)
    info = load_into(model, canonical, format="transformers", ignore_mismatched_sizes=ignore_mismatched_sizes)
    if cast is not None or target_device is not None:
        model.to(device=target_device, dtype=cast)
    model.set_fast(fast)
    model.eval()
    return (model, info) if output_loading_info else model


# ---------------------------------------------------------------------------------------------- save_pretrained
_SHARD = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")
_CHECKPOINT_FILES = {CONFIG_NAME, SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME}


def _parse_size(size: int | str, name: str = "max_shard_size") -> int:
    """Bytes from an int or transformers' strings ("5GB", "500MB", "2MiB", "100kB")."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"{name}: must be > 0 bytes, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?B|B)?\s*", size) if isinstance(size, str) else None
    if not m:
        raise ValueError(f"{name}: must be a byte count or a size such as '5GB' / '500MB', got {size!r}")
    unit = (m.group(2) or "B").upper()
    scale = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }[unit]
    return _parse_size(int(float(m.group(1)) * scale), name)


def _shards(sd: StateDict, max_bytes: Optional[int]) -> List[StateDict]:
    shards, current, size = [], {}, 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if current and max_bytes is not None and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k] = v
        size += nbytes
    shards.append(current)
    return shards


def _is_checkpoint_file(name: str, stale_shards: set) -> bool:
    return name in _CHECKPOINT_FILES or bool(_SHARD.match(name)) or name in stale_shards


def save_pretrained(
    model: torch.nn.Module,
    save_directory: str | os.PathLike,
    max_shard_size: Optional[int | str] = None,
    safe_serialization: bool = True,
) -> None:
    """``config.json`` + ``model.safetensors`` (or shards + index beyond ``max_shard_size``: bytes or "5GB";
    ``pytorch_model.bin`` with ``safe_serialization=False``), replacing ``save_directory``'s checkpoint atomically.

    Other files in the folder (a preprocessor config, a README) are kept; weight files of the previous checkpoint
    are removed with it, so a sharded save never leaves an old ``model.safetensors`` that would load instead.
    """
    from ._atomic import replace_folder

    limit = None if max_shard_size is None else _parse_size(max_shard_size)
    # As transformers writes them: the class that saved, and the parameters' dtype ("auto" loads read it back).
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    written = {"architectures": [type(model).__name__]}
    if floats:
        written["dtype"] = str(floats[0]).removeprefix("torch.")
    config = PvtV2Config.from_dict({**model.config.to_dict(), **written})
    config.validate()
    config_text = config.to_json_string()  # before touching the disk: an unwritable config fails early
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    total = sum(v.numel() * v.element_size() for v in sd.values())

    target = Path(os.fspath(save_directory))
    stale: set = set()
    for index in (SAFE_INDEX_NAME, WEIGHTS_INDEX_NAME):  # shards an old index names, whatever their names
        try:
            stale |= set(read_index(target / index).values())
        except (FileNotFoundError, CheckpointError, OSError):
            pass

    def write(folder: Path, name: str, tensors: StateDict) -> None:
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(tensors, str(folder / name), metadata={"format": "pt"})
        else:
            torch.save(tensors, folder / name)

    with replace_folder(target, keep=lambda name: not _is_checkpoint_file(name, stale)) as staging:
        shards = _shards(sd, limit)
        stem, ext = ("model", "safetensors") if safe_serialization else ("pytorch_model", "bin")
        if len(shards) == 1:  # weights first, then the index, then the config
            write(staging, f"{stem}.{ext}", shards[0])
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}"
                write(staging, name, shard)
                weight_map.update({k: name for k in shard})
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (staging / (SAFE_INDEX_NAME if safe_serialization else WEIGHTS_INDEX_NAME)).write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
        (staging / CONFIG_NAME).write_text(config_text, encoding="utf-8")
