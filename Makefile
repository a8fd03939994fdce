# The two front-door commands: `make demo` (main job) and `make test` (test suite).
# Both run the idempotent set-up first, so they work on a fresh machine.
PY := .venv/bin/python

.PHONY: setup demo test lint
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m weightzoo.cli.main demo

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check weightzoo cli tests benchmarks examples
