# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if needed, installs the pinned requirements and the
# project, prepares the models into $DPSYNTH_CACHE (default ~/.cache/dpsynth),
# then runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.dpsynth-installed

.PHONY: demo test test-fast test-gemma models install benchmark benchmark-gemma compare clean-venv

demo: models
	$(BIN)/dpsynth demo

test: models
	$(BIN)/python -m pytest

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -m "not slow"

# The optional Gemma 3 270M model (Gemma Terms of Use): prepare it, run its tests.
test-gemma: $(INSTALLED)
	$(BIN)/dpsynth models prepare --lm gemma3-270m
	$(BIN)/python -m pytest -m gemma

models: $(INSTALLED)
	$(BIN)/dpsynth models prepare

install: $(INSTALLED)

$(INSTALLED): requirements.txt requirements.in setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# engine.py makes its own venv with torch and transformers under $DPSYNTH_CACHE
# on first use, for the Hugging Face row of its table.
benchmark: models
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/lm_step.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/load.py

benchmark-gemma: $(INSTALLED)
	$(BIN)/dpsynth models prepare --lm gemma3-270m
	$(BIN)/python benchmarks/engine.py --lm gemma3-270m

compare: models
	$(BIN)/python benchmarks/compare_methods.py

clean-venv:
	rm -rf $(VENV)
