"""Resolve a local path or a Hugging Face hub id to files on disk (cache first, then the network)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# transformers' hub keywords of from_pretrained, accepted by resolve_folder / resolve_file.
HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "force_download", "token", "subfolder")


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def _check_subfolder(subfolder: str) -> str:
    if not isinstance(subfolder, (str, os.PathLike)):
        raise TypeError(f"subfolder must be a string, got {type(subfolder).__name__}")
    sub = os.fspath(subfolder)
    if os.path.isabs(sub) or ".." in Path(sub).parts:
        raise ValueError(f"subfolder: {sub!r} must be a relative path inside the checkpoint folder")
    return sub.strip("/")


def resolve_folder(
    path_or_id: str | os.PathLike,
    patterns: Iterable[str] = ("*.json", "*.safetensors", "*.bin"),
    *,
    subfolder: str = "",
    revision: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    local_files_only: bool = False,
    force_download: bool = False,
    token: Optional[str | bool] = None,
) -> Path:
    """A local folder as it is; a hub id through huggingface_hub's cache, else a download (unless
    ``local_files_only``). ``subfolder`` names a folder inside either; the hub keywords are transformers'.

    Offline (or when the hub cannot be reached) the error says so and how to pass a local folder instead.
    """
    sub = _check_subfolder(subfolder)
    path = Path(os.fspath(path_or_id)).expanduser()
    if path.exists():
        if sub and not (path / sub).is_dir():
            raise FileNotFoundError(f"{os.fspath(path_or_id)!r} has no subfolder {sub!r}")
        return path / sub if sub else path
    from ._atomic import interrupted_backup

    backup = interrupted_backup(path)
    if backup is not None:  # a save_pretrained was killed mid-swap: the backup is the complete previous model
        import logging

        logging.getLogger(__name__).warning(
            "%s is missing after an interrupted save; reading the previous version from %s", path, backup
        )
        return backup / sub if sub else backup
    name = os.fspath(path_or_id)
    if not _looks_like_hub_id(name):
        raise FileNotFoundError(f"{name!r} is neither an existing path nor a hub id of the form 'org/name'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise FileNotFoundError(f"{name!r} is not a local path and huggingface_hub is not installed") from None
    allow = [f"{sub}/{p}" if sub else p for p in patterns]
    hub = dict(revision=revision, cache_dir=None if cache_dir is None else os.fspath(cache_dir), token=token)
    errors = []
    for local_only in (True,) if local_files_only else (True, False):
        try:
            folder = Path(
                snapshot_download(
                    name,
                    allow_patterns=allow,
                    local_files_only=local_only,
                    force_download=force_download and not local_only,
                    **hub,
                )
            )
            return folder / sub if sub else folder
        except Exception as e:  # noqa: BLE001 - every hub failure becomes one clear error below
            errors.append(" ".join(f"{type(e).__name__}: {e}".split()))  # one line
    where = (
        "not in the local cache (local_files_only=True)"
        if local_files_only
        else (f"not in the local cache, and the download failed: {errors[-1]}")
    )
    raise OSError(
        f"could not reach hub id {name!r}{f' at revision {revision!r}' if revision else ''} ({where}). "
        f"Without network access, download the checkpoint elsewhere and pass its local folder, e.g. "
        f"from_pretrained('/path/to/pvt_v2_b0') with config.json and model.safetensors inside."
    )


def resolve_file(path_or_id: str | os.PathLike, filename: str, **hub_options) -> Path:
    """``filename`` inside a folder or hub id; a path to the file itself is accepted too."""
    path = Path(os.fspath(path_or_id)).expanduser()
    if path.is_file():
        return path
    folder = resolve_folder(path_or_id, patterns=(filename,), **hub_options)
    target = folder / filename
    if not target.is_file():
        raise FileNotFoundError(f"{os.fspath(path_or_id)!r} has no {filename}")
    return target


def find_weights(folder: Path, use_safetensors: Optional[bool] = None) -> Optional[Path]:
    """The weights file of a checkpoint folder, safetensors first (``use_safetensors``: True requires them,
    False skips them, as in transformers)."""
    for name in WEIGHT_FILES:
        if use_safetensors is not None and name.startswith("model.safetensors") != use_safetensors:
            continue
        if (folder / name).is_file():
            return folder / name
    return None
