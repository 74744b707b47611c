# iovalab: two commands do everything on a fresh machine.
#   make lab   create .venv, install, open JupyterLab on the first notebook (127.0.0.1, token)
#   make test  create .venv, install dev tools, run every test (what CI runs)
# make lab serves the learner's own copy of the book (my-notebooks/, git-ignored), never notebooks/ itself:
#   make reset-book                              every chapter back to the pristine book (edits are lost)
#   make reset-book CHAPTER=03-map-page-path     that chapter only
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8888
WORKSHOP_PORT ?= 8866
BOOK   := notebooks
LAB_DIR ?= my-notebooks

.PHONY: lab lab-copy reset-book test lint bench workshop handout clean

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

lab: $(VENV)/.lab-installed lab-copy
	$(BIN)/python -m jupyterlab --ip=127.0.0.1 --port=$(PORT) --ServerApp.root_dir=$(LAB_DIR) \
		--LabApp.default_url=/lab/tree/00-start-here.ipynb \
		$(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_DIR)/00-start-here.ipynb

# The learner's working copy, made from the pristine book on first start. A chapter the book gains later is
# copied in at the next start; a chapter already there is never overwritten (reset-book does that).
lab-copy:
	@case "$(abspath $(LAB_DIR))" in "$(abspath $(BOOK))"|"$(abspath .)"|/) \
		echo "LAB_DIR=$(LAB_DIR) must be a folder of its own, not the book or the checkout"; exit 2;; esac
	@mkdir -p $(LAB_DIR)
	@for f in $(BOOK)/*.ipynb $(BOOK)/README.md; do \
		[ -e "$(LAB_DIR)/$${f##*/}" ] || cp "$$f" "$(LAB_DIR)/"; done

CHAPTER_NAME = $(basename $(notdir $(CHAPTER)))
reset-book:
ifdef CHAPTER
	@test -f $(BOOK)/$(CHAPTER_NAME).ipynb || { echo "no chapter '$(CHAPTER)'; the chapters are:" \
		$$(cd $(BOOK) && ls *.ipynb | sed 's/\.ipynb$$//'); exit 2; }
	@mkdir -p $(LAB_DIR)
	cp $(BOOK)/$(CHAPTER_NAME).ipynb $(LAB_DIR)/$(CHAPTER_NAME).ipynb
else
	@case "$(abspath $(LAB_DIR))" in "$(abspath $(BOOK))"|"$(abspath .)"|/) \
		echo "LAB_DIR=$(LAB_DIR) must be a folder of its own, not the book or the checkout"; exit 2;; esac
	rm -rf $(LAB_DIR)
	@$(MAKE) --no-print-directory lab-copy LAB_DIR=$(LAB_DIR)
	@echo "$(LAB_DIR)/ is the pristine book again"
endif

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/mypy

# Everything, notebooks and real-browser tests included, on 2 workers: each browser test is its own
# xdist_group with its own server port, token and temporary directories.
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/mypy
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
