"""What only the C++ CPU kernels have: one build per instruction set chosen at run time (every path tested on one
machine), and the band streaming of ``conv_ffn`` across band sizes and thread counts. Their parity with the
reference is in the per-op suites (tests/ops/test_<op>.py), parametrised over backends."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from pvtv2_fast import _ext

pytestmark = pytest.mark.skipif(os.environ.get("PVTV2_FAST_NO_EXT") == "1", reason="extension build turned off")


ISA_ORDER = ("default", "avx2", "avx512")


def run_capped(cap: str, code: str, **env: str) -> None:
    """Run ``code`` in a fresh interpreter with the CPU kernels capped to ISA ``cap`` (chosen once per process), and
    expect it to print "ok"."""
    env = dict(os.environ, PVTV2_FAST_CPU_ISA=cap, **env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("cap", ISA_ORDER)
def test_every_isa_path_matches(cap):
    """PVTV2_FAST_CPU_ISA caps the instruction set, so every compiled path runs here (those the CPU has): the
    portable one, AVX2 and AVX-512. Channel counts put work in each path's paired, single-vector and scalar-tail
    loops (8- and 16-lane; LayerNorm's reductions too), attention's full and partial key blocks and channel tiles,
    label counts in each path's upsample + argmax loops, and a softmax whose smallest probabilities underflow;
    checked in a subprocess, since the ISA is chosen once per process."""
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
        "    n = (ops.layer_norm(3 * x + 1, w[:, 0, 0, 0], b, 1e-6, backend='cpu') - "
        "ops.layer_norm_reference(3 * x + 1, w[:, 0, 0, 0], b, 1e-6)).abs().max().item()\n"
        "    assert e < 1e-5 and p < 1e-6 and n < 1e-5, (c, e, p, n)\n"
        "# LayerNorm rows of 2, 4 and 8 whole vectors (8 and 16 lanes) take the register-held grouped paths\n"
        "for c in (16, 32, 64, 128):\n"
        "    for n in (1, 3, 7, 13):\n"
        "        x, w, b = 3 * torch.randn(1, n, c) + 1, torch.randn(c), torch.randn(c)\n"
        "        d = (ops.layer_norm(x, w, b, 1e-6, backend='cpu') - ops.layer_norm_reference(x, w, b, 1e-6)).abs()\n"
        "        assert d.max().item() < 1e-5, (c, n, d.max().item())\n"
        "# head dims 32, 48, 8; odd keys; queries x40: scores thousands apart, probabilities far below 2^-125 (0)\n"
        "for n, m, c, h, s in ((61, 50, 64, 2, 1), (25, 77, 96, 2, 1), (50, 130, 40, 5, 1), (33, 49, 64, 2, 40)):\n"
        "    q, kv = s * torch.randn(2, n, c), torch.randn(2, m, 2 * c)\n"
        "    a = (ops.sra_attention(q, kv[..., :c], kv[..., c:], h, backend='cpu') - ops.sra_attention_reference("
        "q, kv[..., :c], kv[..., c:], h, (c // h) ** -0.5)).abs().max().item()\n"
        "    assert a < 1e-5 * s, (n, m, c, a)  # s-fold scores round s-fold coarser\n"
        "# sr_conv: channel blocks with tails (37, 70 out), pixel counts off each path's register tile, s = 1..4\n"
        "for ci, co, hh, ww, s in ((5, 37, 9, 10, 3), (16, 70, 13, 17, 4), (7, 33, 6, 5, 1), (40, 64, 8, 8, 2)):\n"
        "    x, w, b = torch.randn(2, hh * ww, ci), torch.randn(co, ci, s, s) / (s * s * ci) ** 0.5, torch.randn(co)\n"
        "    r = (ops.sr_conv(x, w, b, hh, ww, backend='cpu') - ops.sr_conv_reference(x, w, b, hh, ww)).abs().max()\n"
        "    assert r.item() < 1e-5, (ci, co, s, r.item())\n"
        "# sra_layer (packed GEMMs: full and half tiles, scalar tails; sr_conv; attention; LayerNorm), sr 1 and 2\n"
        "for c, h, s in ((96, 3, 2), (70, 2, 1), (32, 1, 2)):\n"
        "    x, r = torch.randn(2, 63, c), torch.randn(2, 63, c)\n"
        "    ws = [torch.randn(n, c) / c ** 0.5 for n in (c, 2 * c, c)]\n"
        "    bs = [torch.randn(n) for n in (c, 2 * c, c)]\n"
        "    kw = dict(sr_weight=torch.randn(c, c, 2, 2) / (4 * c) ** 0.5, sr_bias=torch.randn(c), "
        "norm_weight=torch.rand(c) + 0.5, norm_bias=torch.randn(c)) if s > 1 else {}\n"
        "    args = (x, ws[0], bs[0], ws[1], bs[1], ws[2], bs[2], 7, 9, h)\n"
        "    e = (ops.sra_layer(*args, residual=r, backend='cpu', **kw) - ops.sra_layer(*args, residual=r, "
        "backend='torch', **kw)).abs().max().item()\n"
        "    assert e < 2e-5, (c, s, e)\n"
        "# pvt_block: LayerNorms, the layer, conv_ffn, residuals (C = 40: a 32-wide half tile + an 8-wide tail)\n"
        "x = torch.randn(2, 63, 40)\n"
        "g = lambda *s: torch.randn(*s) / s[-1] ** 0.5\n"
        "att = [g(40, 40), g(40), g(80, 40), g(80), g(40, 40), g(40), g(40, 40, 2, 2), g(40), g(40) + 1, g(40)]\n"
        "ffn = [g(72, 40), g(72), g(72, 1, 3, 3), g(72), g(40, 72), g(40)]\n"
        "n = (g(40) + 1, g(40))\n"
        "e = (ops.pvt_block(x, 7, 9, 5, n, att, n, ffn, backend='cpu') - ops.pvt_block(x, 7, 9, 5, n, att, n, ffn, "
        "backend='torch')).abs().max().item()\n"
        "assert e < 2e-5, e\n"
        "# conv_ffn's bands on the packed-weight GEMM (fc2 out 40 = 32 + 8: half tile and scalar tail)\n"
        "import os; os.environ['PVTV2_FAST_FFN_WHOLE_KB'] = '0'\n"
        "x, w1, w2 = torch.randn(2, 63, 24), torch.randn(72, 24) / 5, torch.randn(40, 72) / 8\n"
        "f = (torch.randn(72), torch.randn(72, 1, 3, 3), torch.randn(72))\n"
        "p = dict(fc1_packed=ops.pack_weight(w1), fc2_packed=ops.pack_weight(w2))\n"
        "e = (ops.conv_ffn(x, w1, f[0], f[1], f[2], w2, None, 7, 9, backend='cpu', **p) - "
        "ops.conv_ffn_reference(x, w1, f[0], f[1], f[2], w2, None, 7, 9, False)).abs().max().item()\n"
        "assert e < 1e-5, e\n"
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
    run_capped(cap, code)


@pytest.mark.parametrize("cap", ISA_ORDER)
def test_every_isa_path_reads_and_writes_bf16(cap):
    """bf16 tensors are read and written by each ISA path itself (widening loads, round-to-nearest-even stores built
    from AVX2 / AVX-512F integer instructions, no AVX512-BF16), so every path is checked here whatever the CPU has.
    A mean of two bf16 values is exact in fp32, so the pool's bf16 result must equal PyTorch's rounding of it
    exactly: random pairs land on ties often, plus overflow to inf, inf - inf = NaN and signed infinities.
    dwconv+GELU and conv_ffn in bf16 against the fp32 reference within the bf16 tolerance of tests/op_cases.py (8
    significant bits: 2^-8 relative per rounding). Below AVX-512, MKL and oneDNN are capped to AVX2 as well, so the
    bf16 GEMMs run MKL's AVX2 path, as on a CPU without AVX512-BF16 / AMX."""
    code = textwrap.dedent(
        """
        import torch
        from pvtv2_fast import ops
        g = torch.Generator().manual_seed(0)
        r = lambda *s, k=1.0: (torch.randn(*s, generator=g) * k).bfloat16()
        tol = dict(atol=1e-2, rtol=1.6e-2)
        for c in (21, 40, 67):
            x = r(1, 2, c, k=3.0)
            inf = float("inf")  # overflow to inf, inf - inf = NaN, inf, -inf
            x[0, :, :4] = torch.tensor([[3e38, inf, inf, -inf], [3e38, -inf, 1, -2]])
            got = ops.linear_sra_pool(x, 2, 1, 1, backend="cpu")[:, 0]
            want = ((x[:, 0].float() + x[:, 1].float()) / 2).bfloat16()
            torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)
            x, w, b = r(2, 63, c), r(c, 1, 3, 3, k=0.3), r(c)
            e = ops.dwconv_gelu(x, w, b, 7, 9, True, backend="cpu")
            ref = ops.dwconv_gelu_reference(x.float(), w.float(), b.float(), 7, 9, True)
            torch.testing.assert_close(e.float(), ref, **tol)
            a = [r(*s, k=0.2) for s in ((72, c), (72,), (72, 1, 3, 3), (72,), (c, 72), (c,))]
            f = ops.conv_ffn(x, *a, 7, 9, False, backend="cpu")
            ref = ops.conv_ffn_reference(x.float(), *(t.float() for t in a), 7, 9, False)
            torch.testing.assert_close(f.float(), ref, **tol)
        print("ok")
        """
    )
    libraries_capped = {} if cap == "avx512" else dict(MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    run_capped(cap, code, **libraries_capped)


@pytest.mark.parametrize("cap", ISA_ORDER)
def test_kernels_make_no_subnormals_on_ordinary_data(cap):
    """Each ISA path, on one thread, leaves the x86 "denormal operand" and "underflow" flags clear on ordinary
    inputs: a subnormal costs a microcode assist per instruction (~100+ cycles), and the attention's exponential
    once underflowed into them for every masked key of a partial block (49 keys: 1.3x slower) and every row group's
    first rescale. Attention over key counts with partial blocks, one key and several chunks; the other kernels too
    (conv_ffn with its GEMMs)."""
    code = textwrap.dedent(
        """
        import torch; torch.set_num_threads(1)
        from pvtv2_fast import ops
        flags = torch.ops.pvtv2_fast_C.fp_exception_flags
        if flags(True) < 0:  # no MXCSR on this CPU
            print("ok"); raise SystemExit
        def check(what, run):
            flags(True); run(); f = flags(True)
            assert f & 0x12 == 0, (what, hex(f))  # 0x02 denormal operand, 0x10 underflow
        for n, m, c, h in ((61, 49, 64, 2), (50, 130, 40, 5), (100, 256, 32, 1), (40, 1, 32, 1), (33, 7, 96, 3)):
            q, kv = torch.randn(1, n, c), torch.randn(1, m, 2 * c)
            check(("sra_attention", n, m, c), lambda: ops.sra_attention(q, kv[..., :c], kv[..., c:], h, backend="cpu"))
        x, w, b = torch.randn(2, 63, 40), torch.randn(40, 1, 3, 3), torch.randn(40)
        check("dwconv_gelu", lambda: ops.dwconv_gelu(x, w, b, 7, 9, True, backend="cpu"))
        check("layer_norm", lambda: ops.layer_norm(x, w[:, 0, 0, 0], b, 1e-6, backend="cpu"))
        check("linear_sra_pool", lambda: ops.linear_sra_pool(x, 7, 9, backend="cpu"))
        check("sr_conv", lambda: ops.sr_conv(x, 0.1 * torch.randn(37, 40, 2, 2), b[:37], 7, 9, backend="cpu"))
        a = [0.2 * torch.randn(*s) for s in ((72, 40), (72,), (72, 1, 3, 3), (72,), (40, 72), (40,))]
        check("conv_ffn", lambda: ops.conv_ffn(x, *a, 7, 9, False, backend="cpu"))
        print("ok")
        """
    )
    run_capped(cap, code)


# Functions whose machine code may use AVX registers: the ISA builds' own namespaces and entry points (chosen at run
# time, after the CPU check), the bf16 kernels (AVX512-BF16, likewise), and what is local to one translation unit.
ISA_OWN = re.compile(r"::avx2::|::avx512::|_avx2\(|_avx512\(|_bf16|\(anonymous namespace\)|\{lambda")


def test_isa_code_stays_in_the_isa_functions():
    """A shared inline function (libstdc++, ATen, our headers) compiled after an ISA file's ``#pragma GCC target`` can
    be the copy the linker keeps for every caller, and then generic code runs AVX-512 on CPUs without it (SIGILL).
    The disassembly shows which functions touch ymm / zmm / mask registers: none outside the ISA functions."""
    import shutil

    from pvtv2_fast import _C

    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) not found")
    text = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", _C.__file__], capture_output=True, text=True, check=True
    ).stdout
    users, current = set(), None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            current = head.group(1)
        elif current and re.search(r"%[yz]mm|%k[1-7]", line):
            users.add(current)
    assert any("::avx512::" in name or "_avx2(" in name for name in users), "no AVX code found: the parse is off"
    assert not [name for name in users if not ISA_OWN.search(name)]


def test_unknown_isa_name_is_an_error():
    code = "from pvtv2_fast import _ext; _ext.cpu_isa()"
    env = dict(os.environ, PVTV2_FAST_CPU_ISA="sse9")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "PVTV2_FAST_CPU_ISA must be one of default, avx2, avx512" in out.stderr


def test_conv_ffn_band_sizes_and_thread_counts():
    """One-row bands (a 3-row ring that wraps every band), odd band sizes and one band per image, on 1 and 3
    threads: every way a thread's bands can carry fc1 rows over (PVTV2_FAST_FFN_BAND_KB is read once, so each
    setting runs in its own process); fp32, and the bf16 path (its own buffers: bf16 band, fp32 fc2 band) within
    the bf16 tolerance of tests/op_cases.py."""
    code = textwrap.dedent(
        """
        import sys, torch
        from pvtv2_fast import ops
        torch.set_num_threads(int(sys.argv[1]))
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g) * 0.3
        x = r(3, 37 * 11, 24)
        a = (r(72, 24), r(72), r(72, 1, 3, 3), r(72), r(20, 72), r(20))
        y = ops.conv_ffn(x, *a, 37, 11, True, backend="cpu")
        e = ops.conv_ffn_reference(x, *a, 37, 11, True)
        d = (y - e).abs().max().item()
        assert d < 1e-5, d
        xb, ab = x.bfloat16(), [t.bfloat16() for t in a]
        yb = ops.conv_ffn(xb, *ab, 37, 11, True, backend="cpu")
        eb = ops.conv_ffn_reference(xb.float(), *(t.float() for t in ab), 37, 11, True)
        torch.testing.assert_close(yb.float(), eb, atol=1e-2, rtol=1.6e-2)
        print("ok")
        """
    )
    for kb in ("1", "7", "1000000"):
        for threads in ("1", "3"):
            env = dict(os.environ, PVTV2_FAST_FFN_BAND_KB=kb)
            out = subprocess.run([sys.executable, "-c", code, threads], capture_output=True, text=True, env=env)
            assert out.returncode == 0 and "ok" in out.stdout, (kb, threads, out.stderr[-2000:])
