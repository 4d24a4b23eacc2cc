# Two commands on a fresh machine: `make run` (set up + demo) and `make test` (set up + tests).
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test bench build clean

$(PYTHON):
	python3 -m venv $(VENV)

# torch first, pinned to the CPU wheel: anything else would pull a multi-GB CUDA build.
$(STAMP): $(PYTHON) pyproject.toml setup.py
	$(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install "setuptools>=69" wheel "Cython>=3.0" "numpy>=1.26" "scipy>=1.11"
	$(PYTHON) -m pip install --no-build-isolation -e ".[all]"
	touch $(STAMP)

# Rebuild the extension in place when the kernels changed since the install.
build: $(STAMP)
	$(PYTHON) setup.py -q build_ext --inplace

# The demo: kernels on synthetic vectors, then a text memory of the installed man pages
# (index → eval → search through the `rerank` command; a second run reuses what is stored).
run: build
	$(PYTHON) examples/quickstart.py
	$(PYTHON) examples/manpages_demo.py

test: build
	$(PYTHON) -m pytest -q tests

bench: build
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/bench_kernels.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/bench_retrieval.py

clean:
	rm -rf build dist *.egg-info rerank/_kernels.c rerank/_kernels*.so
