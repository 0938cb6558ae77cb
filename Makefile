# make bench : set up .venv (torch, triton, this package with its extension) and run the benchmark suite
# make test  : set up .venv and run the test suite (native, then Triton kernels under the interpreter)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 is a CUDA 13 build; override for another (e.g. TORCH_SPEC='torch>=2.4').
TORCH_SPEC ?= torch==2.14.1
PYTEST_ARGS ?=
BENCH_ARGS ?=
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: setup test test-native test-triton bench bench-quick clean

$(VENV)/.eitp-installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" numpy setuptools wheel ninja
	# --no-build-isolation: the extension compiles against the torch just installed.
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,bench]"
	$(PY) -c "import eitp_kernels; [print(s) for s in eitp_kernels.backends().values()]"
	touch $@

setup: $(VENV)/.eitp-installed

# pytest exits 5 when a selection holds no test; that is not a failure here.
test-native: setup
	$(PY) -m pytest -m "not triton_interpret and not slow" $(PYTEST_ARGS) tests || [ $$? -eq 5 ]

test-triton: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -m "triton_interpret and not slow" $(PYTEST_ARGS) tests || [ $$? -eq 5 ]

bench-quick: setup
	$(PY) -m eitp_kernels.bench --quick $(BENCH_ARGS)

test: test-native test-triton bench-quick

bench: setup
	$(PY) -m eitp_kernels.bench $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) eitp_kernels/_C*.so *.egg-info
