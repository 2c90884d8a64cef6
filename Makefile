# Two commands do all set-up on a fresh machine:  `make test`  and  `make bench`.
# VENV may point elsewhere (CI keeps one per requirements hash so reruns reuse it).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell (cat requirements-dev.txt setup.py; echo $(CURDIR)) | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv fuzz lint test bench bench-micro gpu-check sanitize aot-report info clean

venv: $(STAMP)

CSRC := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/include/*/*.h)

# Re-runs when the requirements, setup.py or any C++/CUDA source changes (the extension is rebuilt in place).
$(STAMP): requirements-dev.txt setup.py $(CSRC)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# The whole suite on the CPU; Triton kernels run under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1
# before anything imports triton, unless a GPU is present).
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# The ops' property tests as a fuzz: 500 random shapes per op, each on every fused backend, against the reference.
fuzz: venv
	PVTV2_FAST_FUZZ_EXAMPLES=$${FUZZ:-500} $(PY) -m pytest -q tests/ops -k property

# Lint and format check (CI runs it before the tests); `ruff format .` fixes formatting.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The main job: end-to-end CPU benchmark report, the CPU kernels per ISA, memory vs resolution, and segmentation
# image → labels vs resolution up to 8192² (Markdown + PNG under bench/results/).
bench: venv
	$(PY) -m bench.report
	$(PY) -m bench.isa
	$(PY) -m bench.memory
	$(PY) -m bench.segmentation

# Per-op micro-benchmarks through pytest-benchmark.
bench-micro: venv
	$(PY) -m pytest bench/ --benchmark-only

# On a CUDA machine, offline included: the whole GPU check in <= 7 minutes (bench/gpu_quick.py), results in $$OUT
# or bench/results/gpu/. No venv and no install: it runs on GPU_PY (default python3, which must import torch and
# triton; make gpu-check GPU_PY=.venv/bin/python for the venv). GPU_CHECK_ARGS: e.g. --budget 300, --dry-run.
GPU_PY ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	@$(GPU_PY) -c "import torch" 2>/dev/null || { echo "make gpu-check: $(GPU_PY) cannot import torch (set GPU_PY)"; exit 2; }
	$(GPU_PY) -m bench.gpu_quick $(GPU_CHECK_ARGS)

# The CPU kernels built with AddressSanitizer (build/asan, the normal build is untouched), then the C++ op tests:
# parity (the cpu cases of tests/ops and the bf16 GEMM's pairs cases) and the raw ops' bad-input, overflow and
# pool-bin checks (test_cpp_checks).
# libstdc++ is preloaded too: ASan intercepts __cxa_throw, which python itself does not link.
ASAN_LIB = $(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libstdc++.so)
sanitize: venv
	PVTV2_FAST_SANITIZE=address PVTV2_FAST_CUDA=0 $(PY) setup.py -q build_ext --build-lib build/asan --build-temp build/asan-tmp --force
	PVTV2_FAST_EXT=$$(ls build/asan/pvtv2_fast/_C*.so) LD_PRELOAD="$(ASAN_LIB)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		$(PY) -m pytest -q -p no:cacheprovider tests/ops -k "(cpu or pairs or bad_input or cpp_checks or block_cache) and not opcheck"

# Every Triton kernel variant compiled for sm_80/sm_90, with its resource use (no GPU needed).
aot-report: venv
	env -u TRITON_INTERPRET $(PY) -m pvtv2_fast.kernels.aot --arch 80 90 --out bench/results/triton_compile.md

info: venv
	$(PY) -m pvtv2_fast info

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks
