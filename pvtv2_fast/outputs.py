"""Model outputs shaped like transformers' (attribute access, ``out[0]`` indexing, ``to_tuple()``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, Tuple

import torch


class ModelOutput:
    """Indexing skips ``None`` fields, as in transformers: ``out[0]`` is the first field that was returned."""

    def to_tuple(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.to_tuple())

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


@dataclass
class BaseModelOutput(ModelOutput):
    """``last_hidden_state: (B, C_4, H/32, W/32)``; ``hidden_states``: one ``(B, C_i, H_i, W_i)`` map per stage."""

    last_hidden_state: torch.Tensor = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@dataclass
class ImageClassifierOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: torch.Tensor = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@dataclass
class BackboneOutput(ModelOutput):
    """``feature_maps``: ``(B, C_i, H_i, W_i)`` for each stage in ``config.out_features``."""

    feature_maps: Tuple[torch.Tensor, ...] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@dataclass
class SemanticSegmenterOutput(ModelOutput):
    """``logits: (B, num_labels, H/4, W/4)``; ``loss`` with ``labels (B, H, W)`` (logits upsampled to them)."""

    loss: Optional[torch.Tensor] = None
    logits: torch.Tensor = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


def _register_pytree(cls) -> None:
    """So torch.export / torch.compile can return these outputs (transformers registers its ModelOutput alike)."""
    import torch.utils._pytree as pytree

    names = [f.name for f in fields(cls)]
    pytree.register_pytree_node(
        cls,
        lambda out: ([getattr(out, n) for n in names], names),
        lambda values, context: cls(**dict(zip(context, values))),
        serialized_type_name=f"pvtv2_fast.{cls.__name__}",
    )


for _cls in (BaseModelOutput, ImageClassifierOutput, BackboneOutput, SemanticSegmenterOutput):
    _register_pytree(_cls)
