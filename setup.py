"""Build of pvtv2_fast: the Python package, the Triton kernels (``kernels/`` → ``pvtv2_fast.kernels``) and,
when C++/CUDA sources exist in ``csrc/``, the extension module ``pvtv2_fast._C``."""

from setuptools import setup

setup(
    name="pvtv2_fast",
    version="0.1.0",
    description="PVTv2 in pure PyTorch, transformers-compatible, with fused Triton and C++/CUDA kernels",
    python_requires=">=3.10",
    packages=["pvtv2_fast", "pvtv2_fast.modules", "pvtv2_fast.ops", "pvtv2_fast.kernels"],
    package_dir={"pvtv2_fast.kernels": "kernels"},
    install_requires=["torch>=2.4", "safetensors>=0.4", "huggingface_hub>=0.24", "numpy", "pillow", "tqdm"],
    extras_require={"triton": ["triton>=3.0"]},
    entry_points={"console_scripts": ["pvtv2-fast=pvtv2_fast.__main__:main"]},
)
