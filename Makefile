# Two commands on a fresh machine: `make run` and `make test`. Each does its own set-up.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench setup clean demo

# Compiled with mypyc (setup.py; the list is src/timewait/compiled.py): the packet simulator's
# per-segment path, built as C extensions beside the sources. TIMEWAIT_PURE=1 skips it.
COMPILED_SRC := $(shell sed -n 's/^    "timewait\.\(.*\)",$$/\1/p' src/timewait/compiled.py \
                  | sed 's|\.|/|g; s|^|src/timewait/|; s|$$|.py|')
BUILT   := $(VENV)/.compiled

$(STAMP): pyproject.toml setup.py
	@PY=$(PY) bash scripts/system-packages.sh
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77' 'mypy==2.4.1'
	TIMEWAIT_PURE=1 $(BIN)/python -m pip install --quiet --no-build-isolation -e '.[dev]'
	@touch $(STAMP)

# build_ext copies each .so with the mtime of its build/ copy; the touch dates it to this build,
# which tests/conftest.py compares with the sources.
$(BUILT): $(STAMP) $(COMPILED_SRC)
	@find src -name '*.so' -delete
	@if [ -n "$$TIMEWAIT_PURE" ]; then echo "TIMEWAIT_PURE set: running the pure-Python sources"; \
	else echo "mypyc: compiling $(words $(COMPILED_SRC)) modules (about 40 s)"; \
	$(BIN)/python setup.py --quiet build_ext --inplace >/dev/null \
	&& find src -name '*.so' -exec touch {} +; fi
	@touch $(BUILT)

setup: $(BUILT)
	@PY=$(PY) bash scripts/system-packages.sh

# The main job: diagnose this host. Exit 1/2 (warnings/critical) is a result, not a failure.
run: setup
	@$(BIN)/timewait doctor; status=$$?; [ $$status -le 2 ] || exit $$status

lint: $(STAMP)
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py

typecheck: $(STAMP)
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -q

test: lint typecheck unit

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
	find src -name '*.so' -delete
