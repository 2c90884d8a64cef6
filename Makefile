# Two commands do all set-up on a fresh machine:  `make test`  and  `make bench`.
# VENV may point elsewhere (CI keeps one per requirements hash so reruns reuse it).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell (cat requirements-dev.txt setup.py; echo $(CURDIR)) | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv test bench bench-micro gpu-check sanitize aot-report info clean

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

# On a machine with a CUDA GPU: GPU parity tests + GPU benchmarks, report under bench/results/.
gpu-check: venv
	$(PY) -m bench.gpu_check

# The CPU kernels built with AddressSanitizer (build/asan, the normal build is untouched), then the C++ op tests.
# libstdc++ is preloaded too: ASan intercepts __cxa_throw, which python itself does not link.
ASAN_LIB = $(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libstdc++.so)
sanitize: venv
	PVTV2_FAST_SANITIZE=address PVTV2_FAST_CUDA=0 $(PY) setup.py -q build_ext --build-lib build/asan --build-temp build/asan-tmp --force
	PVTV2_FAST_EXT=$$(ls build/asan/pvtv2_fast/_C*.so) LD_PRELOAD="$(ASAN_LIB)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_ops_cpp.py tests/test_conv_ffn.py -k "not opcheck"

# Every Triton kernel variant compiled for sm_80/sm_90, with its resource use (no GPU needed).
aot-report: venv
	$(PY) -m pvtv2_fast.kernels.aot --arch 80 90 --out bench/results/triton_compile.md

info: venv
	$(PY) -m pvtv2_fast info

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks
