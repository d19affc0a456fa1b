# Quick start: `make demo` (prepare Online Retail, train, print the test table)
# and `make test`. Both create the virtual environment if it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RAW ?= ../shared/datasets/online_retail/online_retail.parquet
DATA ?= data/online_retail
RUN ?= runs/online_retail
# Two test processes (pytest-xdist; a test file stays in one process, so its
# module fixtures are built once). `make test` runs the fast group (under 10 min
# on 2 cores); the tests marked `slow` (end-to-end runs of a minute or more: the
# two-worker grid and tf.distribute runs, resume after a kill, the fresh-clone
# proof on real Online Retail) run in `make test-slow`; CI runs both
# (`make test-all`, .ci/run). Print the slowest tests, to keep the split honest
# (BUILD_NOTES.md, "Dataset identity across CPUs and the pinned install").
TEST_WORKERS ?= 2
PYTEST_ARGS ?= -n $(TEST_WORKERS) --dist loadfile --durations=15
# The demo trains the flagfile's config, as the paper's AlterRec (--model=alterrec:
# the demo shows Algorithm 1 at work; the flagfile's own default is AlterRec_random,
# which validation prefers on this data), on the shortest schedule that still runs
# all of Algorithm 1 (one random-negative epoch per tower, then one hard-negative
# epoch per tower), with the faster host-side hard-negative selection, to stay
# under 15 minutes from a fresh clone on a slow 2-core host (BUILD_NOTES.md, "The
# demo from a fresh clone"). The full schedule (up to 30 epochs with early
# stopping, about an hour on 2 cores): `make train`.
# It ends with the test table beside three count floors of the same split, SR (the
# best floor on Online Retail) among them; the neighbourhood floors (V-SKNN, STAN) rank
# the split for minutes each and stay in `make grid`.
DEMO_FLAGS ?= --model=alterrec --m_max=4 --m_random=1 --m_gap=1 \
  --hard_negative_selection=argpartition --floors=most_popular,transition,sequential_rules
DEMO_RUN ?= runs/online_retail_demo

# The issue-15 acceptance grid (every model x 3 seeds, ~15 h on 2 cores):
# resumes from the runs committed under GRID_ARCHIVE and adds each run there as
# it finishes (commit them); run it from a checkout you do not edit meanwhile.
GRID_ARCHIVE ?= benchmarks/grid_runs/online_retail
# The archived grid was trained with the paper's plain text scores (T = 1), before
# the flagfile moved to T = 10 (issue 32).
GRID_FLAGS ?= --text_temperature=1
GRID_WORKERS ?= 2

# The pinned install: every package at the version of constraints.txt (`make lock`
# refreshes it; setup.py keeps the ranges). `make CONSTRAINTS=` installs without it.
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
EXTRAS := data,text,report,tune,dev
LOCK_VENV ?= .venv-lock

# RecBole 1.2.1's baselines (issue 35) live in their own venv, never in the product's:
# RecBole needs numpy < 2, pandas < 2, scipy < 1.13 and setuptools < 70, and pulls ray
# (which its quick_start imports; we use only its config, data, utils and trainer), so
# torch goes first, alone (the CPU wheel, as above), then the pinned packages of
# peers/requirements.txt without their dependencies (the file lists every one).
PEERS_VENV ?= .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
# `make peers-run`: every RecBole model on one prepared dataset (PEERS_FLAGFILE's flags).
PEERS_FLAGFILE ?= configs/online_retail.flags
PEERS_DATA ?= $(DATA)
PEERS_MODELS ?= sasrec,gru4rec,bert4rec,srgnn,core,fdsa,s3rec

.PHONY: venv demo prepare train grid test test-slow test-all lint lock clean peers peers-run

venv: $(VENV)/.installed

# torch first, alone: the CPU wheel of 2.13.0 (a bare `torch` pulls a CUDA build).
$(VENV)/.installed: setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIN) torch==2.13.0
	$(PY) -m pip install -q $(PIN) -e '.[$(EXTRAS)]'
	touch $@

# apache-beam (data_tools.beam_prepare and its test) only where the tests run:
# the demo does not need it.
$(VENV)/.beam: $(VENV)/.installed
	$(PY) -m pip install -q $(PIN) -e '.[beam]'
	touch $@

# Refreshes constraints.txt: installs torch, then every extra (beam included)
# within setup.py's ranges without constraints into a scratch venv, and pins
# what pip chose (pip freeze, without the project; torch without its +cpu label).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q torch==2.13.0
	$(LOCK_VENV)/bin/python -m pip install -q '.[$(EXTRAS),beam]'
	{ sed -n '/^#/p' constraints.txt; $(LOCK_VENV)/bin/python -m pip freeze \
	  --exclude-editable | grep -v '^#' | grep -iv '^alterrec' \
	  | sed -E 's/^(torch==[^+]*)\+.*/\1/' | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: peers/requirements.txt
	test -x $(PEERS_PY) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install -q --upgrade pip
	$(PEERS_PY) -m pip install -q torch==2.13.0
	$(PEERS_PY) -m pip install -q --no-deps -r peers/requirements.txt
	$(PEERS_PY) -c "import recbole.config, recbole.data, recbole.utils, recbole.trainer; \
	  import numpy, pandas; print('RecBole', __import__('recbole').__version__, \
	  'numpy', numpy.__version__, 'pandas', pandas.__version__)"
	touch $@

peers-run: venv peers
	$(PY) -m alterrec_tf.peers --flagfile=$(PEERS_FLAGFILE) --data_dir=$(PEERS_DATA) \
	  --models=$(PEERS_MODELS) --peers_venv=$(PEERS_VENV)

prepare: venv
	$(PY) -m data_tools.prepare --flagfile=configs/online_retail.flags \
	  --raw_path=$(RAW) --output_dir=$(DATA)

train: venv
	$(PY) -m alterrec_tf.train --flagfile=configs/online_retail.flags \
	  --data_dir=$(DATA) --run_dir=$(RUN)

demo: prepare
	$(PY) -m alterrec_tf.train --flagfile=configs/online_retail.flags \
	  --data_dir=$(DATA) --run_dir=$(DEMO_RUN) $(DEMO_FLAGS)

grid: prepare
	$(PY) -m alterrec_tf.experiments --flagfile=configs/online_retail.flags \
	  --data_dir=$(DATA) --runs_dir=runs/grid --workers=$(GRID_WORKERS) \
	  --archive_dir=$(GRID_ARCHIVE) --seeds=0,1,2 --report_dir=report/grid $(GRID_FLAGS)

test: venv $(VENV)/.beam lint
	$(PY) -m pytest -q tests -m "not slow" $(PYTEST_ARGS)

test-slow: venv $(VENV)/.beam
	$(PY) -m pytest -q tests -m slow $(PYTEST_ARGS)

# Everything CI checks: lint, the fast group, then the slow group.
test-all: test test-slow

# ruff (lint, import order) and mypy (types) with the settings of pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf data runs models report $(LOCK_VENV)
