# iovalab: two commands do everything on a fresh machine.
#   make lab   create .venv, install, open JupyterLab on the first notebook (127.0.0.1, token)
#   make test  create .venv, install dev tools, run every test (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8888
WORKSHOP_PORT ?= 8866

.PHONY: lab test lint bench workshop handout clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "iovalab needs Python >= 3.11, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.lab-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[lab]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.lab-installed

lab: $(VENV)/.lab-installed
	$(BIN)/python -m jupyterlab --ip=127.0.0.1 --port=$(PORT) --ServerApp.root_dir=notebooks \
		--LabApp.default_url=/lab/tree/00-start-here.ipynb \
		$(if $(filter 0,$(shell id -u)),--allow-root,) notebooks/00-start-here.ipynb

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

# Everything, notebooks and real-browser tests included, on 2 workers: each browser test is its own
# xdist_group with its own server port, token and temporary directories.
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup

bench: $(VENV)/.lab-installed
	$(BIN)/python -m iovalab bench

# Workshop: Voila serves notebooks/ on 127.0.0.1 only; its tree page lists the chapters and each one opens
# as an app (narrative + widgets, code hidden). Exposing it on a network is a deliberate, separate step
# (README, "Workshop and handout").
workshop: $(VENV)/.lab-installed
	JUPYTER_PATH="$(CURDIR)/iovalab/data$${JUPYTER_PATH:+:$$JUPYTER_PATH}" $(BIN)/python -m voila notebooks --template=iovalab --Voila.ip=127.0.0.1 --port=$(WORKSHOP_PORT)

handout: $(VENV)/.lab-installed
	$(BIN)/python -m iovalab handout --out build/handout

clean:
	rm -rf build .pytest_cache tests/artifacts
