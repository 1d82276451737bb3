# Two commands do all set-up on a fresh clone (Python 3.11, no GPU needed):
#   make run    install into .venv, then the main job on the embedded offline task
#   make test   install into .venv, then the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install results gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# torch is pinned exactly in pyproject.toml: a range would pull a multi-GB CUDA build.
# (no pip self-upgrade: the venv's pip installs this project.) Byte-compiling is kept, since with
# PYTHONDONTWRITEBYTECODE set (as on this machine) every process would compile what it imports (import torch
# etc.: 6 s -> 15 s); compileall does it on every core (pip compiles on one: 66 s -> 50 s here). As with pip, a
# file that does not compile (torch ships a Python 3.12-only test file) is left alone.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --no-compile -e ".[test]"
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/harness run $(ARGS)

test: install
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python -m pytest -q $(ARGS)

# Every leaderboard and report under results/ regenerated from the committed records (no training).
results: install
	for dir in results/*/; do WANDB_MODE=disabled $(BIN)/harness report $$dir > /dev/null || exit 1; done

# The checks a GPU run must pass (benchmarks/gpu_check.py); says so and exits 0 where no CUDA device is present.
gpu-check: install
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) outputs
