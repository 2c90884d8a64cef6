"""Build of pvtv2_fast: the Python package, the Triton kernels (``kernels/`` → ``pvtv2_fast.kernels``) and the
C++/CUDA extension ``pvtv2_fast._C`` from ``csrc/``.

Extension build (needs torch importable at build time: ``pip install --no-build-isolation -e .``):
* ``PVTV2_FAST_CUDA=auto`` (default): CUDA kernels too when torch is a CUDA build and nvcc is found
  (``CUDA_HOME``, default /usr/local/cuda); ``1`` requires them; ``0`` builds the CPU kernels only.
* ``TORCH_CUDA_ARCH_LIST`` defaults to "8.0;9.0" (A100, H100/H200); no GPU is needed to build.
* ``PVTV2_FAST_NO_EXT=1``: pure Python (the ops then fall back to Triton / the PyTorch reference).
* ``PVTV2_FAST_SANITIZE=address``: build the CPU kernels with AddressSanitizer (``make sanitize``).
"""

import glob
import os
import re
import shutil
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    if os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(nvcc)) if nvcc else None


def extensions():
    if os.environ.get("PVTV2_FAST_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        warnings.warn(  # noqa: B028 - a build-time notice; the caller is setuptools
            "torch is not importable at build time: building pvtv2_fast without its C++ extension "
            "(use pip install --no-build-isolation to build it)"
        )
        return [], {}
    mode = os.environ.get("PVTV2_FAST_CUDA", "auto")
    cuda_home = _cuda_home()
    with_cuda = mode == "1" or (mode == "auto" and torch.version.cuda is not None and cuda_home is not None)
    if mode == "1" and (torch.version.cuda is None or cuda_home is None):
        raise RuntimeError("PVTV2_FAST_CUDA=1 but torch is not a CUDA build or nvcc was not found")
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "cpu")]
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # torch's std::string ABI, explicitly: cpp_extension no longer passes it, so the compiler's default would decide
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    cxx = ["-O3", "-fopenmp", abi]
    if os.environ.get("PVTV2_FAST_SANITIZE") == "address":  # make sanitize: CPU kernels under AddressSanitizer
        cxx = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address", "-fopenmp", abi]
    link = ["-fopenmp"] + (["-fsanitize=address"] if os.environ.get("PVTV2_FAST_SANITIZE") == "address" else [])
    kwargs = dict(name="pvtv2_fast._C", include_dirs=include_dirs, extra_link_args=link)
    if not with_cuda:
        return [cpp_extension.CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)], {
            "build_ext": cpp_extension.BuildExtension
        }
    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension.CUDA_HOME = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    # pip's CUDA wheels (nvidia-*-cu13) carry headers the toolkit may lack (e.g. cccl); add them when present.
    for site in sys.path:
        extra = os.path.join(site, "nvidia", "cu13", "include")
        if os.path.isdir(extra):
            include_dirs.append(extra)
            break
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    nvcc = ["-O3", "--use_fast_math", "-lineinfo", abi]
    return [
        cpp_extension.CUDAExtension(
            sources=sources, extra_compile_args={"cxx": cxx + ["-DWITH_CUDA"], "nvcc": nvcc}, **kwargs
        )
    ], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = extensions()


def _version() -> str:
    """The one version source is pvtv2_fast/__init__.py (read as text: the package cannot be imported here)."""
    with open(os.path.join(ROOT, "pvtv2_fast", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="pvtv2_fast",
    version=_version(),
    description="PVTv2 in pure PyTorch, transformers-compatible, with fused Triton and C++/CUDA kernels",
    python_requires=">=3.10",
    packages=["pvtv2_fast", "pvtv2_fast.modules", "pvtv2_fast.ops", "pvtv2_fast.kernels"],
    package_dir={"pvtv2_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=["torch>=2.4", "safetensors>=0.4", "huggingface_hub>=0.24", "numpy", "pillow", "tqdm"],
    extras_require={"triton": ["triton>=3.0"]},
    entry_points={"console_scripts": ["pvtv2-fast=pvtv2_fast.__main__:main"]},
)
