# Two commands for a newcomer: `make demo` and `make test`. Both install what they need, once.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: install demo test test-fast bench bench-quick serve mlflow-ui clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch lies on disk; a looser request could pull a CUDA build of several GB.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,server]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/continual-opd demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The benchmark behind the README's claims (about 21 min on 2 CPU cores; at most 30); writes docs/bench/ and an MLflow bench run.
bench: $(STAMP)
	$(PY) -m bench --out docs/bench

# The same machinery at tiny budgets (a few minutes); its numbers mean nothing and it writes outside docs/.
bench-quick: $(STAMP)
	$(PY) -m bench --quick --out .continual-opd/bench-quick

serve: $(STAMP)
	$(VENV)/bin/continual-opd serve

mlflow-ui: $(STAMP)
	$(VENV)/bin/continual-opd mlflow-ui

clean:
	rm -rf .continual-opd
