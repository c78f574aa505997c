# Two commands set everything up from a clean clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := var/demo
DEMO_DATE := 2026-11-01

.PHONY: install java chromium demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

java:
	@bash .ci/ensure-java

# Headless Chromium for the report's browser test (the test skips, saying why, where it cannot be had).
chromium:
	@bash .ci/ensure-chromium

install: $(STAMP) java

# Synthetic logs -> the nightly flow for DEMO_DATE -> a few published rows.
demo: install
	$(BIN)/nightrec generate --out $(DEMO)/landing --users 1000 --items 300 --days 30 --seed 7 --end-date $(DEMO_DATE)
	$(BIN)/nightrec run --date $(DEMO_DATE) --config configs/demo.toml
	$(BIN)/nightrec recs --config configs/demo.toml --limit 10

# pytest exits 5 when it collected no test: an empty selection must not pass.
test: install chromium
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var .pytest_cache
