"""Triton kernels of pvtv2_fast, installed as ``pvtv2_fast.kernels``.

They know nothing of models: each takes tensors (and their strides) and writes an output. ``pvtv2_fast.ops``
wraps them as functional ops with backend dispatch; model modules call the ops, never these kernels.
"""
