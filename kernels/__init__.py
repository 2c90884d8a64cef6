"""Triton kernels of pvtv2_fast, installed as ``pvtv2_fast.kernels``.

They know nothing of models: each takes tensors (and their strides) and writes an output. ``pvtv2_fast.ops``
wraps them as functional ops with backend dispatch; model modules call the ops, never these kernels.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` runs, i.e. when a kernel module is imported: ``INTERPRETED``
records what this process got. Interpreted kernels run on CPU tensors (how CI checks parity); compiled ones need
CUDA tensors.
"""

import os

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
