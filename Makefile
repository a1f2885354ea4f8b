# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo smoke-real clean

$(PY):
	python3 -m venv $(VENV)

# Re-install only when the dependency list changes.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# loadgroup: tests marked with one xdist_group (files whose module fixtures or compiled
# functions are shared) run on one worker, the largest groups first; the rest spread singly.
test: lint
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15 tests

demo: $(STAMP)
	$(PY) scripts/train.py --config=configs/demo.py --workdir=$${WORKDIR:-runs/demo}

# Qwen3-0.6B at its real size (random weights, 151k-token tokenizer): ~minutes, ~GiBs of RAM.
smoke-real: $(STAMP)
	$(PY) scripts/smoke_real.py --workdir=$${WORKDIR:-runs/smoke_real}

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
