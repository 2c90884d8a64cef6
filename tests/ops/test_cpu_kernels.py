"""What only the C++ CPU kernels have: one build per instruction set chosen at run time (every path tested on one
machine), and the band streaming of ``conv_ffn`` across band sizes and thread counts. Their parity with the
reference is in the per-op suites (tests/ops/test_<op>.py), parametrised over backends."""

import os
import subprocess
import sys

import pytest

from pvtv2_fast import _ext

pytestmark = pytest.mark.skipif(os.environ.get("PVTV2_FAST_NO_EXT") == "1", reason="extension build turned off")


ISA_ORDER = ("default", "avx2", "avx512")


@pytest.mark.parametrize("cap", ISA_ORDER)
def test_every_isa_path_matches(cap):
    """PVTV2_FAST_CPU_ISA caps the instruction set, so every compiled path runs here (those the CPU has): the
    portable one, AVX2 and AVX-512. Channel counts put work in each path's paired, single-vector and scalar-tail
    loops (8- and 16-lane), label counts in each path's upsample + argmax loops; checked in a subprocess, since the
    ISA is chosen once per process."""
    native = _ext.cpu_isa()
    expected = ISA_ORDER[min(ISA_ORDER.index(native), ISA_ORDER.index(cap))]
    code = (
        f"import torch; from pvtv2_fast import ops, _ext; assert _ext.cpu_isa() == {expected!r}, _ext.cpu_isa()\n"
        "for c in (21, 40, 67):\n"
        "    x = torch.randn(2, 63, c); w = torch.randn(c, 1, 3, 3); b = torch.randn(c)\n"
        "    e = (ops.dwconv_gelu(x, w, b, 7, 9, True, backend='cpu') - "
        "ops.dwconv_gelu_reference(x, w, b, 7, 9, True)).abs().max().item()\n"
        "    p = (ops.linear_sra_pool(x, 7, 9, backend='cpu') - "
        "ops.linear_sra_pool_reference(x, 7, 9, 7)).abs().max().item()\n"
        "    assert e < 1e-5 and p < 1e-6, (c, e, p)\n"
        "from pvtv2_fast.streaming import LinearAxis\n"
        "ax = [LinearAxis.build(i, o) for i, o in ((6, 23), (7, 29))]\n"
        "taps = [t for a in ax for t in a.taps()]\n"
        "for L in (5, 19, 150):  # scalar tail only; one vector + tail; many vectors + tail\n"
        "    x = 3 * torch.randn(2, 6, 7, L)\n"
        "    u = ops.upsample_argmax(x, *taps, torch.int64, backend='cpu')\n"
        "    d = (u != ops.upsample_argmax_reference(x, *taps, torch.int64)).sum().item()\n"
        "    assert d <= 1, (L, d)  # a near-tie may round the other way; 1334 labels per L\n"
        "    a = ops.upsample_accumulate([x, -x], [taps, taps], x[0, 0, 0], True, backend='cpu')\n"
        "    e = (a - ops.upsample_accumulate_reference([x, -x], *[[t, t] for t in taps], x[0, 0, 0], True))"
        ".abs().max().item()\n"
        "    assert e < 1e-5, (L, e)\n"
        "print('ok')"
    )
    env = dict(os.environ, PVTV2_FAST_CPU_ISA=cap)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_unknown_isa_name_is_an_error():
    code = "from pvtv2_fast import _ext; _ext.cpu_isa()"
    env = dict(os.environ, PVTV2_FAST_CPU_ISA="sse9")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "PVTV2_FAST_CPU_ISA must be one of default, avx2, avx512" in out.stderr


def test_conv_ffn_band_sizes_and_thread_counts():
    """One-row bands (a 3-row ring that wraps every band), odd band sizes and one band per image, on 1 and 3
    threads: every way a thread's bands can carry fc1 rows over (PVTV2_FAST_FFN_BAND_KB is read once, so each
    setting runs in its own process)."""
    code = (
        "import sys, torch; from pvtv2_fast import ops; torch.set_num_threads(int(sys.argv[1])); "
        "g = torch.Generator().manual_seed(0); r = lambda *s: torch.randn(*s, generator=g) * 0.3; "
        "x = r(3, 37 * 11, 24); a = (r(72, 24), r(72), r(72, 1, 3, 3), r(72), r(20, 72), r(20)); "
        "y = ops.conv_ffn(x, *a, 37, 11, True, backend='cpu'); e = ops.conv_ffn_reference(x, *a, 37, 11, True); "
        "d = (y - e).abs().max().item(); assert d < 1e-5, d; print('ok')"
    )
    for kb in ("1", "7", "1000000"):
        for threads in ("1", "3"):
            env = dict(os.environ, PVTV2_FAST_FFN_BAND_KB=kb)
            out = subprocess.run([sys.executable, "-c", code, threads], capture_output=True, text=True, env=env)
            assert out.returncode == 0 and "ok" in out.stdout, (kb, threads, out.stderr[-2000:])
