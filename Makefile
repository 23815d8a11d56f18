# FaceAge. The two commands a newcomer needs:
#   make lab    set up .venv, check for data.zip, open the walkthrough in JupyterLab
#   make test   set up .venv and run every check: ruff, unit tests, strict nbval on the notebooks, browser tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))

.PHONY: setup lab test data-check execute strip html student bench clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

data-check: setup
	@$(PY) -c "import faceage_helpers as fh; print('data:', fh.find_data())" || \
	  echo "The notebooks need data.zip: see 'Getting data.zip' in README.md."

lab: setup data-check
	$(VENV)/bin/jupyter lab notebooks/01_explore_the_faces.ipynb

# One BLAS thread: the notebooks' kernels, JupyterLab, Voila and Chromium share 2 cores, and
# OpenBLAS threads that spin for a busy core slow training tenfold (results are the same either way).
test: setup
	$(VENV)/bin/ruff check .
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest

# Re-run every notebook top to bottom in place, then strip its images (faces are never committed).
execute: setup
	for nb in $(NOTEBOOKS); do \
	  $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 \
	    --ExecutePreprocessor.store_widget_state=False $$nb || exit 1; \
	done
	$(MAKE) strip

strip: setup
	$(PY) tools/strip_images.py $(NOTEBOOKS)

# Rendered notebooks (with their figures) to read as a student would: build/html/
html: setup
	$(VENV)/bin/jupyter nbconvert --to html --execute --output-dir build/html $(NOTEBOOKS)

# Exercise notebooks for students (solution blocks replaced by stubs), generated, never committed.
student: setup
	$(PY) tools/make_student.py notebooks build/student

bench: setup
	$(PY) -m pip install --quiet torch==2.13.0 threadpoolctl==3.8.0
	$(PY) benchmarks/bench_epoch.py

clean:
	rm -rf build .pytest_cache weight_images model.npz
