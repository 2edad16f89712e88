# Two commands for a new user: `make demo` (set-up + the whole job end to end) and `make test`.
# Both create .venv and install the package with the CPU build of PyTorch first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel keeps the install small; override with e.g. TORCH_SPEC="torch>=2.3" for a GPU build.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu fetches the CPU build where PyPI would give a CUDA one.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP_FLAGS ?= -q --disable-pip-version-check
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DATA ?=
DEMO_OUT ?= demo_out

.PHONY: install demo test test-slow bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "hubert-ecg needs Python >= 3.10")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),) "$(TORCH_SPEC)"
	$(PY) -m pip install $(PIP_FLAGS) -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hubert-ecg demo --out $(DEMO_OUT) $(if $(DATA),--data $(DATA),)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/loader.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache build *.egg-info src/*.egg-info
