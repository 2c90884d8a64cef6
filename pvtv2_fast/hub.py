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


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def resolve_folder(path_or_id: str | os.PathLike, patterns: Iterable[str] = ("*.json", "*.safetensors", "*.bin")) -> Path:
    """A local folder as it is; a hub id through huggingface_hub's cache, else a download.

    Offline (or when the hub cannot be reached) the error says so and how to pass a local folder instead.
    """
    path = Path(os.fspath(path_or_id)).expanduser()
    if path.exists():
        return path
    name = os.fspath(path_or_id)
    if not _looks_like_hub_id(name):
        raise FileNotFoundError(f"{name!r} is neither an existing path nor a hub id of the form 'org/name'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise FileNotFoundError(f"{name!r} is not a local path and huggingface_hub is not installed") from None
    errors = []
    for local_only in (True, False):
        try:
            return Path(snapshot_download(name, allow_patterns=list(patterns), local_files_only=local_only))
        except Exception as e:  # noqa: BLE001 - every hub failure becomes one clear error below
            errors.append(" ".join(f"{type(e).__name__}: {e}".split()))  # one line
    raise OSError(
        f"could not reach hub id {name!r} (not in the local cache, and the download failed: {errors[-1]}). "
        f"Without network access, download the checkpoint elsewhere and pass its local folder, e.g. "
        f"from_pretrained('/path/to/pvt_v2_b0') with config.json and model.safetensors inside."
    )


def resolve_file(path_or_id: str | os.PathLike, filename: str) -> Path:
    """``filename`` inside a folder or hub id; a path to the file itself is accepted too."""
    path = Path(os.fspath(path_or_id)).expanduser()
    if path.is_file():
        return path
    folder = resolve_folder(path_or_id, patterns=(filename,))
    target = folder / filename
    if not target.is_file():
        raise FileNotFoundError(f"{os.fspath(path_or_id)!r} has no {filename}")
    return target


def find_weights(folder: Path) -> Optional[Path]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None
