# The two commands a new user needs: `make demo` and `make test`.
# Both build .venv from the pinned constraints on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export RAY_AUTH_MODE := disabled

.PHONY: demo test sync-check clean
CHROMIUM := /usr/bin/chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==0.13.8
	$(BIN)/uv pip install -q --python $(BIN)/python -c constraints.txt -e ".[dev,live,dist,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bifrost demo

# Debian's chromium, for the dashboard and tear-sheet tests in a real headless browser.
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

# nbdev gate: cleaning the notebooks and re-exporting the package must change nothing.
sync-check: SHELL := /bin/bash
sync-check: $(STAMP)
	@snap() { find nbs bifrost -type f \( -name '*.ipynb' -o -name '*.py' \) -print0 | sort -z | xargs -0 md5sum; }; \
	before="$$(snap)"; $(BIN)/nbdev-clean && $(BIN)/nbdev-export; after="$$(snap)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev-clean/nbdev-export changed files: the package is out of sync with nbs/"; \
	  diff <(echo "$$before") <(echo "$$after"); exit 1; fi
	@echo "nbdev gate: notebooks clean, bifrost/ in sync"

test: SHELL := /bin/bash
test: sync-check $(CHROMIUM)
	BIFROST_HOME=$$(mktemp -d) $(BIN)/pytest tests nbs pipelines dashboards --nbval-lax --durations=25 -n 2 --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV)
