# Two commands do all the set-up: `make demo` and `make test` (see README.md).
# Both install the exact versions of requirements/lock.txt; `make lock` regenerates it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements/lock.txt
CLIENT_LOCK := requirements/client.txt
LOCKED_EXTRAS := train,convert,serve,loadtest,gateway,certs,fast,dev
PIP_TOOLS := pip-tools==7.6.2
LOCK_VENV := build/lock-venv
COMPILE := $(LOCK_VENV)/bin/pip-compile --quiet --allow-unsafe --generate-hashes --strip-extras \
	--no-emit-index-url --no-emit-find-links
DATA ?=
WORK ?= build/demo

.PHONY: install demo test lint format lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" DATA="$(DATA)" WORK="$(WORK)" bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The whole environment (every extra but tensorrt, which needs NVIDIA's index) and the client's
# base install alone, at the same versions.
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || \
		($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet $(PIP_TOOLS))
	$(COMPILE) --extra $(LOCKED_EXTRAS) -o $(LOCK) pyproject.toml requirements/lock.in
	$(COMPILE) --constraint $(LOCK) -o $(CLIENT_LOCK) pyproject.toml

clean:
	rm -rf build runs .pytest_cache
