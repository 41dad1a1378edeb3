# `make test` and `make run` set up .venv themselves, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SEEDS ?= 5

.PHONY: install test run quick report bench ui clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

run: install
	$(PY) -m orchestrator.run --seeds $(SEEDS)

# The README's first look: --quick is 2 short epochs of base and v6, 2 seeds each (a few minutes on 2 cores).
quick: install
	$(PY) -m orchestrator.run --quick

report: install
	$(PY) -m orchestrator.report

bench: install
	$(PY) -m bench

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db --default-artifact-root ./mlflow/artifacts --host 127.0.0.1 --port 5000

clean:
	rm -rf reports ray_results bench/results .pytest_cache
