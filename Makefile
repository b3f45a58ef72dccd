PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test lint clean

# torch first, pinned to what pip can take from local disk here; a GPU box takes the same versions from PyPI.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || \
		$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cytotune demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20 tests

lint: $(STAMP)
	$(BIN)/ruff check cytotune tests
	$(BIN)/ruff format --check cytotune tests

clean:
	rm -rf $(VENV) demo_out .pytest_cache
