# make bench : set up .venv (torch, triton, this package with its extension) and run the benchmark suite
# make test  : set up .venv and run the test suite (native, then Triton kernels under the interpreter)
# make gpu-check GPU_CHECK_OUT=dir : on a machine with an NVIDIA GPU, build for it, run every gpu test and
#              the quick benchmark, and write gpu_check.json / gpu_check.txt into dir (scripts/gpu_check.py)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 is a CUDA 13 build; override for another (e.g. TORCH_SPEC='torch>=2.4').
# A CPU build: TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (TORCH_INDEX: the package index torch alone is installed from; empty: pip's default).
TORCH_SPEC ?= torch==2.14.1
TORCH_INDEX ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
# peers: the libraries eitp-bench compares against (fast-histogram, boost-histogram,
# torchao, optimum-quanto, bitsandbytes, lightly); a fresh set-up takes about 30 s
# and 230 MB more with them. EXTRAS=gpu,test,bench,demo leaves them out (the benchmark
# header then names them as missing).
EXTRAS ?= gpu,test,bench,demo,lightning,peers
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

GPU_CHECK_OUT ?= gpu-check-results

.PHONY: setup test test-native test-triton test-asan bench bench-quick bench-smoke gpu-check clean

$(VENV)/.eitp-installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet numpy 'setuptools>=77' wheel ninja
	# --no-build-isolation: the extension compiles against the torch just installed.
	$(PY) -m pip install --quiet --no-build-isolation -e ".[$(EXTRAS)]"
	$(PY) -c "import eitp_kernels; [print(s) for s in eitp_kernels.backends().values()]"
	touch $@

setup: $(VENV)/.eitp-installed

# pytest exits 5 when a selection holds no test; that is not a failure here.
test-native: setup
	$(PY) -m pytest -m "not triton_interpret and not slow" $(PYTEST_ARGS) tests || [ $$? -eq 5 ]

test-triton: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -m "triton_interpret and not slow" $(PYTEST_ARGS) tests || [ $$? -eq 5 ]

# Results: bench-results/<device>-<quick|full>.{txt,json,png,log} (the printed
# table, every row + the machine, the speed-up plot, captured third-party output).
bench-quick: setup
	$(PY) -m eitp_kernels.bench --quick $(BENCH_ARGS)

# The benchmark smoke run of `make test`: every op on every available backend,
# outputs checked against the reference (non-zero exit on a mismatch); the
# torch.compile baseline is left to `make bench` and tests/test_bench.py.
bench-smoke: setup
	$(PY) -m eitp_kernels.bench --quick --no-compile

# The CPU kernels rebuilt with AddressSanitizer + UBSan in a scratch copy,
# then the op tests run against that build with the ASan runtime preloaded.
# Any report aborts the process (-fno-sanitize-recover), failing the target.
ASAN_DIR := build/asan
ASAN_TESTS := $(wildcard tests/test_finite_minmax.py tests/test_entropy*.py tests/test_coherence*.py tests/test_distributed.py tests/test_quant*.py \
	tests/test_bad_inputs.py tests/test_fuzz.py tests/test_load_int8_files.py tests/test_int8_linear.py tests/test_cpu_threads.py)
test-asan: setup
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r setup.py pyproject.toml README.md csrc eitp_kernels tests $(ASAN_DIR)/
	rm -f $(ASAN_DIR)/eitp_kernels/_C*.so
	cd $(ASAN_DIR) && EITP_SANITIZE=1 $(abspath $(PY)) setup.py -q build_ext --inplace > build.log 2>&1 || (tail -50 build.log; exit 1)
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(abspath $(PY)) -c "import eitp_kernels._C as c, sys; assert c.__file__.startswith('$(abspath $(ASAN_DIR))'), c.__file__" && \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(abspath $(PY)) -m pytest -q -m "not triton_interpret and not slow and not gpu" $(ASAN_TESTS) || [ $$? -eq 5 ]

# The four parts in two streams (2-core CI machine: pytest is mostly one busy thread), each
# part's output printed whole when it ends; the first failure fails `make test`.
test: setup
	$(MAKE) --no-print-directory -j2 --output-sync=target bench-smoke test-native test-triton test-asan

bench: setup
	$(PY) -m eitp_kernels.bench $(BENCH_ARGS)

# The first GPU run in one command (sets up the venv itself, building for the present GPU only).
gpu-check:
	$(PYTHON) scripts/gpu_check.py --venv $(VENV) $(GPU_CHECK_OUT)

clean:
	rm -rf build $(VENV) eitp_kernels/_C*.so *.egg-info
