# Two commands do all set-up on a fresh machine:  `make test`  and  `make bench`.
# VENV may point elsewhere (CI keeps one per requirements hash so reruns reuse it).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell (cat requirements-dev.txt setup.py; echo $(CURDIR)) | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv test test-interpret bench bench-micro gpu-check info clean

venv: $(STAMP)

$(STAMP): requirements-dev.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# The whole suite on the CPU; Triton kernels run under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1
# before anything imports triton, unless a GPU is present).
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# The main job: end-to-end CPU benchmark report (Markdown + PNG under bench/results/).
bench: venv
	$(PY) -m bench.report

# Per-op micro-benchmarks through pytest-benchmark.
bench-micro: venv
	$(PY) -m pytest bench/ --benchmark-only

# On a machine with a CUDA GPU: GPU parity tests + GPU benchmarks, report under bench/results/.
gpu-check: venv
	$(PY) -m bench.gpu_check

info: venv
	$(PY) -m pvtv2_fast info

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks
