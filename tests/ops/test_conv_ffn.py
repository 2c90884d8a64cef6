"""``ops.conv_ffn``: the whole convolutional FFN as one op, on every fused backend this machine has (the C++ CPU
kernel streams bands of rows through the cache, or runs whole-map GEMMs on small hidden states; Triton / CUDA
compose fc1 → fused dwconv+GELU → fc2), against the PyTorch reference; the reference's own row banding
(memory-lean mode)."""

import pytest
import torch
from op_cases import DTYPE_IDS, DTYPES, check_compile_and_export, close, fused_backends, randn, require, stage_cases

from pvtv2_fast import ops
from pvtv2_fast.modules import ConvFeedForward

CASES = stage_cases()
BACKENDS = fused_backends("conv_ffn")


def _with_schedules(backends):
    """The C++ CPU kernel has two schedules (csrc/cpu/conv_ffn.cpp): bands of rows streamed through the cache, and
    whole-map GEMMs for small hidden states. It picks by size; PVTV2_FAST_FFN_WHOLE_KB (read per call) forces either,
    so every CPU case runs both: ``(backend, device, cap in KB or None)``."""
    out = []
    for p in backends:
        if p.values[0] == "cpu":
            out += [pytest.param("cpu", "cpu", "0", id="cpu-bands")]
            out += [pytest.param("cpu", "cpu", "1048576", id="cpu-whole")]
        else:
            out.append(pytest.param(*p.values, None, id=p.id))
    return out


SCHEDULED = _with_schedules(BACKENDS)


@pytest.fixture
def schedule(monkeypatch):
    def use(cap_kb):
        if cap_kb is not None:
            monkeypatch.setenv("PVTV2_FAST_FFN_WHOLE_KB", cap_kb)

    return use


def _weights(c_in, hidden, c_out, seed=0, bias=True, dtype=torch.float32, device="cpu"):
    """Weights scaled like a trained layer's (outputs of order one), so tolerances are relative to O(1) values:
    the tuple ``(fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b)``."""

    def r(*shape, k, scale):
        return randn(*shape, seed=seed + k, scale=scale, dtype=dtype, device=device)

    return (
        r(hidden, c_in, k=0, scale=c_in**-0.5),
        r(hidden, k=1, scale=0.5) if bias else None,
        r(hidden, 1, 3, 3, k=2, scale=0.3),
        r(hidden, k=3, scale=0.5) if bias else None,
        r(c_out, hidden, k=4, scale=hidden**-0.5),
        r(c_out, k=5, scale=0.5) if bias else None,
    )


# bf16 (tests/op_cases.py: 1e-2 abs + 1.6e-2 rel, two ulps of bf16's 8 significant bits): the C++ CPU kernel reads
# bf16, sums its GEMMs exactly in fp32 (MKL's bf16 GEMM), keeps fc1's output in fp32, and rounds twice: the GELU
# output before fc2 (2^-9 relative per term, averaging out over the hidden sum) and the result (2^-9). Over the
# preset stages it stays within 1.6e-2 abs of the fp32 reference on outputs up to 4.3, less than PyTorch's own bf16
# composition, which also rounds fc1's output and the conv's.
def _check(backend, device, x, weights, h, w, relu, dtype=torch.float32, what="conv_ffn"):
    x = x.to(device)
    weights = tuple(None if t is None else t.to(device) for t in weights)
    require("conv_ffn", backend, (x, *weights, h, w, relu, None, None, None))
    ref = ops.conv_ffn_reference(x.float(), *(None if t is None else t.float() for t in weights), h, w, relu)
    close(ops.conv_ffn(x, *weights, h, w, relu, backend=backend), ref, dtype, what)
    if backend == "cpu":  # and with fc1 / fc2 packed, as fast mode's module passes them (the packed-weight GEMM)
        packed = dict(fc1_packed=ops.pack_weight(weights[0]), fc2_packed=ops.pack_weight(weights[4]))
        close(ops.conv_ffn(x, *weights, h, w, relu, backend=backend, **packed), ref, dtype, what + " packed")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend,device,cap", SCHEDULED)
def test_preset_stages(backend, device, cap, schedule, case, dtype):
    schedule(cap)
    _, c, _, h, w, _, ffn, linear = case
    _check(
        backend,
        device,
        randn(2, h * w, c, seed=ffn, dtype=dtype),
        _weights(c, ffn, c, seed=c, dtype=dtype),
        h,
        w,
        linear,
        dtype,
        f"{case[0]} {dtype}",
    )


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(
    "b,h,w,c_in,hidden,c_out",
    [
        (1, 1, 1, 8, 16, 8),
        (3, 1, 23, 5, 13, 7),
        (2, 19, 1, 17, 40, 3),
        (1, 2, 2, 3, 9, 3),
        (2, 7, 9, 40, 100, 40),
        (1, 64, 3, 16, 24, 16),
    ],
)
@pytest.mark.parametrize("backend,device,cap", SCHEDULED)
def test_odd_shapes(backend, device, cap, schedule, b, h, w, c_in, hidden, c_out, bias, relu):
    """1-pixel and 1-row maps (tap clipping, one band), channel counts off the vector widths (scalar tails), c_out
    different from c_in, batch > 1 (bands of several images), tall maps (many bands per thread)."""
    schedule(cap)
    _check(
        backend,
        device,
        randn(b, h * w, c_in, seed=h * w + c_in),
        _weights(c_in, hidden, c_out, seed=hidden, bias=bias),
        h,
        w,
        relu,
    )


@pytest.mark.parametrize("backend,device,cap", SCHEDULED)
def test_non_contiguous_inputs(backend, device, cap, schedule):
    schedule(cap)
    x = randn(2, 2 * 63, 24, seed=3)[:, ::2]
    fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b = _weights(24, 48, 24, seed=4)
    fc1_w = fc1_w.t().contiguous().t()  # (48, 24) with transposed strides
    dw_w = randn(48, 1, 3, 6, seed=5, scale=0.3)[..., ::2]
    _check(backend, device, x, (fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b), 7, 9, False)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradients_are_the_references(backend, device):
    x = randn(2, 35, 16, seed=5, device=device).requires_grad_()
    w = [t.requires_grad_() for t in _weights(16, 32, 16, seed=6, device=device)]
    grad = randn(2, 35, 16, seed=7, device=device)
    require("conv_ffn", backend, (x, *w, 5, 7, True, None))
    got = torch.autograd.grad(ops.conv_ffn(x, *w, 5, 7, True, backend=backend), [x, *w], grad)
    expected = torch.autograd.grad(ops.conv_ffn_reference(x, *w, 5, 7, True), [x, *w], grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_and_export_keep_the_fused_node(backend, device):
    w = _weights(16, 32, 16, seed=9, device=device)
    x = randn(1, 35, 16, seed=10, device=device)
    require("conv_ffn", backend, (x, *w, 5, 7, False, None))

    fused = {
        "cpu": "pvtv2_fast_C.conv_ffn",
        "triton": "pvtv2_fast.dwconv_gelu_triton",
        "cuda": "pvtv2_fast_C.dwconv_gelu",
    }[backend]
    check_compile_and_export(lambda t: ops.conv_ffn(t, *w, 5, 7, backend=backend), x, fused)


@pytest.mark.parametrize("budget", [1, 3 * 7 * 32 * 4, 10**9], ids=["one-row-bands", "odd-bands", "one-band"])
@pytest.mark.parametrize("backend", ["torch"] + [p.values[0] for p in BACKENDS if p.values[0] != "cpu"])
def test_banded_compositions_are_exact(backend, budget):
    """``max_hidden_bytes`` (memory-lean mode) runs the composed backends in bands of rows with a one-row halo:
    the result does not change (the C++ kernel schedules by itself and ignores the budget)."""
    x, w = randn(2, 11 * 7, 16, seed=11), _weights(16, 32, 16, seed=12, device=randn(1).device)
    require("conv_ffn", backend, (x, *w, 11, 7, True, budget))
    whole = ops.conv_ffn_reference(x, *w, 11, 7, True)
    close(ops.conv_ffn(x, *w, 11, 7, True, backend=backend, max_hidden_bytes=budget), whole, torch.float32)


def test_module_keeps_dropout_unfused_when_training():
    """Active dropout needs the widened state: the FFN then runs its own layers (and still trains)."""
    ffn = ConvFeedForward(16, 32, dropout=0.5)
    ffn.fast = True
    x = randn(2, 35, 16, seed=13, device="cpu")
    torch.manual_seed(0)
    a = ffn(x, 5, 7)
    ffn.fast = False
    torch.manual_seed(0)
    b = ffn(x, 5, 7)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ffn.eval()
    ffn.fast = True
    conv = ffn.dwconv.dwconv
    torch.testing.assert_close(
        ffn(x, 5, 7),
        ops.conv_ffn_reference(
            x,
            ffn.dense1.weight,
            ffn.dense1.bias,
            conv.weight,
            conv.bias,
            ffn.dense2.weight,
            ffn.dense2.bias,
            5,
            7,
            False,
        ),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("tokens,onednn", [(49, False), (196, False), (256, True)])
def test_module_fp32_schedule_by_tokens(tokens, onednn):
    """fp32 CPU inference of the C = 512 stage (8 MB of weights): oneDNN's linears from 197 tokens up (512² and up),
    conv_ffn below, where its whole-map GEMMs run on the packed weights (224²'s 7² map); same result either way."""
    ffn = ConvFeedForward(512, 2048).eval()
    x = randn(1, tokens, 512, seed=tokens, device="cpu")
    side = {49: (7, 7), 196: (14, 14), 256: (16, 16)}[tokens]
    with torch.no_grad():
        ref = ffn(x, *side)
        ffn.fast = True
        assert ffn._onednn_schedule(x) == onednn
        torch.testing.assert_close(ffn(x, *side), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", [32, 64, 128])  # 1, 4 and 16 MB of bf16 widened state (hidden 512)
def test_module_bf16_schedule_by_cpu(side):
    """bf16 CPU inference takes oneDNN's linears up to 8 MB of widened state where the CPU has AMX (MKL's AMX GEMM in
    conv_ffn wins above) and up to 64 MB without (MKL's bf16 GEMM there ran at half oneDNN's rate); either way the
    output is within bf16's tolerance of the fp32 module's on the same (bf16-valued) weights and input."""
    from pvtv2_fast._ext import cpu_has_amx
    from pvtv2_fast.modules.fast_path import onednn_takes

    if not onednn_takes(torch.bfloat16):
        pytest.skip("oneDNN does not run bf16 natively on this CPU")
    ffn = ConvFeedForward(64, 512).eval().to(torch.bfloat16)
    x = randn(1, side * side, 64, seed=side, device="cpu").to(torch.bfloat16)
    hidden_bytes = side * side * 512 * 2
    with torch.no_grad():
        ref = ffn.float()(x.float(), side, side)
        ffn.to(torch.bfloat16).fast = True
        assert ffn._onednn_schedule(x) == (hidden_bytes <= (8 << 20 if cpu_has_amx() else 64 << 20))
        close(ffn(x, side, side), ref, torch.bfloat16, f"{side}²")
