# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench clean

venv: $(STAMP)

# Re-install when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) cli.py sweep experiments/quickstart.toml
	$(PY) cli.py plot results/quickstart
	$(PY) cli.py report results/quickstart
	@echo "figures: results/quickstart/lr_curves.png results/quickstart/transfer.png"

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/normalize_overhead.py
	$(PY) benchmarks/transfer_quickstart.py

clean:
	rm -rf $(VENV) build *.egg-info
