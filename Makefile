# The README's two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default: on this kind of machine torch==2.13.0 installs from local disk in seconds,
# while an unpinned torch pulls a multi-GB CUDA build. On a GPU box: make setup TORCH_SPEC='torch==2.14.1'
TORCH_SPEC ?= torch==2.13.0
CATALOG ?= catalogs/demo.yaml
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# img2dataset drags in the Python 3.6 `dataclasses` backport, which shadows the standard library and
# kills Prefect's server at start: it is removed after install (tests/core/test_install.py checks).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev,ray]'
	$(BIN)/pip uninstall -q -y dataclasses || true
	touch $@

demo: setup
	$(BIN)/vora run $(CATALOG)
	$(BIN)/vora status $(CATALOG)
	@echo "Results are in the catalog's workdir (runs/demo for the demo):"
	@echo "  eval summary:  runs/demo/eval/summary.json (per benchmark: eval/<benchmark>/scores.json, predictions.jsonl)"
	@echo "  loss curves:   runs/demo/pretrain/loss.png, runs/demo/finetune/loss.png (metrics.jsonl next to them)"
	@echo "  models:        runs/demo/pretrain/final, runs/demo/merged, runs/demo/finetune/final (vora chat DIR ...)"
	@echo "  data:          runs/demo/shards, captions, text, mixture; manifest.duckdb (DuckDB views over them)"

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check vora_core flows tests benchmarks scripts

bench: setup
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
