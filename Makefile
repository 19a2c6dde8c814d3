# The two commands of the README. Both set themselves up on a fresh machine (Python 3.11, no GPU):
#   make laptop   the whole pipeline at laptop scale on real CIFAR-10 (wall time: docs/measurements.md)
#   make test     the whole test suite
# `make laptop DATA=/path/to/cifar10-jpg.tar.gz` uses an offline image-folder copy instead of the
# torchvision download.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: laptop test test-avx2 smoke lint rulegraph report plan dag status cost $(EXPERIMENTS)

$(STAMP): pyproject.toml envs/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c envs/constraints.txt -e '.[dev]'
	touch $(STAMP)

# (a variable, because a literal comma would split $(if ...)'s arguments)
DATA_ITEM = 'data={"source": "imagefolder", "path": "$(abspath $(DATA))"}'

laptop: $(STAMP)
	$(BIN)/snakemake --profile profiles/laptop $(if $(DATA),--config $(DATA_ITEM))

test: $(STAMP)
	$(BIN)/python -m pytest

# The training tests again with oneDNN, ATen and MKL capped to AVX2 (the kernels of most laptops),
# whatever this CPU has: CI runs it, so an ISA-specific kernel bug fails before it lands.
AVX2 = ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
test-avx2: $(STAMP)
	$(AVX2) $(BIN)/python -m pytest tests/unit -m training

smoke: $(STAMP)
	$(BIN)/snakemake --profile profiles/smoke

# ---- one command per experiment ---------------------------------------------------------------
# make figure1 [NET=resnet20[,vgg13]] [SEEDS=2] [PROFILE=slurm] [COST=1] [DATA=...]
# prints what the experiment costs (jobs, device-hours at the measured H200 rates, disk; saved as
# the run's plan for `make status`), then runs it (COST=1: only the cost). NET restricts the
# networks, SEEDS=N runs the first N seeds (1..N); PROFILE is a directory of profiles/ (laptop by
# default; slurm and local run the paper's protocol). The experiments are the Snakefile's target
# rules (those whose input is experiment("<name>")) and the claims table.
EXPERIMENTS := $(shell sed -n 's/^ *experiment("\([a-z0-9_]*\)"),$$/\1/p' Snakefile) claims
PROFILE ?= laptop
BENCH ?= docs/measurements/2026-12-04-h200-gpu-check.json
ASSUME ?= resnet18=wrn16_8
ifdef PRESET
$(error PRESET= is now PROFILE= (a directory of profiles/: $(notdir $(wildcard profiles/*))))
endif
PROFILE_FILE = $(or $(wildcard profiles/$(PROFILE)/config.yaml),$(error PROFILE=$(PROFILE): \
	no profiles/$(PROFILE)/; the profiles are $(notdir $(wildcard profiles/*))))
# the run directory: DIR=, else the profile's `directory:`
RUN_DIR = $(or $(DIR),$(shell sed -n 's/^directory: *\([^ #]*\).*/\1/p' $(PROFILE_FILE)))
SEED_LIST = $(if $(shell echo '$(SEEDS)' | grep -Ex '[1-9][0-9]*'),$(shell seq -s, 1 $(SEEDS)),\
	$(error SEEDS=$(SEEDS): give a number of seeds, e.g. SEEDS=2 for seeds 1 and 2))
CONFIG_ITEMS = $(if $(NET),'networks=[$(NET)]') $(if $(SEEDS),'seeds=[$(SEED_LIST)]') \
	$(if $(DATA),$(DATA_ITEM))
RUN = --profile $(patsubst %/config.yaml,%,$(PROFILE_FILE)) $(if $(DIR),--directory $(DIR)) \
	$(if $(strip $(CONFIG_ITEMS)),--config $(CONFIG_ITEMS))
COST_TOOL = $(BIN)/python -m pipeline_scripts.tools.cost --bench $(BENCH) --assume $(ASSUME) \
	--save-plan

$(EXPERIMENTS): $(STAMP)
	$(COST_TOOL) $@ $(RUN)
	$(if $(COST),,$(BIN)/snakemake $@ $(RUN))

# What the profile's whole protocol costs (with NET=, SEEDS= as above); saves its plan.
cost: $(STAMP)
	$(COST_TOOL) $(RUN)

# A live view of a run (from its files; the plans of the commands above): STATUS_ARGS=--watch
status: $(STAMP)
	$(BIN)/python -m pipeline_scripts.tools.status $(RUN_DIR) $(STATUS_ARGS)

# After a run: its report, what would run, its job graph (PROFILE=laptop by default; DIR= another
# run directory than the profile's). The run directory keeps the data it was made with, so none of
# these repeats DATA=.
report: $(STAMP)
	$(BIN)/snakemake $(RUN) --report report.html
	@echo "report: $(RUN_DIR)/report.html"
plan: $(STAMP)
	$(BIN)/snakemake $(RUN) -n
dag: $(STAMP)
	$(BIN)/snakemake $(RUN) --dag --quiet all > $(RUN_DIR)/dag.dot
	@if command -v dot >/dev/null; then dot -Tsvg $(RUN_DIR)/dag.dot > $(RUN_DIR)/dag.svg \
	    && echo "dag: $(RUN_DIR)/dag.svg"; \
	else echo "dag: $(RUN_DIR)/dag.dot (install graphviz for an SVG)"; fi

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/ruff check pipeline_scripts tests
	$(BIN)/ruff format --check pipeline_scripts tests

# The rule graph checked into docs/ (tests/workflow/test_workflow.py keeps it current).
rulegraph: $(STAMP)
	$(BIN)/snakemake --profile profiles/smoke --rulegraph --quiet all > docs/rulegraph.dot
	dot -Tsvg docs/rulegraph.dot > docs/rulegraph.svg
