"""The one switch between the reference and the fused path, shared by every module that has both."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F


class _DerivedWeights(dict):
    """The per-module inference cache: copies and pickles start empty. Its entries are derived from the weights
    (and may be opaque oneDNN tensors, which have no storage to copy), so a deep-copied or unpickled module
    recomputes them instead of failing or sharing them."""

    def __deepcopy__(self, memo) -> "_DerivedWeights":
        return _DerivedWeights()

    def __reduce__(self):
        return _DerivedWeights, ()


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

    def _inference_cache(self, slot: str, params: tuple, make):
        """:func:`inference_cache` of this module."""
        return inference_cache(self, slot, params, make)

    def _channels_last_weight(self, slot: str, weight: torch.Tensor) -> torch.Tensor:
        """A conv weight in channels-last memory (same values), cached: a conv whose input is a channels-last view
        wants its weight channels-last too, and oneDNN would otherwise reorder it on every call (profiled: 0.7 ms
        per forward for b0's last patch embedding at 224², more than its arithmetic)."""
        return self._inference_cache(slot, (weight,), lambda: weight.contiguous(memory_format=torch.channels_last))

    def _conv2d(self, slot: str, x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
        """``conv(x)`` in fast mode, for ``x`` a channels-last map ``(B, C, H, W)``; the result is channels-last too.

        Inference on CPU (fp32, or bf16 where oneDNN runs it natively): oneDNN's convolution on the weight reordered
        once into its blocked layout (size-agnostic, so any input size reuses it) and cached (see
        :meth:`_inference_cache`); ``F.conv2d`` reorders the weight on every call, which measured 1.0–1.6× (fp32) and
        1.2–1.9× (bf16) slower on b2's patch-embedding and spatial-reduction convs, same bits out. Otherwise
        ``F.conv2d`` with the weight channels-last (cached), so oneDNN does not reorder it per call either."""
        if (
            not torch.compiler.is_compiling()  # first: the checks below are not traceable
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and (x.dtype == torch.float32 and _mkldnn() or x.dtype == torch.bfloat16 and _mkldnn_bf16())
        ):
            packed = self._inference_cache(
                f"{slot}_packed",
                (conv.weight,),
                lambda: torch._C._nn.mkldnn_reorder_conv2d_weight(
                    conv.weight.to_mkldnn(), conv.padding, conv.stride, conv.dilation, conv.groups, None
                ),
            )
            return torch.ops.mkldnn._convolution_pointwise(
                x, packed, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, "none", [], ""
            )
        weight = self._channels_last_weight(slot, conv.weight)
        return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def _linear(
        self,
        slot: str,
        x: torch.Tensor,
        params: Sequence[Optional[torch.Tensor]],
        weights: Callable[[], tuple],
        residual: Optional[torch.Tensor] = None,
        onednn: bool = False,
    ) -> torch.Tensor:
        """``F.linear(x, *weights())`` (``+ residual`` when given) where ``weights()`` returns ``(weight (out, in),
        bias or None)`` derived from ``params``. ``onednn=True``: the caller measured oneDNN faster for this use, so
        it runs wherever oneDNN takes ``x``'s dtype (fp32 below the size rule too).

        In fast mode, inference on CPU runs oneDNN's linear on the weight prepacked once into its blocked layout and
        cached (see :meth:`_inference_cache`), bias and residual added in the GEMM's epilogue (a binary post-op):
        for bf16 always (``F.linear`` reorders the plain weight on every call, 1.2–1.5× slower on b0/b2's
        projections, same bits out), for fp32 where the output is at least :data:`ONEDNN_FP32_MIN_OUT_BYTES`: there
        ``F.linear`` (MKL's addmm) first copies the bias into the fresh output and the residual costs one more pass,
        and oneDNN measured 1.1–1.7× faster (1.2–1.8× with the residual) on the stage-1/2 projections at 512² and
        up; below it the two were within ±15% either way, except under weights of at least
        :data:`ONEDNN_FP32_MIN_WEIGHT_BYTES` (the C = 512 stage), where oneDNN also wins. Everything else is
        ``F.linear``, the residual added in place into its fresh output rather than into a new tensor (fp addition
        commutes: the bits are the reference's ``residual + out``)."""
        weight, bias = weights()
        if (
            torch.compiler.is_compiling()  # first: the checks below are not traceable
            or torch.is_grad_enabled()
            or not (self.fast and x.device.type == "cpu")
            or not (_onednn_linear(x, weight.shape[0]) or onednn and onednn_takes(x.dtype))
            or (residual is not None and (residual.dtype != x.dtype or residual.shape[:-1] != x.shape[:-1]))
        ):
            out = F.linear(x, weight, bias)
            return out if residual is None else out.add_(residual)

        def pack():
            weight, bias = weights()
            return torch.ops.mkldnn._reorder_linear_weight(weight, None), bias

        packed, bias = self._inference_cache(slot, tuple(params), pack)
        if residual is None:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x.contiguous(), residual.contiguous(), packed, bias, "add")


_registrations = 0  # parameters and submodules registered anywhere so far, see registration_generation()


def _registered(*_args) -> None:
    global _registrations
    _registrations += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_registered)
torch.nn.modules.module.register_module_module_registration_hook(_registered)


def registration_generation() -> int:
    """A number that changes whenever any module registers a parameter or a submodule (assignment,
    ``load_state_dict(assign=True)``, ``register_parameter``): a module that keeps a list of its parameters keys it
    on this, rather than gathering them on every call. (Changes of a parameter's values or storage, ``.to()``
    included, do not register anything: :func:`inference_cache` keys on those.)"""
    return _registrations


def derived_cache(module: torch.nn.Module) -> dict:
    """``module``'s dictionary of values derived from its parameters (:func:`inference_cache`'s entries), which copies
    and pickles of the module start without."""
    return module.__dict__.setdefault("_inference_caches", _DerivedWeights())


def inference_cache(module: torch.nn.Module, slot: str, params: tuple, make):
    """``make()``, computed once per state of ``params`` and kept in ``module`` under ``slot`` (derived weights for
    inference: packed K/V, channels-last conv weights): the cache key is their identity, version counter and storage,
    so in-place updates, ``load_state_dict`` and ``.to()`` all invalidate it; under autograd or compilation ``make()``
    runs every call (it must be part of the graph), and likewise for parameters created under
    ``torch.inference_mode()``, which have no version counter to key on."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return make()
    try:
        key = tuple((id(p), p._version, p.data_ptr()) if p is not None else None for p in params)
    except RuntimeError:  # an inference tensor: no version counter
        return make()
    caches = derived_cache(module)
    entry = caches.get(slot)
    if entry is None or entry[0] != key:
        entry = caches[slot] = (key, make())
    return entry[1]


# fp32 linears whose output (rows × out features) is at least this many bytes run on oneDNN (see FastPath._linear).
ONEDNN_FP32_MIN_OUT_BYTES = 2 << 20
# ... and those whose weight is at least this many bytes, whatever their rows: the C = 512 last stage's projections
# (512×512, 1024×512) measured 1.4-1.7x faster on oneDNN over 49 rows (224²; MKL's addmm then runs them on one
# thread), 1.15-1.2x over 64, 1.0-1.1x over 98-1024 (2 threads, interleaved; 0.8 MB weights, 320×640, stay on
# F.linear: 0.91-0.95x).
ONEDNN_FP32_MIN_WEIGHT_BYTES = 1 << 20


def onednn_takes(dtype: torch.dtype) -> bool:
    """Whether oneDNN's prepacked linear runs ``dtype`` on CPU here (bf16 only where the CPU has native bf16)."""
    return _mkldnn_bf16() if dtype == torch.bfloat16 else dtype == torch.float32 and _mkldnn()


def _onednn_linear(x: torch.Tensor, out_features: int) -> bool:
    """Whether the fast path's linear on CPU tensor ``x`` goes to oneDNN's prepacked linear (measured rule): bf16
    wherever oneDNN takes it, fp32 from ONEDNN_FP32_MIN_OUT_BYTES of output or ONEDNN_FP32_MIN_WEIGHT_BYTES of
    weight up."""
    if not onednn_takes(x.dtype):
        return False
    if x.dtype == torch.bfloat16:
        return True
    if x.shape[-1] == 0:
        return False
    if x.shape[-1] * out_features * x.element_size() >= ONEDNN_FP32_MIN_WEIGHT_BYTES:
        return True
    return x.numel() // x.shape[-1] * out_features * x.element_size() >= ONEDNN_FP32_MIN_OUT_BYTES


@functools.lru_cache(maxsize=None)
def _mkldnn() -> bool:
    """Whether this torch build has oneDNN (mkldnn) for CPU tensors."""
    return bool(torch.backends.mkldnn.is_available())


@functools.lru_cache(maxsize=None)
def _mkldnn_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 / AMX, or AVX-512 BW)."""
    return _mkldnn() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def token_map(tokens: torch.Tensor, height: int, width: int, channels_last: bool) -> torch.Tensor:
    """``(B, H·W, C)`` tokens as a ``(B, C, H, W)`` map: a channels-last *view* (no copy; convolutions then write
    channels-last, i.e. token, memory), or transformers' ``transpose(1, 2).reshape(...)`` (the reference's
    numerics follow its layout, since convolution algorithms round by layout)."""
    b, _, c = tokens.shape
    if channels_last:
        return tokens.view(b, height, width, c).permute(0, 3, 1, 2)
    return tokens.transpose(1, 2).reshape(b, c, height, width)
