# Two commands matter: `make demo` and `make test`. Both create .venv and install council into it first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.council-installed
# CPU machines take this torch (a CPU build); GPU users install a CUDA torch into .venv first and
# the install step keeps it (see README, "GPU install").
TORCH_SPEC ?= torch==2.13.0
# Ray tests on 2 shared cores can lose a race to start-up (ports, agents); one rerun of a failed test tells a
# flake from a bug. A rerun is never silent: it shows as R, and tests/conftest.py prints why its first try failed.
PYTEST_ARGS ?= -rfE --reruns 1 --reruns-delay 5

.PHONY: demo test install lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/council demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check council tests bench
	$(VENV)/bin/mypy council
	$(VENV)/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml

bench: $(STAMP)
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) .council .pytest_cache
