# Two commands for a fresh machine:
#   make book   build the book (creates .venv, installs everything, executes every notebook)
#   make test   run the unit tests and every notebook under nbval
# Day to day: make test-fast (the unit tests without the slow ones, under a minute).
# Reading interactively: make lab (JupyterLab on 127.0.0.1; book/*.md open as notebooks).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test test-fast lab venv clean

# no progress bars in the book build or the test logs (a terminal run of an experiment keeps them)
export KEXUE_PROGRESS ?= 0

venv: $(STAMP)

$(STAMP): requirements.txt requirements-data.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-data.txt
	touch $(STAMP)

book: $(STAMP)
	rm -rf _build/.jupyter_cache
	$(BIN)/jupyter-book build . --path-output . --builder html -W --keep-going
	@echo "Book written to _build/html/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" tests

# JupyterLab from .venv with the repository's settings (tools/lab.py, shared with tests/test_lab.py):
# 127.0.0.1 only, port 8888 (KEXUE_LAB_PORT, or a free one when taken), --allow-root when run as
# root, and the URL with its token printed. Extra options: make lab LAB_ARGS="--no-browser".
lab: $(STAMP)
	$(BIN)/python tools/lab.py $(LAB_ARGS)

clean:
	rm -rf _build
