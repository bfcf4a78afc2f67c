# Every target installs what it needs into .venv first, so a fresh clone needs only python3 >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo chaos bench clean

install: $(STAMP)

# Reinstall only when the dependency list changes; a no-op install takes well under a second.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "avatarbatch needs Python 3.11 or newer (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check avatarbatch tests bench scripts
	$(BIN)/ruff format --check avatarbatch tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The one thing installed outside .venv: Debian's chromium (apt, as root), because the gallery
# is tested in a real browser; skipped when a chromium is already on PATH.
test: lint
	-@bash scripts/ensure_chromium.sh
	$(BIN)/python -m pytest -q -n auto

demo: install
	$(BIN)/avatarbatch validate manifests/demo.yaml
	$(BIN)/avatarbatch run manifests/demo.yaml --sandbox

# SEED=7 by default; any other seed reproduces its own run. PROFILE=strict plays the
# narrowest reading of Runware's docs (see README, "Where the docs are silent").
chaos: install
	$(BIN)/python bench/chaos.py --jobs 200 --kills 5 --seed $(or $(SEED),7) --profile $(or $(PROFILE),default)

# Every scenario, each contender three times, against the official SDK, a raw httpx loop,
# the ideal and the floor (bench/README.md; about 60 min); writes bench/results.json and the
# figures in bench/README.md. BENCH_ARGS passes options, e.g. BENCH_ARGS="--scenarios A".
bench: install
	$(BIN)/python bench/run_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis
