# The two commands of the README. Both set themselves up on a fresh machine (Python 3.11, no GPU):
#   make laptop   the whole pipeline at laptop scale on real CIFAR-10 (wall time: docs/measurements.md)
#   make test     the whole test suite
# `make laptop DATA=/path/to/cifar10-jpg.tar.gz` uses an offline image-folder copy instead of the
# torchvision download.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: laptop test test-avx2 smoke lint rulegraph report plan dag

$(STAMP): pyproject.toml envs/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c envs/constraints.txt -e '.[dev]'
	touch $(STAMP)

# (a variable, because a literal comma would split $(if ...)'s arguments)
DATA_CONFIG = --config 'data={"source": "imagefolder", "path": "$(abspath $(DATA))"}'

laptop: $(STAMP)
	$(BIN)/snakemake --profile profiles/laptop $(if $(DATA),$(DATA_CONFIG))

test: $(STAMP)
	$(BIN)/python -m pytest

# The training tests again with oneDNN, ATen and MKL capped to AVX2 (the kernels of most laptops),
# whatever this CPU has: CI runs it, so an ISA-specific kernel bug fails before it lands.
AVX2 = ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
test-avx2: $(STAMP)
	$(AVX2) $(BIN)/python -m pytest tests/unit -m training

smoke: $(STAMP)
	$(BIN)/snakemake --profile profiles/smoke

# After a run: its report, what would run, its job graph (PRESET=laptop by default; DIR= another
# run directory than the preset's runs/<preset>). The run directory keeps the data it was made
# with, so none of these repeats DATA=.
PRESET ?= laptop
RUN = --profile profiles/$(PRESET) $(if $(DIR),--directory $(DIR))
report: $(STAMP)
	$(BIN)/snakemake $(RUN) --report report.html
	@echo "report: $(or $(DIR),runs/$(PRESET))/report.html"
plan: $(STAMP)
	$(BIN)/snakemake $(RUN) -n
dag: $(STAMP)
	$(BIN)/snakemake $(RUN) --dag --quiet all > $(or $(DIR),runs/$(PRESET))/dag.dot
	@if command -v dot >/dev/null; then dot -Tsvg $(or $(DIR),runs/$(PRESET))/dag.dot \
	    > $(or $(DIR),runs/$(PRESET))/dag.svg && echo "dag: $(or $(DIR),runs/$(PRESET))/dag.svg"; \
	else echo "dag: $(or $(DIR),runs/$(PRESET))/dag.dot (install graphviz for an SVG)"; fi

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/ruff check pipeline_scripts tests
	$(BIN)/ruff format --check pipeline_scripts tests

# The rule graph checked into docs/ (tests/workflow/test_workflow.py keeps it current).
rulegraph: $(STAMP)
	$(BIN)/snakemake --profile profiles/smoke --rulegraph --quiet all > docs/rulegraph.dot
	dot -Tsvg docs/rulegraph.dot > docs/rulegraph.svg
