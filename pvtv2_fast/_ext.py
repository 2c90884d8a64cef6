"""The compiled extension ``pvtv2_fast._C`` (csrc/): loaded once; the package works without it.

``PVTV2_FAST_EXT=/path/to/_C.so`` loads another build instead (e.g. the AddressSanitizer one of
``make sanitize``); ``PVTV2_FAST_CPU_ISA=default|avx2|avx512`` caps the instruction set the CPU kernels use (they
pick the widest the CPU has). The C++ side parses its environment variables strictly (``PVTV2_FAST_CPU_ISA``,
``PVTV2_FAST_FFN_BAND_KB``, ``PVTV2_FAST_FFN_WHOLE_KB``, ``PVTV2_FAST_CPU_CACHE_MB``): every call that reads a value
it does not accept raises, naming the variable, the value and what is accepted.

The registered ops (``torch.ops.pvtv2_fast_C.*``, named as in ``pvtv2_fast.ops``) check their own arguments
(csrc/include/pvtv2/checks.h) and raise ``RuntimeError`` on bad input, whichever kernel (CPU, CUDA, Meta) runs.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

_loaded: Optional[bool] = None
_error = ""
# (op, device type) -> has a kernel; asked once per op when pvtv2_fast.ops registers its kernels (at import), so
# dispatch inside torch.compile only reads Python values
_kernels: dict = {}


def available() -> bool:
    global _loaded, _error
    if _loaded is None:
        override = os.environ.get("PVTV2_FAST_EXT")
        try:
            if override:
                torch.ops.load_library(override)
            else:
                from . import _C  # noqa: F401 - importing registers the pvtv2_fast_C ops
            _loaded = True
        except (ImportError, OSError) as e:
            _loaded, _error = False, str(e)
    return _loaded


def library_path() -> Optional[str]:
    """The file of the loaded extension (``PVTV2_FAST_EXT`` or ``pvtv2_fast._C``), None when it is not loaded."""
    if not available():
        return None
    override = os.environ.get("PVTV2_FAST_EXT")
    if override:
        return override
    from . import _C

    return _C.__file__


def unavailable_reason() -> str:
    available()
    return (
        f"the C++ extension pvtv2_fast._C is not built ({_error}); build it with pip install --no-build-isolation -e ."
    )


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``pvtv2_fast_C::op`` has a kernel for this device (CUDA only when built with CUDA)."""
    key = (op, device_type)
    if key not in _kernels:
        _kernels[key] = available() and torch._C._dispatch_has_kernel_for_dispatch_key(
            f"pvtv2_fast_C::{op}", {"cpu": "CPU", "cuda": "CUDA"}[device_type]
        )
    return _kernels[key]


def cpu_isa() -> str:
    """The instruction set the CPU kernels run with here: "avx512", "avx2" or "default"."""
    return torch.ops.pvtv2_fast_C.cpu_isa() if available() else "unavailable"


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    """Whether this process can use the CPU's AMX tiles (Intel Sapphire Rapids and later): the CPU has them and Linux
    granted their state (torch asks as oneDNN does before its first AMX kernel). Some dispatch rules depend on it:
    with AMX, PyTorch's bf16 kernels are several times faster than the AVX-512 ones this library's kernels use."""
    init = getattr(torch._C._cpu, "_init_amx", None)
    return bool(init()) if init is not None else False
