"""PVTv2 models: the hierarchical encoder (`PvtV2Model`), the classifier and the multi-scale backbone.

State-dict keys and shapes are those of transformers' classes, so transformers checkpoints load with
``strict=True``; timm and original PVTv2 checkpoints load through :mod:`pvtv2_fast.checkpoint`.
``fast=True`` switches the attention and FFN modules to the fused ops of :mod:`pvtv2_fast.ops`; parameters,
``state_dict`` and outputs stay those of the reference.
"""

from __future__ import annotations

import enum
import math
import os
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .config import PvtV2Config
from .modules import AllMLPDecodeHead, ConvFeedForward, FastPath, OverlapPatchEmbed, PvtV2Block, TokenLayerNorm
from .modules.fast_path import token_map
from .modules.ffn import DEFAULT_HIDDEN_BUDGETS
from .ops.block_cache import cpu_block_cache
from .outputs import BackboneOutput, BaseModelOutput, ImageClassifierOutput, SemanticSegmenterOutput
from .validation import check_pixel_values

__all__ = [
    "PvtV2PreTrainedModel",
    "PvtV2Model",
    "PvtV2ForImageClassification",
    "PvtV2Backbone",
    "PvtV2ForSemanticSegmentation",
    "PvtV2Encoder",
    "PvtV2Stage",
    "BackboneType",
]


class PvtV2Stage(nn.Module):
    """One pyramid stage: overlapping patch embedding (downsampling), ``depth`` blocks, a final LayerNorm.

    ``(B, C_in, H, W)`` → ``((B, H'·W', C) tokens, attention maps or None, H', W')``.
    """

    def __init__(self, config: PvtV2Config, stage_idx: int, drop_path_rates: list) -> None:
        super().__init__()
        hidden = config.hidden_sizes[stage_idx]
        in_channels = config.num_channels if stage_idx == 0 else config.hidden_sizes[stage_idx - 1]
        self.patch_embedding = OverlapPatchEmbed(
            in_channels, hidden, config.patch_sizes[stage_idx], config.strides[stage_idx], config.embed_layer_norm_eps
        )
        self.blocks = nn.ModuleList(
            PvtV2Block(
                hidden,
                config.num_attention_heads[stage_idx],
                config.sr_ratios[stage_idx],
                config.mlp_ratios[stage_idx],
                linear_attention=config.linear_attention,
                qkv_bias=config.qkv_bias,
                hidden_act=config.hidden_act,
                hidden_dropout=config.hidden_dropout_prob,
                attention_dropout=config.attention_probs_dropout_prob,
                drop_path=rate,
                eps=config.layer_norm_eps,
                sr_eps=config.sr_layer_norm_eps,
            )
            for rate in drop_path_rates
        )
        self.layer_norm = TokenLayerNorm(hidden, eps=config.layer_norm_eps)
        # Set by PvtV2PreTrainedModel.gradient_checkpointing_enable: in training, each block's activations are
        # recomputed in the backward pass instead of kept (torch.utils.checkpoint).
        self.gradient_checkpointing = False
        self.checkpoint_kwargs: Dict[str, Any] = {}

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        hidden_states, height, width = self.patch_embedding(x)
        attentions = () if output_attentions else None
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden_states, probs = torch.utils.checkpoint.checkpoint(
                    block, hidden_states, height, width, output_attentions, **self.checkpoint_kwargs
                )
            else:
                hidden_states, probs = block(hidden_states, height, width, output_attentions)
            if output_attentions:
                attentions += (probs,)
        return self.layer_norm(hidden_states), attentions, height, width


class PvtV2Encoder(FastPath, nn.Module):
    """``pixel_values (B, C, H, W)`` → per-stage maps ``(B, C_i, H_i, W_i)``, strides 4, 8, 16, 32."""

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__()
        self.config = config
        # Stochastic depth grows linearly over all blocks of all stages.
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        starts = [sum(config.depths[:i]) for i in range(config.num_encoder_blocks)]
        self.layers = nn.ModuleList(
            PvtV2Stage(config, i, rates[starts[i] : starts[i] + config.depths[i]])
            for i in range(config.num_encoder_blocks)
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        last_stage: Optional[int] = None,
    ) -> BaseModelOutput:
        if (
            not torch.compiler.is_dynamo_compiling()
            and torch.onnx.is_in_onnx_export()
            and not getattr(self, "_pvtv2_export_mode", False)
        ):
            # torch.onnx.export of any model: the reference path whatever `fast` says (ONNX has no operator for
            # the fused ops; see pvtv2_fast.export).
            from .export import export_mode

            with export_mode(self):
                return self.forward(pixel_values, output_attentions, output_hidden_states, last_stage)
        if (
            self.fast
            and not torch.compiler.is_compiling()  # first: the checks below are not traceable
            and pixel_values.device.type == "cpu"
            and not torch.is_grad_enabled()
        ):
            # Eager CPU inference: the forward's large buffers reuse the pages of the previous call's
            # (ops.block_cache) instead of faulting fresh ones in, one 4 KB page at a time.
            with cpu_block_cache():
                return self._run_stages(pixel_values, output_attentions, output_hidden_states, last_stage)
        return self._run_stages(pixel_values, output_attentions, output_hidden_states, last_stage)

    def _run_stages(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool,
        output_hidden_states: bool,
        last_stage: Optional[int],
    ) -> BaseModelOutput:
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        hidden_states = pixel_values
        layers = self.layers if last_stage is None else self.layers[: last_stage + 1]
        for layer in layers:
            tokens, attentions, height, width = layer(hidden_states, output_attentions)
            # fast mode: stage maps stay channels-last views of the tokens (same shape and values, no copy)
            hidden_states = token_map(tokens, height, width, channels_last=self.fast)
            if not self.fast:
                hidden_states = hidden_states.contiguous()  # transformers' stage maps: contiguous NCHW
            if output_attentions:  # one tuple per stage, one map per block, as transformers returns them
                all_attentions += (attentions,)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        return BaseModelOutput(hidden_states, all_hidden_states, all_attentions)


class PvtV2PreTrainedModel(nn.Module):
    """Weights initialisation, checkpoint I/O and the ``fast`` switch shared by the PVTv2 models."""

    base_model_prefix = "pvt_v2"
    main_input_name = "pixel_values"
    config_class = PvtV2Config
    # The head a model owns, for checkpoint loading (pvtv2_fast.convert / .checkpoint read these, so they need not
    # import the model classes): its key prefix, and the prefix of its final layer, which a checkpoint may lack
    # or, with ignore_mismatched_sizes, hold at another size. None: encoder-only.
    head_prefix: Optional[str] = None
    head_output_prefix: Optional[str] = None

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__()
        if not isinstance(config, PvtV2Config):
            raise TypeError(f"config must be a PvtV2Config, got {type(config).__name__}")
        self.config = config

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' / timm's initialisation: truncated normal linears, fan-out normal convs."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def post_init(self, fast: bool = False) -> None:
        self.apply(self._init_weights)
        self.set_fast(fast)

    # ------------------------------------------------------------------ fast switch
    @property
    def fast(self) -> bool:
        return any(m.fast for m in self.modules() if isinstance(m, FastPath))

    @fast.setter
    def fast(self, value: bool) -> None:
        self.set_fast(value)

    DEFAULT_MAX_HIDDEN_BYTES = DEFAULT_HIDDEN_BUDGETS

    def set_memory_lean(self, enabled: bool = True, max_hidden_bytes: Union[None, int, Dict[str, int]] = None):
        """Bound the FFN's widened hidden state (the largest tensor at high resolution: 8× the stage width) to
        ``max_hidden_bytes`` by processing bands of rows; same outputs, memory linear in pixels with a small
        slope. The default budget is by device: 64 MB on CPU, 1 GB on CUDA (where bands cost launches more than
        bytes); an int holds for every device, a dict is by device type ({"cuda": ..., "cpu": ...}; "cpu" also
        serves the types it does not name). ``fast=True`` turns it on with the default budgets; this turns it on
        for the reference too."""
        if max_hidden_bytes is None or isinstance(max_hidden_bytes, dict):
            budget = {**DEFAULT_HIDDEN_BUDGETS, **{k: int(v) for k, v in (max_hidden_bytes or {}).items()}}
        else:
            budget = int(max_hidden_bytes)
        for module in self.modules():
            if isinstance(module, ConvFeedForward):
                module.max_hidden_bytes = budget if enabled else None
        return self

    def set_fast(self, enabled: bool = True, backend: str = "auto") -> "PvtV2PreTrainedModel":
        """Route attention, Linear-SRA pooling and the FFN through the fused ops (same weights, same outputs).

        ``backend``: ``"auto"`` (per op and device, see ``pvtv2_fast.ops.AUTO_ORDER``: C++ on CPU, Triton or CUDA C++
        by op on CUDA, attention on PyTorch's SDPA where it measured faster), or force ``"triton"``, ``"cpu"`` (C++
        kernels; attention is PyTorch's SDPA), ``"cuda"`` (CUDA C++ kernels; attention in Triton) or ``"torch"``.
        Fast mode also turns on :meth:`set_memory_lean`. Stage maps
        (``hidden_states``, ``feature_maps``) then come back as channels-last views of the tokens: the same shapes
        and values, without the layout copies. Under ``"auto"``, cases the fused kernels do not support (device,
        dtype, shape) fall back to the reference with a one-time warning that says why; a forced backend that
        cannot run raises.
        """
        from .ops import BACKENDS

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        for module in self.modules():
            if isinstance(module, FastPath):
                module.backend = backend if enabled else None
        return self.set_memory_lean(enabled)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: Optional[str | os.PathLike] = None, *args: Any, **kwargs: Any
    ):
        """Load a transformers folder/hub id, a timm / original PVTv2 checkpoint file or a ``state_dict=``, with
        transformers' keywords (see :func:`pvtv2_fast.checkpoint.from_pretrained`: ``config``, ``state_dict``,
        ``dtype``, ``device_map``, ``output_loading_info``, ``subfolder``, hub options, this library's ``format``,
        ``fast``, ``ignore_mismatched_sizes``, and config-field overrides; other keywords raise TypeError)."""
        from .checkpoint import from_pretrained

        return from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: Optional[int | str] = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write ``config.json`` and ``model.safetensors`` (transformers format; shards beyond ``max_shard_size``),
        replacing the folder's checkpoint atomically: a crash leaves the old model or the new one, never a mix."""
        from .checkpoint import save_pretrained

        save_pretrained(self, save_directory, max_shard_size=max_shard_size, safe_serialization=safe_serialization)

    def load_checkpoint(
        self,
        path_or_state_dict: Any,
        *,
        format: str = "auto",
        strict: bool = True,
        ignore_mismatched_sizes: bool = False,
    ):
        """Load weights into this model after checking every key and shape (nothing is copied on a mismatch);
        returns transformers' loading info (missing / unexpected / mismatched keys)."""
        from .checkpoint import load_into

        return load_into(
            self, path_or_state_dict, format=format, strict=strict, ignore_mismatched_sizes=ignore_mismatched_sizes
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ transformers' PreTrainedModel surface
    supports_gradient_checkpointing = True

    @property
    def base_model(self) -> nn.Module:
        """The encoder model under a task head (``self.pvt_v2``), or the model itself, as in transformers."""
        return getattr(self, self.base_model_prefix, self)

    @classmethod
    def can_generate(cls) -> bool:
        """Vision encoders do not generate text; pipelines ask."""
        return False

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter (what transformers' ``model.dtype`` reports)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[Dict[str, Any]] = None) -> None:
        """Recompute every block's activations in the backward pass (``torch.utils.checkpoint``) while training:
        activation memory per stage drops to the block inputs, for about one more forward of compute.
        ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint`` (default
        ``use_reentrant=False``; ``True`` works too, the blocks' inputs require grad)."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        for module in self.modules():
            if isinstance(module, PvtV2Stage):
                module.gradient_checkpointing = True
                module.checkpoint_kwargs = dict(kwargs)

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, PvtV2Stage):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules() if isinstance(m, PvtV2Stage))

    # transformers 5 names (its gradient_checkpointing_* are deprecated aliases of these)
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: Optional[Dict[str, Any]] = None) -> None:
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.is_gradient_checkpointing

    def _resolve(self, value: Optional[bool], name: str) -> bool:
        return getattr(self.config, name) if value is None else value


class PvtV2Model(PvtV2PreTrainedModel):
    """The PVTv2 hierarchical encoder (the MiT encoder of Segformer): ``(B, C, H, W)`` → ``(B, C_4, H/32, W/32)``."""

    def __init__(self, config: PvtV2Config, fast: bool = False) -> None:
        super().__init__(config)
        self.encoder = PvtV2Encoder(config)
        self.post_init(fast)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> BaseModelOutput | Tuple:
        check_pixel_values(pixel_values, self.config)
        out = self.encoder(
            pixel_values,
            self._resolve(output_attentions, "output_attentions"),
            self._resolve(output_hidden_states, "output_hidden_states"),
        )
        return out if self._resolve(return_dict, "return_dict") else out.to_tuple()


class PvtV2ForImageClassification(PvtV2PreTrainedModel):
    """Encoder, global average pool of the last stage, linear classifier. ``logits: (B, num_labels)``."""

    head_prefix = head_output_prefix = "classifier."

    def __init__(self, config: PvtV2Config, fast: bool = False) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.pvt_v2 = PvtV2Model(config)
        self.classifier = (
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init(fast)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> ImageClassifierOutput | Tuple:
        outputs = self.pvt_v2(pixel_values, output_attentions, output_hidden_states, return_dict=True)
        pooled = outputs.last_hidden_state.mean(dim=(2, 3))
        logits = self.classifier(pooled)
        loss = self.loss(logits, labels) if labels is not None else None
        out = ImageClassifierOutput(loss, logits, outputs.hidden_states, outputs.attentions)
        return out if self._resolve(return_dict, "return_dict") else out.to_tuple()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """transformers' rule: regression for one label, cross-entropy for integer labels, else BCE."""
        config = self.config
        labels = labels.to(logits.device)
        problem = config.problem_type
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif self.num_labels > 1 and labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if problem == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class BackboneType(str, enum.Enum):
    """Which library a backbone comes from; the values of transformers' ``BackboneType`` (a ``str`` enum, so
    ``backbone.backbone_type == "transformers"`` holds without importing transformers)."""

    TIMM = "timm"
    TRANSFORMERS = "transformers"


class PvtV2Backbone(PvtV2Model):
    """Multi-scale feature maps for dense prediction: ``feature_maps[i]: (B, C_i, H_i, W_i)`` for ``out_features``.

    Stages after the last requested one are not computed. The attributes of transformers' ``BackboneMixin``:
    ``stage_names``, ``num_features``, ``out_features`` / ``out_indices`` (settable, per model, as in transformers:
    setting them does not touch the config), ``out_feature_channels``, ``channels``, ``backbone_type``.
    """

    backbone_type = BackboneType.TRANSFORMERS

    def __init__(self, config: PvtV2Config, fast: bool = False) -> None:
        super().__init__(config, fast)
        self.num_features = list(config.hidden_sizes)
        self._out_features, self._out_indices = config.out_features, config.out_indices

    @property
    def stage_names(self) -> List[str]:
        return self.config.stage_names

    @property
    def out_features(self) -> List[str]:
        return list(self._out_features)

    @out_features.setter
    def out_features(self, value: Optional[List[str]]) -> None:
        # The config's alignment rules (None = last stage, stage order, names checked) on a scratch copy.
        probe = self.config.copy()
        probe.out_features = value
        self._out_features, self._out_indices = probe.out_features, probe.out_indices

    @property
    def out_indices(self) -> List[int]:
        return list(self._out_indices)

    @out_indices.setter
    def out_indices(self, value: Optional[List[int]]) -> None:
        probe = self.config.copy()
        probe.out_indices = value
        self._out_features, self._out_indices = probe.out_features, probe.out_indices

    @property
    def out_feature_channels(self) -> Dict[str, int]:
        """Channels of every stage by name (all stages, not only the selected ones, as in transformers)."""
        return dict(zip(self.stage_names, self.num_features))

    @property
    def channels(self) -> List[int]:
        return [self.num_features[i] for i in self._stage_indices()]

    def _stage_indices(self) -> List[int]:
        """``out_indices`` as non-negative stage indices (transformers keeps ``[-1]`` as given)."""
        return [i % len(self.stage_names) for i in self._out_indices]

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> BackboneOutput | Tuple:
        """``return_dict=False`` gives transformers' tuple, ``(feature_maps,)`` plus ``(hidden_states,)`` when
        asked; transformers' backbone never returns attentions, ours does in the ``BackboneOutput`` (a superset:
        a tuple consumer unpacking positions sees exactly transformers' layout)."""
        check_pixel_values(pixel_values, self.config)
        output_hidden_states = self._resolve(output_hidden_states, "output_hidden_states")
        output_attentions = self._resolve(output_attentions, "output_attentions")
        indices = self._stage_indices()
        out = self.encoder(
            pixel_values,
            output_attentions,
            output_hidden_states=True,
            last_stage=None if output_hidden_states else max(indices),
        )
        feature_maps = tuple(out.hidden_states[i] for i in indices)
        hidden_states = out.hidden_states if output_hidden_states else None
        if not self._resolve(return_dict, "return_dict"):
            return (feature_maps,) + ((hidden_states,) if output_hidden_states else ())
        return BackboneOutput(feature_maps, hidden_states, out.attentions)


class PvtV2ForSemanticSegmentation(PvtV2PreTrainedModel):
    """Segformer: the PVTv2 / MiT encoder plus the all-MLP decode head. ``logits: (B, num_labels, H/4, W/4)``.

    Loads transformers' ``SegformerForSemanticSegmentation`` checkpoints (hub v4 key names and v5 names alike).
    Decoder settings are config fields beyond transformers' PvtV2Config (Segformer's): ``decoder_hidden_size`` (256),
    ``classifier_dropout_prob`` (0.1), ``semantic_loss_ignore_index`` (255). Whole-image and sliding-window
    inference at the input's resolution: :mod:`pvtv2_fast.segmentation`.
    """

    head_prefix, head_output_prefix = "decode_head.", "decode_head.classifier."

    def __init__(self, config: PvtV2Config, fast: bool = False) -> None:
        super().__init__(config)
        self.pvt_v2 = PvtV2Model(config)
        self.decode_head = AllMLPDecodeHead(
            config.hidden_sizes,
            config.decoder_hidden_size,
            config.num_labels,
            config.classifier_dropout_prob,
        )
        self.post_init(fast)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> SemanticSegmenterOutput | Tuple:
        """``labels (B, H, W)`` integer class ids (or 0/1 for ``num_labels == 1``, binary cross-entropy).
        ``attentions``, as Segformer returns them: one ``(B, heads, N_i, M_i)`` map per block, all stages in one
        flat tuple (``PvtV2Model`` nests them per stage, as transformers' PvtV2 does)."""
        if labels is not None and self.config.num_labels < 1:
            raise ValueError(f"labels need num_labels >= 1, the config has {self.config.num_labels}")
        output_attentions = self._resolve(output_attentions, "output_attentions")
        outputs = self.pvt_v2(pixel_values, output_attentions, output_hidden_states=True, return_dict=True)
        maps = outputs.hidden_states
        logits = self.decode_head(maps)
        loss = None
        if labels is not None:
            upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            ignore = self.config.semantic_loss_ignore_index
            if self.config.num_labels > 1:
                loss = F.cross_entropy(upsampled, labels.long(), ignore_index=ignore)
            else:
                valid = ((labels >= 0) & (labels != ignore)).float()
                loss = (
                    F.binary_cross_entropy_with_logits(upsampled.squeeze(1), labels.float(), reduction="none") * valid
                ).mean()
        keep = self._resolve(output_hidden_states, "output_hidden_states")
        attentions = tuple(a for stage in outputs.attentions for a in stage) if output_attentions else None
        out = SemanticSegmenterOutput(loss, logits, maps if keep else None, attentions)
        return out if self._resolve(return_dict, "return_dict") else out.to_tuple()
