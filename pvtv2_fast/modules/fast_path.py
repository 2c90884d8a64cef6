"""The one switch between the reference and the fused path, shared by every module that has both."""

from __future__ import annotations

from typing import Optional

import torch


class FastPath:
    """Mixin of the modules whose math runs through :mod:`pvtv2_fast.ops`.

    ``backend`` is the only state: ``None`` runs the reference (the ops' ``"torch"`` backend and transformers'
    memory layouts); a backend name (``"auto"``, ``"triton"``, ...) is fast mode with that backend. Set it for a
    whole model with ``PvtV2PreTrainedModel.set_fast``.
    """

    backend: Optional[str] = None

    @property
    def fast(self) -> bool:
        return self.backend is not None

    @fast.setter
    def fast(self, enabled: bool) -> None:
        self.backend = "auto" if enabled else None

    @property
    def op_backend(self) -> str:
        """The ``backend=`` this module passes to the ops."""
        return self.backend or "torch"


def token_map(tokens: torch.Tensor, height: int, width: int, channels_last: bool) -> torch.Tensor:
    """``(B, H·W, C)`` tokens as a ``(B, C, H, W)`` map: a channels-last *view* (no copy; convolutions then write
    channels-last, i.e. token, memory), or transformers' ``transpose(1, 2).reshape(...)`` (the reference's
    numerics follow its layout, since convolution algorithms round by layout)."""
    b, _, c = tokens.shape
    if channels_last:
        return tokens.view(b, height, width, c).permute(0, 3, 1, 2)
    return tokens.transpose(1, 2).reshape(b, c, height, width)
