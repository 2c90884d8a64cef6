"""Image preprocessing matching the hub checkpoints' ``PvtImageProcessor``: resize, rescale, normalise.

Accepts PIL images, numpy arrays (H×W×C or H×W, uint8 or float) and tensors (C×H×W, or a batch B×C×H×W),
single or as a list. uint8 images are resized as uint8 (antialiased, rounded), as transformers' torchvision
backend does, then rescaled by 1/255 and normalised with ImageNet mean/std.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
# PIL resample codes as stored in preprocessor_config.json.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", "nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}


class PvtV2ImageProcessor:
    """``processor(images) -> {"pixel_values": (B, 3, H, W) float32}``."""

    def __init__(
        self,
        do_resize: bool = True,
        size: Optional[Dict[str, int] | int | Sequence[int]] = None,
        resample: int | str = 2,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        **_: Any,
    ) -> None:
        if size is None:
            size = {"height": 224, "width": 224}
        elif isinstance(size, int):
            size = {"height": size, "width": size}
        elif not isinstance(size, dict):
            size = {"height": int(size[0]), "width": int(size[1])}
        if resample not in _RESAMPLE:
            raise ValueError(f"resample: unsupported value {resample!r}; use bilinear (2), bicubic (3) or nearest (0)")
        self.do_resize, self.size, self.resample = do_resize, dict(size), _RESAMPLE[resample]
        self.do_rescale, self.rescale_factor = do_rescale, rescale_factor
        self.do_normalize, self.image_mean, self.image_std = do_normalize, list(image_mean), list(image_std)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **overrides: Any) -> "PvtV2ImageProcessor":
        """Reads ``preprocessor_config.json`` from a folder or hub id; defaults when the folder has none."""
        from .hub import resolve_folder

        folder = resolve_folder(path_or_id, patterns=("preprocessor_config.json",))
        cfg_file = Path(folder) / "preprocessor_config.json" if Path(folder).is_dir() else None
        data = json.loads(cfg_file.read_text()) if cfg_file is not None and cfg_file.is_file() else {}
        return cls(**{**data, **overrides})

    # ------------------------------------------------------------------ conversion
    @staticmethod
    def _to_tensor(image: Any) -> torch.Tensor:
        """One image → (C, H, W) tensor, uint8 kept as uint8."""
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            image = np.array(image.convert("RGB"))  # a writable copy
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=-1)
            if image.ndim != 3:
                raise ValueError(f"numpy images must be H×W×C or H×W, got shape {image.shape}")
            if image.shape[-1] not in (1, 3, 4) and image.shape[0] in (1, 3, 4):
                image = np.moveaxis(image, 0, -1)  # channels-first array
            if image.shape[-1] == 4:
                image = image[..., :3]
            if image.shape[-1] == 1:
                image = np.repeat(image, 3, axis=-1)
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if isinstance(image, torch.Tensor):
            if image.ndim == 2:
                image = image.unsqueeze(0).expand(3, -1, -1)
            if image.ndim != 3:
                raise ValueError(f"tensor images must be C×H×W (or a B×C×H×W batch), got shape {tuple(image.shape)}")
            return image
        raise TypeError(f"unsupported image type {type(image).__name__}; pass PIL images, numpy arrays or tensors")

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        h, w = self.size["height"], self.size["width"]
        if tuple(image.shape[-2:]) == (h, w):
            return image
        is_uint8 = image.dtype == torch.uint8
        x = image.unsqueeze(0).float()
        mode = self.resample
        kwargs = {} if mode == "nearest" else dict(align_corners=False, antialias=True)
        x = F.interpolate(x, size=(h, w), mode=mode, **kwargs)[0]
        if is_uint8:
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        return x

    def preprocess(self, images: Any) -> Dict[str, torch.Tensor]:
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images.unbind(0))
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("no images given")
        out: List[torch.Tensor] = []
        for image in images:
            x = self._to_tensor(image)
            if self.do_resize:
                x = self._resize(x)
            x = x.float()
            if self.do_rescale:
                x = x * self.rescale_factor
            if self.do_normalize:
                mean = torch.tensor(self.image_mean).view(-1, 1, 1)
                std = torch.tensor(self.image_std).view(-1, 1, 1)
                x = (x - mean) / std
            out.append(x)
        shapes = {tuple(x.shape) for x in out}
        if len(shapes) > 1:
            raise ValueError(f"images have different sizes after preprocessing ({shapes}); enable do_resize")
        return {"pixel_values": torch.stack(out)}

    __call__ = preprocess

    def to_dict(self) -> Dict[str, Any]:
        inverse = {"nearest": 0, "bilinear": 2, "bicubic": 3}
        return dict(image_processor_type="PvtImageProcessor", do_resize=self.do_resize, size=self.size,
                    resample=inverse[self.resample], do_rescale=self.do_rescale, rescale_factor=self.rescale_factor,
                    do_normalize=self.do_normalize, image_mean=self.image_mean, image_std=self.image_std)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        Path(directory, "preprocessor_config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
