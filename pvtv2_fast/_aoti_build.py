"""Build one AOTInductor package for :mod:`pvtv2_fast.inference`, in a process of its own or in the caller's.

``python -m pvtv2_fast._aoti_build REQUEST RESULT`` reads a :class:`Request` (``torch.save`` of the model, the
call's input leaves and spec, example tensors, the thread count and the caller's inductor config), exports and
compiles the model at that signature into the request's package path, and writes how to rebuild the model's output.
The caller then only loads the package: tracing and compiling leave state in a process that it never gives back
(torch.export's and inductor's modules, a traced graph that torch.export keeps until its next trace, freed pages
the allocator keeps), and a process of its own returns all of it: 259 MB (b0) and 358 MB (b2) less peak resident
memory at 224² (a fresh process, 3 calls), for ~3 s more warm-up.

Exit codes: 0 built; :data:`EXIT_CANNOT_LOAD` the request did not load here (the model's class is not importable by
this process: the caller compiles in its own process instead); anything else a failed build (traceback on stderr).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.utils._pytree as pytree
from torch import nn

EXIT_CANNOT_LOAD = 3


class _TensorSlot:
    """The type of :data:`TENSOR`; pickles by name, so a request's or a result's marks stay ``is TENSOR``."""

    def __reduce__(self) -> str:
        return "TENSOR"

    def __repr__(self) -> str:
        return "TENSOR"


TENSOR = _TensorSlot()  # marks a tensor's place among an input's or an output's pytree leaves


class _Signature(nn.Module):
    """The model at one input signature, as ``torch.export`` takes it: tensors in, a flat tuple of tensors out.

    ``leaves`` / ``in_spec``: the pytree of the call's ``(args, kwargs)``, the tensors' places marked :data:`TENSOR`,
    the other values baked in. The output's pytree (a ``ModelOutput``, tuples, ``None`` fields) is recorded through
    ``record`` while export traces (export may trace a copy of this module, so not on it).
    """

    def __init__(self, model: nn.Module, leaves: List[Any], in_spec: Any, record: Callable[[List[Any], Any], None]):
        super().__init__()
        self.model = model
        self.leaves, self.in_spec, self.record = leaves, in_spec, record

    def forward(self, *tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        given = iter(tensors)
        args, kwargs = pytree.tree_unflatten([next(given) if v is TENSOR else v for v in self.leaves], self.in_spec)
        out_leaves, out_spec = pytree.tree_flatten(self.model(*args, **kwargs))
        self.record([TENSOR if isinstance(v, torch.Tensor) else v for v in out_leaves], out_spec)
        return tuple(v for v in out_leaves if isinstance(v, torch.Tensor))


@dataclasses.dataclass
class Request:
    """One build: ``model`` at the call ``(leaves, in_spec)`` (its tensors marked :data:`TENSOR`, ``tensors`` their
    values), compiled into the package file ``package``, kept in ``cache_dir`` if given, with the caller's thread
    count and inductor settings (``save_config_portable``, or None)."""

    model: nn.Module
    leaves: List[Any]
    in_spec: Any
    tensors: List[torch.Tensor]
    package: str
    cache_dir: Optional[str] = None
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)
    inductor_config: Optional[Dict[str, Any]] = None


def build(request: Request) -> Dict:
    """Export the request's model at its call and compile it with freezing into ``request.package``. Returns the
    output's marked leaves and spec (``out_leaves``, ``out_spec``), whether the package came from the cache folder
    (``cached``), and why it could not be kept there (``cache_error``, or None).

    ``request.cache_dir``: packages kept by :func:`program_key` of the exported program, so that a later process (a
    server restarting) loads instead of compiling: the export still runs (~1/4 of a compile), the compile does not."""
    import torch._inductor
    import torch._inductor.config as inductor_config

    recorded: Dict[str, Any] = {}

    def record(out_leaves: List[Any], out_spec: Any) -> None:
        recorded.update(out_leaves=out_leaves, out_spec=out_spec)

    with torch.no_grad():
        signature = _Signature(request.model, request.leaves, request.in_spec, record)
        program = torch.export.export(signature, tuple(request.tensors))
        with inductor_config.patch(freezing=True):
            cached = None
            if request.cache_dir is not None:
                cached = os.path.join(request.cache_dir, program_key(program, request.tensors) + ".pt2")
                if os.path.exists(cached):
                    shutil.copyfile(cached, request.package)
                    return dict(recorded, cached=True, cache_error=None)
            torch._inductor.aoti_compile_and_package(program, package_path=request.package)
    error = _keep(request.package, cached) if cached is not None else None
    return dict(recorded, cached=False, cache_error=error)


def _keep(package: str, cached: str) -> Optional[str]:
    """Copy ``package`` to the cache file ``cached``, atomically (another process sees the whole package or none).
    The cache is a convenience: a folder that cannot take it (read-only, full) gives the reason, for the caller to
    warn about, not an error."""
    temporary = None
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(cached), suffix=".partial")
        os.close(fd)
        shutil.copyfile(package, temporary)
        os.replace(temporary, cached)
        return None
    except OSError as error:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
        return f"could not keep the compiled package in {cached!r}: {error}"


def program_key(program: Any, tensors: List[torch.Tensor]) -> str:
    """A digest of everything the compiled package depends on: the exported graph's code and signature, the input
    tensors' shapes, strides and dtypes, every weight's and constant's bytes, and the toolchain around them (torch,
    Python and pvtv2_fast versions, the C++ extension's file, the CPU and its instruction sets, the thread count,
    inductor's settings). Equal keys, the same package; anything that could change it changes the key."""
    import torch._inductor.config as inductor_config

    from . import __version__, _ext

    digest = hashlib.sha256()

    def add(value: Any) -> None:
        digest.update(repr(value).encode())
        digest.update(b"\0")

    add(program.graph_module.code)
    add(str(program.graph_signature))
    add(program.call_spec)
    add([(tuple(t.shape), t.stride(), t.dtype) for t in tensors])
    for name, value in sorted({**program.state_dict, **program.constants}.items()):
        if isinstance(value, torch.Tensor):
            add((name, tuple(value.shape), value.stride(), value.dtype))
            digest.update(value.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        else:  # a script object or another constant: its repr
            add((name, value))
    library = _ext.library_path()
    add((torch.__version__, sys.version, __version__, torch.get_num_threads()))
    if library:
        with open(library, "rb") as file:
            add(hashlib.sha256(file.read()).hexdigest())
    add((torch.backends.cpu.get_cpu_capability(), _cpu_flags()))
    add(sorted((k, repr(v)) for k, v in inductor_config.save_config_portable().items()))
    return digest.hexdigest()[:32]


def _cpu_flags() -> str:
    """The CPU's model name and instruction-set flags (Linux's /proc/cpuinfo; the platform's name elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def load_package(package: str) -> Callable[[List[torch.Tensor]], List[torch.Tensor]]:
    """The entry (``boxed_run``) of the AOTInductor package file ``package``: loading unpacks the library and copies
    its weights out, so the file is not needed afterwards. torch._C's loader rather than
    ``torch._inductor.aoti_load_package``: the caller need not import inductor."""
    return torch._C._aoti.AOTIModelPackageLoader(package, "model", False, 1, -1).boxed_run


def main(argv: List[str]) -> int:
    request_path, result_path = argv
    try:
        request = torch.load(request_path, weights_only=False)
    except Exception:  # the model's class (or a value in the call) is not importable here
        traceback.print_exc()
        return EXIT_CANNOT_LOAD
    torch.set_num_threads(request.threads)  # inductor's C++ kernels fix their thread count when they compile
    if request.inductor_config is not None:
        import torch._inductor.config as inductor_config

        inductor_config.load_config(request.inductor_config)
    result = build(request)
    result["process_peak_mb"] = _peak_resident_mb()
    torch.save(result, result_path)
    return 0


def _peak_resident_mb() -> Optional[float]:
    """This process's peak resident set (VmHWM: its own since exec, unlike getrusage's, which a forked child
    inherits from its parent), None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: unpickled marks are the module's TENSOR.
    from pvtv2_fast._aoti_build import main as _main

    sys.exit(_main(sys.argv[1:]))
