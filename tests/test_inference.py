"""pvtv2_fast.optimize_for_inference (fast=True compiled with inductor freezing, by AOTInductor or torch.compile) and
the benchmark peers it is measured against: same outputs as the reference, clear errors for misuse."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import assert_max_abs_close, block_cache_delta, randomize_

from pvtv2_fast import PvtV2Config, PvtV2ForImageClassification, PvtV2Model, _ext, inference, optimize_for_inference

# A small encoder with every stage (SR ratios 8/4/2/1) so one compile stays under a minute on 2 cores.
TINY = dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4], mlp_ratios=[2] * 4)


@pytest.mark.slow
@pytest.mark.parametrize("engine", inference.ENGINES)
@pytest.mark.parametrize("linear", [False, True], ids=["sra", "linear-sra"])
def test_inference_mode_matches_reference_on_an_odd_size(linear, engine):
    model = randomize_(PvtV2Model(PvtV2Config(**TINY, linear_attention=linear)).eval())
    x = torch.randn(2, 3, 61, 45, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).last_hidden_state.clone()
    fast = optimize_for_inference(model, engine=engine)
    assert fast.engine == engine
    assert_max_abs_close(fast(x).last_hidden_state, expected, "optimize_for_inference vs reference", atol=1e-5)
    # The AOTInductor engine compiles in a process of its own (the model pickles and its class imports there).
    signatures = fast.compiled_signatures
    assert [s["where"] for s in signatures] == (["subprocess"] if engine == "aoti" else [])
    assert all(s["inputs"] == "2×3×61×45" and s["compile_process_mb"] > 100 for s in signatures), signatures
    with torch.profiler.profile() as prof:
        assert_max_abs_close(fast(x).last_hidden_state, expected, "second call (compiled graph)", atol=1e-5)
    # The compiled graph runs each SRA block as one C++ pvt_block node (fp32 CPU; not the linear variant's).
    blocks = sum(e.count for e in prof.key_averages() if e.key == "pvtv2_fast_C::pvt_block")
    assert blocks == (0 if linear or not _ext.available() else sum(TINY["depths"]))


@pytest.mark.slow
def test_aoti_engine_cache_dir_loads_what_an_earlier_compile_kept(tmp_path):
    """With cache_dir, a second wrapper of the same model (another process, in a server's restart) loads the kept
    package instead of compiling; changed weights give another key, hence a compile, never the stale graph."""
    model = randomize_(PvtV2Model(PvtV2Config(**TINY)).eval())
    x = torch.randn(1, 3, 61, 45, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x).last_hidden_state.clone()
    first = optimize_for_inference(model, cache_dir=tmp_path / "cache")
    assert_max_abs_close(first(x).last_hidden_state, expected, "compiled", atol=1e-5)
    assert [g.cached for g in first._graphs.values()] == [False] and len(list((tmp_path / "cache").iterdir())) == 1
    second = optimize_for_inference(model, cache_dir=tmp_path / "cache")
    assert_max_abs_close(second(x).last_hidden_state, expected, "loaded from the cache", atol=1e-5)
    assert [g.cached for g in second._graphs.values()] == [True]
    with torch.no_grad():
        model.encoder.layers[0].blocks[0].mlp.dense1.weight.mul_(-1)
        changed = model(x).last_hidden_state.clone()
    third = optimize_for_inference(model, cache_dir=tmp_path / "cache")
    assert_max_abs_close(third(x).last_hidden_state, changed, "changed weights", atol=1e-5)
    assert [g.cached for g in third._graphs.values()] == [False] and len(list((tmp_path / "cache").iterdir())) == 2


def test_aoti_cache_key_follows_what_the_package_depends_on():
    """program_key: the same program gives the same key; the thread count (fixed in inductor's C++ kernels), the input
    sizes and the weights' bytes each give another."""
    model = randomize_(PvtV2Model(PvtV2Config(**TINY)).eval())
    x = torch.randn(1, 3, 32, 32)

    def key(tensors):
        _, spec = torch.utils._pytree.tree_flatten(((tensors[0],), {}))
        marked = [inference.TENSOR]
        signature = inference._aoti_build._Signature(model, marked, spec, lambda *_: None)
        with torch.no_grad():
            program = torch.export.export(signature, tuple(tensors))
        return inference._aoti_build.program_key(program, tensors)

    threads = torch.get_num_threads()
    first = key([x])
    assert key([x]) == first
    try:
        torch.set_num_threads(threads + 1)
        assert key([x]) != first
    finally:
        torch.set_num_threads(threads)
    assert key([torch.randn(1, 3, 32, 48)]) != first
    with torch.no_grad():
        model.encoder.layers[3].blocks[0].mlp.dense2.bias.add_(1e-3)
    assert key([x]) != first


def test_aoti_cache_that_cannot_keep_a_package_says_why(tmp_path):
    """A cache folder that cannot take the package (here: a file stands where the folder should be) gives the reason
    (warned by the caller) and leaves no partial file behind; a writable one gets the whole package."""
    package = tmp_path / "graph.pt2"
    package.write_bytes(b"package bytes")
    (tmp_path / "not_a_folder").write_text("")
    reason = inference._aoti_build._keep(str(package), str(tmp_path / "not_a_folder" / "key.pt2"))
    assert reason is not None and "could not keep the compiled package" in reason
    assert inference._aoti_build._keep(str(package), str(tmp_path / "cache" / "key.pt2")) is None
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["key.pt2"]
    assert (tmp_path / "cache" / "key.pt2").read_bytes() == b"package bytes"


@pytest.mark.slow
def test_aoti_engine_leaves_the_compiler_out_of_the_calling_process():
    """With the compile in a process of its own, the caller never imports dynamo or inductor: it only loads the
    package (a fresh process, since this one has imported them for other tests)."""
    script = (
        "import sys, torch\n"
        "from pvtv2_fast import PvtV2Config, PvtV2Model, optimize_for_inference\n"
        f"model = PvtV2Model(PvtV2Config(**{TINY!r})).eval()\n"
        "x = torch.randn(1, 3, 64, 64)\n"
        "with torch.no_grad():\n"
        "    expected = model(x).last_hidden_state\n"
        "got = optimize_for_inference(model)(x).last_hidden_state\n"
        "print('DIFF', (got - expected).abs().max().item())\n"
        "print('LOADED', sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("DIFF", "LOADED")))
    assert float(lines["DIFF"]) <= 1e-5 and lines["LOADED"] == "[]", done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("engine", inference.ENGINES)
def test_inference_mode_reuses_the_cpu_block_cache(engine):
    """The compiled graph runs inside the CPU block cache's scope: once warm, a call maps no fresh pages (256²: the
    stage-1 FFN's widened state, 512 KB, is above the cache's 256 KB floor)."""
    if not _ext.available():
        pytest.skip("the C++ extension is not built")
    fast = optimize_for_inference(randomize_(PvtV2Model(PvtV2Config(**TINY))), engine=engine)
    x = torch.randn(1, 3, 256, 256)
    fast(x)
    fast(x)
    _, delta = block_cache_delta(lambda: fast(x))
    assert delta["fresh"] == 0 and delta["reused"] > 0, delta


@pytest.mark.slow
def test_aoti_engine_keeps_the_call_signature_and_compiles_each_once(monkeypatch):
    """The AOTInductor engine returns what the model returns for the same arguments (tuples, ModelOutputs with
    their None fields), compiles each input signature once, and drops the least recently used past MAX_GRAPHS."""
    model = randomize_(PvtV2ForImageClassification(PvtV2Config(**TINY, num_labels=5)).eval())
    fast = optimize_for_inference(model)
    assert fast.engine == "aoti"
    x = torch.randn(2, 3, 61, 45, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x, output_hidden_states=True)
    as_tuple = fast(x, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert_max_abs_close(as_tuple[0], expected.logits, "return_dict=False", atol=1e-5)
    for _ in range(2):
        got = fast(pixel_values=x, output_hidden_states=True)
        assert type(got) is type(expected) and got.loss is None and got.attentions is None
        assert_max_abs_close(got.logits, expected.logits, "logits", atol=1e-5)
        assert len(got.hidden_states) == len(expected.hidden_states)
        for mine, theirs in zip(got.hidden_states, expected.hidden_states):
            assert_max_abs_close(mine, theirs, "hidden state", atol=1e-5)
    assert len(fast._graphs) == 2  # (x, return_dict=False) and (pixel_values=x, output_hidden_states=True)
    monkeypatch.setattr(inference, "MAX_GRAPHS", 2)
    y = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="least recently used"):
        got = fast(y)
    with torch.no_grad():
        assert_max_abs_close(got.logits, model(y).logits, "a third signature", atol=1e-5)
    assert len(fast._graphs) == 2


def test_aoti_engine_compiles_a_signature_once_across_threads(monkeypatch):
    """Callers on several threads at a new signature wait for one compile (a stand-in for the compile: no
    AOTInductor run here), and each gets the graph's output; a compiled signature runs while another compiles."""
    built = []
    release = threading.Event()

    class SlowGraph:
        def __init__(self, model, leaves, in_spec, tensors, cache_dir):
            built.append(tensors[0].shape)
            if tensors[0].shape[-1] == 48:  # held until the compiled signature has run (or a deadlock's timeout)
                assert release.wait(30)
            else:
                time.sleep(0.3)
            self.seconds, self.cached = 0.3, False

        def __call__(self, tensors):
            return tensors[0] * 2

    monkeypatch.setattr(inference, "_AotiGraph", SlowGraph)
    fast = optimize_for_inference(PvtV2Model(PvtV2Config(**TINY)))
    x = torch.ones(1, 3, 32, 32)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fast(x), range(4)))
    assert built == [x.shape] and all(torch.equal(r, x * 2) for r in results)
    # While a new signature compiles, a compiled one still runs (no lock held across the compile: with one, this
    # call would wait for a compile that waits for it, and time out).
    with ThreadPoolExecutor(2) as pool:
        compiling = pool.submit(fast, torch.ones(1, 3, 48, 48))
        while len(built) < 2:
            time.sleep(0.01)
        try:
            assert torch.equal(pool.submit(fast, x).result(timeout=10), x * 2)
        finally:
            release.set()
        assert compiling.result().shape == (1, 3, 48, 48)
    assert built == [x.shape, (1, 3, 48, 48)]


def _request(model, x, package):
    return inference._aoti_build.Request(model, [x], None, [x], str(package))


def _stand_in_build(built):
    def build(request):
        built.append(type(request.model).__name__)
        return {"out_leaves": [], "out_spec": None, "cached": False, "cache_error": None}

    return build


def test_aoti_compile_falls_back_to_this_process_with_one_warning(monkeypatch, tmp_path):
    """A model that cannot travel to a compile process (it does not pickle: a class local to a function; or the new
    process cannot import it: exit code 3), or a Python that cannot start one (a frozen application), compiles in
    this one, warned once. A stand-in build: no AOTInductor run."""
    built = []
    monkeypatch.setattr(inference._aoti_build, "build", _stand_in_build(built))
    monkeypatch.setattr(inference, "_warned_in_process", False)
    x = torch.zeros(1, 3, 32, 32)

    class Local(PvtV2Model):
        pass

    local = Local(PvtV2Config(**TINY))
    with pytest.warns(UserWarning, match="compiling in this process, since the model does not pickle"):
        assert inference._compile(_request(local, x, tmp_path / "a.pt2"), str(tmp_path))[1] == "in-process"
    cannot_load = [sys.executable, "-c", "import sys; print('ModuleNotFoundError: no module mine'); sys.exit(3)"]
    monkeypatch.setattr(inference, "_build_command", lambda request, result: cannot_load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process
        model = PvtV2Model(PvtV2Config(**TINY))
        assert inference._compile(_request(model, x, tmp_path / "b.pt2"), str(tmp_path))[1] == "in-process"
    assert built == ["Local", "PvtV2Model"]
    monkeypatch.setattr(inference, "_warned_in_process", False)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.warns(UserWarning, match="cannot start another interpreter"):
        assert inference._compile(_request(model, x, tmp_path / "d.pt2"), str(tmp_path))[1] == "in-process"
    monkeypatch.delattr(sys, "frozen")
    monkeypatch.setattr(inference, "_warned_in_process", False)
    with pytest.warns(UserWarning, match="could not load the model: ModuleNotFoundError: no module mine"):
        inference._compile(_request(model, x, tmp_path / "c.pt2"), str(tmp_path))


def test_aoti_compile_process_failure_is_reported(monkeypatch, tmp_path):
    """A compile process that fails raises with its exit code and its output's tail, and nothing is compiled here."""
    built = []
    monkeypatch.setattr(inference._aoti_build, "build", _stand_in_build(built))
    failing = [sys.executable, "-c", "import sys; print('inductor says no'); sys.exit(1)"]
    monkeypatch.setattr(inference, "_build_command", lambda request, result: failing)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match=r"(?s)inputs 1×3×32×32 failed .*exit code 1.*inductor says no"):
        inference._compile(_request(PvtV2Model(PvtV2Config(**TINY)), x, tmp_path / "a.pt2"), str(tmp_path))
    assert built == []


def test_inference_mode_rejects_misuse():
    with pytest.raises(TypeError, match="pvtv2_fast model"):
        optimize_for_inference(torch.nn.Linear(2, 2))
    model = PvtV2ForImageClassification(PvtV2Config(**TINY))
    with pytest.raises(TypeError, match="dynamic must be a bool"):
        optimize_for_inference(model, dynamic="yes")
    with pytest.raises(ValueError, match="backend"):
        optimize_for_inference(model, backend="nope")
    with pytest.raises(ValueError, match="engine must be one of"):
        optimize_for_inference(model, engine="nope")
    with pytest.raises(ValueError, match="fixed sizes; use engine='compile' for dynamic=True"):
        optimize_for_inference(model, engine="aoti", dynamic=True)
    with pytest.raises(ValueError, match="cache_dir keeps AOTInductor packages; it needs engine='aoti'"):
        optimize_for_inference(model, engine="compile", cache_dir="somewhere")
    assert optimize_for_inference(model, dynamic=True).engine == "compile"
    with pytest.raises(RuntimeError, match="CPU tensors, got a tensor on meta"):
        optimize_for_inference(model)(torch.zeros(1, 3, 64, 64, device="meta"))
    with pytest.raises(TypeError, match="hashable, got set"):
        optimize_for_inference(model)(torch.zeros(1, 3, 64, 64), output_hidden_states={True})
    wrapped = optimize_for_inference(model)
    assert not model.training and all(m.fast for m in model.modules() if hasattr(m, "op_backend"))
    model.train()
    with pytest.raises(RuntimeError, match="training mode"):
        wrapped(torch.zeros(1, 3, 64, 64))


def test_report_parity_check_refuses_a_wrong_candidate():
    from bench.harness import Candidate
    from bench.report import check_parity

    ref = torch.randn(1, 4, 2, 2)
    good = [Candidate("a", lambda: ref), Candidate("b", lambda: (ref + 1e-6).numpy())]
    assert check_parity(good, "fp32")["b"] == pytest.approx(1e-6, rel=0.1)
    with pytest.raises(AssertionError, match="c differs from a"):
        check_parity(good + [Candidate("c", lambda: ref + 1e-2)], "fp32")
    with pytest.raises(AssertionError, match="returns"):
        check_parity([good[0], Candidate("d", lambda: ref[0])], "fp32")
    assert check_parity(good + [Candidate("c", lambda: ref + 1e-2)], "bf16")["c"] == pytest.approx(1e-2, rel=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["timm-cl", "onnxruntime", "openvino", "openvino-tput"])
def test_bench_peers_match_the_reference(impl):
    pytest.importorskip("timm")
    pytest.importorskip({"onnxruntime": "onnxruntime"}.get(impl, "openvino" if "openvino" in impl else "timm"))
    from bench.candidates import build, output_tensor

    spec = dict(preset="b0", size=64, batch=2, threads=1)
    with torch.inference_mode():
        expected = output_tensor(build(dict(spec, impl="reference"))[0]())
        got = output_tensor(build(dict(spec, impl=impl))[0]())
    assert_max_abs_close(got, expected, impl, atol=1e-4)
