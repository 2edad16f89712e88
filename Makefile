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

.PHONY: install demo test test-slow lint format bench gpu-check experiments clean docs docs-serve

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "hubert-ecg needs Python >= 3.10")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),) "$(TORCH_SPEC)"
	$(PY) -m pip install $(PIP_FLAGS) -e ".[test,dev,docs]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hubert-ecg demo --out $(DEMO_OUT) $(if $(DATA),--data $(DATA),)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# ruff (lint + format check) and mypy on the package; the import layering is a test (tests/test_architecture.py).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments tools
	$(VENV)/bin/ruff format --check src tests benchmarks experiments tools
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks experiments tools
	$(VENV)/bin/ruff format src tests benchmarks experiments tools

bench: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/loader.py

# The prepared GPU check (issue 15): < 8 min on one H100/H200; writes $(GPU_CHECK_OUT)/gpu_check.{json,md}.
# GPU_CHECK_ARGS=--dry-run checks its plumbing on a CPU.
GPU_CHECK_OUT ?= gpu_check_out
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	PY=$(PY) benchmarks/gpu_check.sh $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

# Real-data experiments (docs/EXPERIMENTS.md, README Results): runs them on ../shared/data (skips with a message
# when absent), writes experiments/results/ and regenerates the tables (CPU time: docs/EXPERIMENTS.md).
EXP_WORK ?= /tmp/hubert-ecg-exp
EXP_STEPS ?= 160 640
experiments: $(STAMP)
	$(PY) experiments/run_all.py --work $(EXP_WORK) --steps $(EXP_STEPS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache build *.egg-info src/*.egg-info

# Documentation site (mkdocs.yml, docs/): warnings are errors, as in CI.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

docs-serve: $(STAMP)
	$(PY) -m mkdocs serve
