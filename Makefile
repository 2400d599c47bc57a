# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench reference reference-check readme clean

venv: $(STAMP)

# Re-install when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The quickstart from scratch into results/demo/ (the committed reference stays untouched).
demo: $(STAMP)
	$(PY) cli.py sweep experiments/quickstart.toml --results results/demo/quickstart
	$(PY) cli.py plot results/demo/quickstart
	$(PY) cli.py report results/demo/quickstart
	@echo "figures: results/demo/quickstart/lr_curves.png results/demo/quickstart/transfer.png"

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/step_cost.py
	$(PY) benchmarks/normalize_accuracy.py
	$(PY) benchmarks/jobs_speedup.py
	$(PY) benchmarks/grid_vs_naive.py
	$(PY) benchmarks/batched_speedup.py --compile
	$(PY) benchmarks/sweep_times.py --batch auto off
	$(PY) benchmarks/step_efficiency.py
	$(PY) benchmarks/diagnostics_cost.py
	$(PY) benchmarks/transfer_quickstart.py

# Every shipped experiment at its committed size -> results/<experiment>/ and the README's
# generated sections (only cells that are not current run).
reference: $(STAMP)
	$(PY) scripts/reference.py

# Before trusting the committed results on this machine: re-run a sample of the quickstart's
# cells here, each optimum included, and check every optimum and verdict still holds
# (`lrtransfer reproduce`; exit 1 when not; ~2.5 min on 2 cores).
reference-check: $(STAMP)
	$(PY) cli.py reproduce results/quickstart --cells 8

readme: $(STAMP)
	$(PY) scripts/reference.py --readme

clean:
	rm -rf $(VENV) build *.egg-info
