# `make demo` sets up .venv and runs the main job on built-in data; `make test` runs every check
# in .venv-test, which adds torchvision, timm, MONAI and smp (requirements-test.lock) for the
# third-party models that tests/convert converts.
PYTHON ?= python3
TEST_PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_VENV := .venv-test
TEST_BIN := $(TEST_VENV)/bin
TEST_STAMP := $(TEST_VENV)/.installed

.PHONY: setup setup-test demo test lint bench clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

$(TEST_STAMP): requirements-test.lock pyproject.toml
	test -x $(TEST_BIN)/python || $(TEST_PYTHON) -m venv $(TEST_VENV)
	$(TEST_BIN)/python -m pip install --quiet --upgrade pip
	$(TEST_BIN)/python -m pip install --quiet -r requirements-test.lock
	$(TEST_BIN)/python -m pip install --quiet --no-deps -e .
	touch $(TEST_STAMP)

setup: $(STAMP)

setup-test: $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/concatnets demo

lint: $(TEST_STAMP)
	$(TEST_BIN)/ruff check src tests
	$(TEST_BIN)/ruff format --check src tests

test: lint
	$(TEST_BIN)/python -m pytest -q src tests

clean:
	rm -rf $(VENV) $(TEST_VENV) .pytest_cache .ruff_cache .hypothesis
