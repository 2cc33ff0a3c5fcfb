# kuosan — the README's two commands. Each sets up a fresh machine alone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned to the CPU wheel; the package's own range (torch>=2.4) is then already satisfied.
# k-diffusion (a peer in the sampler cross-checks and benchmarks) without its training stack (clip, kornia,
# torchvision, wandb ...): only its sampling code is used (benchmarks/kdiffusion_peer.py).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps k-diffusion==0.1.1.post1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kuosan demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/samplers.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
