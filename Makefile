# FaceAge. The two commands a newcomer needs:
#   make lab    set up .venv, check for data.zip, open the walkthrough in JupyterLab
#   make test   set up .venv and run every check: ruff, unit tests, strict nbval on the notebooks, browser tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))

.PHONY: setup lab test data-check execute strip html student reference grading-check bench clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

data-check: setup
	@$(PY) -c "import faceage_helpers as fh; print('data:', fh.find_data())" || \
	  echo "The notebooks need data.zip: see 'Getting data.zip' in README.md."

# JupyterLab rooted at the repository (its file browser shows faceage_helpers.py, README.md and
# TEACHING.md) with notebook 01 open. Jupyter refuses to run as root without --allow-root, and
# containers and many cloud machines run as root: then it is added, and said so.
# Kernels left idle for 30 minutes are shut down (a busy one never is), even with their tab open: a kernel
# holds its notebook's arrays until it stops, and students open the next notebook without closing the last.
AS_ROOT := $(filter 0,$(shell id -u))
CULL := --MappingKernelManager.cull_idle_timeout=1800 --MappingKernelManager.cull_interval=120 \
	--MappingKernelManager.cull_connected=True
lab: setup data-check
	@$(if $(AS_ROOT),echo "Running as root (as in many containers): starting JupyterLab with --allow-root.")
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(CULL) $(if $(AS_ROOT),--allow-root) notebooks/01_explore_the_faces.ipynb

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
	$(PY) tools/make_student.py notebooks build/student --nbgrader build/nbgrader

# The teacher's reference solutions (build/reference/faceage_reference.py): release only after the deadline.
reference: setup
	$(PY) tools/make_student.py notebooks --reference build/reference/faceage_reference.py

# Autograde the nbgrader course in build/grading-check/, running TEACHING.md's grading commands as written:
# solutions get every point, blank exercises none, mistakes and cheats lose only their own exercises' points,
# a runaway cell is stopped, feedback shows no hidden test; ends with the seconds per submission (<= 60).
# nbgrader is the teacher's tool: installed from requirements-teacher.txt into build/teacher-site, not .venv.
TEACHER_SITE := $(CURDIR)/build/teacher-site
TEACHER_STAMP := $(TEACHER_SITE)/.installed-$(shell cksum < requirements-teacher.txt | cut -d' ' -f1)
$(TEACHER_STAMP): requirements-teacher.txt | setup
	rm -rf $(TEACHER_SITE)
	$(PY) -m pip install --quiet --no-deps --target $(TEACHER_SITE) $$(grep -v '^ *#\|^-r' requirements-teacher.txt)
	touch $@

grading-check: setup $(TEACHER_STAMP)
	OPENBLAS_NUM_THREADS=1 MPLBACKEND=Agg PYTHONPATH=$(TEACHER_SITE) $(PY) tools/grading_check.py

# The training loop against PyTorch and JAX (benchmarks/README.md). Those peers are the benchmark's
# alone: installed from benchmarks/requirements-bench.txt into build/bench-site, not .venv.
# make bench BENCH_ARGS="--quick" for a short run; BENCH_ARGS="--help" lists the options.
BENCH_SITE := $(CURDIR)/build/bench-site
BENCH_STAMP := $(BENCH_SITE)/.installed-$(shell cksum < benchmarks/requirements-bench.txt | cut -d' ' -f1)
$(BENCH_STAMP): benchmarks/requirements-bench.txt | setup
	rm -rf $(BENCH_SITE)
	$(PY) -m pip install --quiet --no-deps --target $(BENCH_SITE) -r benchmarks/requirements-bench.txt
	touch $@

bench: setup $(BENCH_STAMP)
	PYTHONPATH=$(BENCH_SITE) $(PY) benchmarks/bench_epoch.py $(BENCH_ARGS)

# The course walked as a student walks it: every notebook in its own kernel, all left running; each
# kernel's peak and resident memory, the walk's peak and the command line's (needs data.zip; minutes).
.PHONY: walk
walk: setup
	OPENBLAS_NUM_THREADS=1 $(PY) benchmarks/course_walk.py $(WALK_ARGS)

clean:
	rm -rf build .pytest_cache weight_images model.npz
