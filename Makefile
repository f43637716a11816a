# voxmem: `make run` serves, `make test` tests. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install run test lint typecheck pytest bench clean tools audit advisories

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install voxmem with its pinned dependencies

run: install ## migrate, then API on 127.0.0.1:8000 + 2 workers (Ctrl-C stops)
	$(BIN)/voxmem up

lint: install ## ruff
	$(BIN)/ruff check .

typecheck: install ## mypy --strict on our packages
	$(BIN)/mypy api worker memory db

tools: ## test tools that are not Python packages (promtool for the alert rules, chromium for the console)
	./ops/install-promtool.sh
	./ops/install-chromium.sh

pytest: install tools ## the test suite only
	$(BIN)/pytest

advisories: install ## pinned dependencies against the vendored advisory snapshot (offline; ops/advisories/README.md)
	$(BIN)/python ops/advisories/advisories.py check

test: install lint typecheck advisories pytest ## everything CI runs

audit: install ## pinned dependencies against PyPI's live vulnerability data (online; `advisories` is the offline check in `test`)
	$(BIN)/pip-audit -r constraints.txt --no-deps --disable-pip --vulnerability-service pypi --strict \
		$$(grep -oE '^[A-Za-z0-9-]+' ops/pip-audit-allowlist.txt | sed 's/^/--ignore-vuln /')

bench: install ## every benchmark; rewrites docs/benchmarks.md
	$(BIN)/python -m bench.run_all

clean: ## remove the venv and caches (keeps data/)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
