# The two Quickstart commands: `make demo` and `make test`. Both create .venv on first use.
.PHONY: demo test lint format setup

# Local GLUE data is found only through $$STRUCTPRUNE_GLUE_DIR (else the Hub); this project's checkout points it
# at the shared folder beside it, so the demo and the tests stay offline. Set it yourself to use another copy.
STRUCTPRUNE_GLUE_DIR ?= $(if $(wildcard ../shared/data/glue),$(abspath ../shared/data/glue))
export STRUCTPRUNE_GLUE_DIR

setup:
	@bash scripts/setup.sh

demo: setup
	HF_HUB_OFFLINE=1 .venv/bin/structprune run sst2-demo

test: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .
