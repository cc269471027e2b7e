# Two commands on a fresh machine (README): `make demo` and `make test`.
# Both create .venv and install everything on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.docs-installed-stamp
PYTEST := $(PY) -m pytest -n 2 -p no:cacheprovider

.PHONY: install demo solvers-demo test test-slow lint check mutation gpu-check

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

install: $(STAMP)

# The main job: a tiny training comparison on the built-in corpus (3 methods, one seed, two runs
# at a time on two cores; a few minutes), ending with a table and a plot in runs/demo.
demo: $(STAMP)
	$(VENV)/bin/namex compare --preset tiny --methods smoe,ep-camex,namex-full-mom --seeds 0 \
		--steps 200 --jobs 2 --out runs/demo

# The Nash-solver cross-check on built-in experts (every solver against the others).
solvers-demo: $(STAMP)
	$(VENV)/bin/namex demo

# The docs, hf and eval extras too, so that tests/test_docs.py (the API walk, docstrings),
# tests/test_hf*.py (Hugging Face models) and tests/test_hf_eval.py (lm-eval) run, not skip.
test: $(DOCS_STAMP)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow || [ $$? -eq 5 ]  # exit 5 = no slow tests selected

lint: $(STAMP)
	$(VENV)/bin/ruff check namex_ref tests proofs tools studies
	$(VENV)/bin/mypy --strict namex_ref

check: lint test

# Regenerate the committed reports in results/ (README there). Every command writes under runs/
# by default; only these explicit `--out results` overwrite the committed files. Long: tens of
# minutes on 2 cores.
.PHONY: results
results: $(STAMP)
	$(VENV)/bin/namex bench all --out results --threads 1
	$(VENV)/bin/namex mtl --out results

# Reproduction II (issue 29; studies/study2, results/reproduction2.md): training length,
# fine-tuning from one pre-trained SMoE and the merge's knobs, two runs at a time under nice.
# Resumable: finished runs are skipped, interrupted ones resume; about 10 core-hours on 2 idle
# cores (studies/study2/plan.py orders it so that a partial run answers the most questions).
# The finished runs' small files are copied into results/study2-runs (committed); study2-report
# rewrites the report, its plots and the summaries from that copy, so it works on a clone.
.PHONY: study2 study2-report
study2: $(STAMP)
	nice -n 19 $(PY) -m studies.study2 run --jobs 2
	$(PY) -m studies.study2 archive
	$(MAKE) study2-report

study2-report: $(STAMP)
	$(PY) -m studies.study2 report --root results/study2-runs

# Mutation testing of the core (tools/mutation.py; long: tens of minutes on 2 cores, not in CI).
# Writes results/mutation.md and results/mutation.json.
mutation: $(STAMP)
	$(PY) tools/mutation.py --jobs 2

# The documentation site (docs/conf.py): the README, docs/math.md, the four notebooks executed
# with their figures, the results and the API reference of every public name, built offline
# with warnings as errors into docs/_build/html (open docs/_build/html/index.html).
.PHONY: docs docs-check

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,docs,hf,eval,tensorboard]' --config-settings editable_mode=strict
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html -c docs . docs/_build/html

# The site as a reader sees it: four pages in headless chromium (installed with apt-get when
# missing), screenshots in docs/_build/screenshots, rendered text and decoded figures checked.
docs-check: docs
	[ -x /usr/bin/chromium ] || (apt-get update -qq && apt-get install -y -qq chromium)
	$(PY) tools/docs_check.py

# Open the notebooks in JupyterLab (installs the `notebooks` extra; jupytext opens each .py as a
# notebook). The strict editable mode is kept so that mypy can still follow namex_ref.
.PHONY: notebooks
notebooks: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,notebooks]' --config-settings editable_mode=strict
	$(VENV)/bin/jupyter lab notebooks/

# The GPU check (tools/gpu_check.sh; docs/gpu.md): the CUDA tests, the capture of every method,
# `namex bench` on CUDA, 200 medium-preset steps in bf16 and a Hugging Face fine-tune, all under
# runs/gpu-check (GPU_CHECK_OUT). Uses .venv when present, else python3 (the GPU machine's).
gpu-check:
	bash tools/gpu_check.sh
