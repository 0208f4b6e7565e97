# make run: set up (virtualenv, requirements, data set) and train the study's CNN.
# make test: set up the same way and run every test (the command CI runs); make test-fast: the unit tests alone.
# make lint: ruff check and ruff format --check (CI runs it before the tests); make format applies both.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# loadscope: each test module runs on one worker, so its module-scoped training runs happen once.
PYTEST_ARGS ?= -n 2 --dist loadscope --durations=15

.PHONY: setup data run test test-fast lint format bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version' 
	@# Debian's Python lacks venv until python3-venv is installed (then apt installs it); elsewhere venv's error stands.
	@$(PYTHON) -m venv $(VENV) || { command -v apt-get >/dev/null && echo "Installing python3-venv" && \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

# The Debian package holds the four official IDX files; skipped when FMNIST_DATA_DIR names a folder of them. Outside
# CI a failed install is a warning: the tests that need the real data then skip, and runs say how to get it.
data:
	@if [ -n "$$FMNIST_DATA_DIR" ]; then \
	  [ -d "$$FMNIST_DATA_DIR" ] || echo "warning: FMNIST_DATA_DIR=$$FMNIST_DATA_DIR is not a folder"; \
	elif [ ! -f $(DATA_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Installing Debian's dataset-fashion-mnist into $(DATA_DIR)"; \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; } || { \
	    [ -z "$$CI" ] || exit 1; \
	    echo "warning: the data set was not installed; see docs/running.md#data for other ways to get it"; }; fi

run: setup
	$(PY) main.py --config=configs/cnn.py

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The quick unit tests for the edit loop: none that trains, starts main.py or runs whole models op by op.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 -m "not integration and not slow and not heavy"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m benchmarks train_speed

# The virtualenv only: trained runs (runs/) are never deleted by make.
clean:
	rm -rf $(VENV)
