# make test: create .venv, install the project with the build, dev and cluster (Ray) extras, lint (ruff),
# check the import layers (lint-imports, setup.cfg's [importlinter] contracts), run the test suite.
# make demo: same setup, then run the demo chain on calib_data.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	# The pinned CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# PYTHONWARNINGS: setuptools warns on every editable install with package_dir (nothing is wrong).
	# CMAKE_ARGS: llama-cpp-python (dev, the llama.cpp peer) compiles llama.cpp here, without its
	# multimodal library, which nothing uses; pip keeps the built wheel in its cache for the next venv.
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		PYTHONWARNINGS=ignore $(PIP) install -q -e ".[export,dev,cluster]"
	touch $@

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m tests.layers
	$(PY) -m pytest -q -n 2 --dist loadgroup --timeout 900  # loadgroup: the Ray tests share one worker

demo: setup
	$(PY) -m eov_edge.bench.demo --out demo_out

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
