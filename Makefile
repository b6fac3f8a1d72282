# Two commands on a fresh machine: `make train` (the main job) and `make test`.
# Both create .venv once; the stamp file makes a second run skip the install.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup train test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch and torchvision first, by exact version, so pip takes the local CUDA wheels.
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --editable '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python -m apps.sentiment fit

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
