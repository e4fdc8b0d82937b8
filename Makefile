# Every user-facing command. Each target bootstraps .venv from requirements.txt itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

CONFIG ?= pipelines/configs/default.yaml
ARGS   ?=
HOST   ?= 127.0.0.1
PORT   ?= 8501
GRPC_PORT ?= 8500
UI_PORT ?= 5000
MLFLOW_PORT ?= 5001
EXPORTS ?= exports

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONPATH := $(CURDIR)

.DEFAULT_GOAL := help
.PHONY: help venv train test doctor ui preview tune evaluate compare serve serve-mlflow convert bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-nodeps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	@touch $(STAMP)

venv: $(STAMP) ## create .venv from the pinned requirements.txt

# PyTorch (CPU) for the layer tests' third pass: optional (see requirements-torch.txt).
TORCH_STAMP := $(VENV)/.installed-torch
$(TORCH_STAMP): requirements-torch.txt $(STAMP)
	@if $(PY) -m pip install --quiet -r requirements-torch.txt; then touch $@; else \
	  echo "note: PyTorch (requirements-torch.txt) did not install here: the layer tests run on TensorFlow and JAX only"; fi

train: $(STAMP) ## train CONFIG (default: pipelines/configs/default.yaml); ARGS="key=value ..." overrides
	$(PY) -m pipelines.train --config $(CONFIG) $(ARGS)

# XLA in every pass of `make test` (JAX; the JAX training processes that the TensorFlow pass launches;
# TensorFlow's jit_compile=True checks): the tests' programs are small, run in microseconds and compile in
# tens of milliseconds each, hundreds per test file, so compile time is what counts. Optimisation level 0
# compiles them several times faster; XLA CPU's older loop emitters instead of its fusion emitters a
# quarter to a third faster again (an eager op's compile 38-42 ms against 56-68 ms; the JAX pass 3:23
# against 4:38, one after the other on one machine; test_distributed.py's killed-peer test, whose JAX
# processes had neither flag before, 88 s against 104 s). Only the tests use these flags: `make train`
# compiles a few large programs, once.
TEST_XLA_FLAGS = --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false
# The JAX pass of `make test`: tests/layers and tests/models, or only those of the test paths in ARGS
# that lie there (ARGS naming other paths only: no JAX pass). With parallel workers each runs XLA's CPU
# ops on one thread (measured 4:35 against 5:14-7:48 with its own pool).
JAX_TESTS = $(if $(filter tests/%,$(ARGS)),$(filter tests/layers% tests/models%,$(ARGS)),tests/layers tests/models)
# TensorFlow runs two kernel sets: its own (Eigen on CPUs; the GPU's kernels have the same limits, such as
# depthwise convolutions at equal strides only) and oneDNN's, which TensorFlow turns on by default only on
# CPUs with AVX-512 VNNI/AMX. The suite runs with oneDNN off; tests/layers and tests/models (or the paths
# in ARGS that lie there) run again with it on, so both sets are covered on any machine.
ONEDNN_TESTS = $(JAX_TESTS)
# The PyTorch pass: tests/layers (or the test paths in ARGS that lie there), when torch is installed.
TORCH_TESTS = $(if $(filter tests/%,$(ARGS)),$(filter tests/layers%,$(ARGS)),tests/layers)

# Test files run in parallel (pytest-xdist, one file per worker at a time): one worker per core, at most 4
# (each holds a TensorFlow runtime). TEST_WORKERS=0 runs them in this process. Files are handed out in
# collection order (tests/conftest.py puts those with end-to-end tests first), not xdist's default of
# the files with most tests first, which left the long distributed-training file to run alone at the end.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
XDIST = $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder,)

test: $(STAMP) $(TORCH_STAMP) ## the suite on TensorFlow (oneDNN off), tests/layers+models with oneDNN on and on JAX, tests/layers on PyTorch
	KERAS_BACKEND=tensorflow TF_ENABLE_ONEDNN_OPTS=0 XLA_FLAGS="$(TEST_XLA_FLAGS) $$XLA_FLAGS" $(PY) -m pytest $(XDIST) $(ARGS)
	@if [ -n "$(strip $(ONEDNN_TESTS))" ]; then \
	  echo "KERAS_BACKEND=tensorflow TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m pytest $(strip $(XDIST) $(ONEDNN_TESTS) $(filter-out tests/%,$(ARGS)))"; \
	  KERAS_BACKEND=tensorflow TF_ENABLE_ONEDNN_OPTS=1 XLA_FLAGS="$(TEST_XLA_FLAGS) $$XLA_FLAGS" \
	    $(PY) -m pytest $(XDIST) $(ONEDNN_TESTS) $(filter-out tests/%,$(ARGS)); rc=$$?; \
	  [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc; fi
	@if [ -n "$(strip $(JAX_TESTS))" ]; then \
	  echo "KERAS_BACKEND=jax $(PY) -m pytest $(strip $(XDIST) $(JAX_TESTS) $(filter-out tests/%,$(ARGS)))"; \
	  KERAS_BACKEND=jax XLA_FLAGS="$(TEST_XLA_FLAGS) $(if $(XDIST),--xla_cpu_multi_thread_eigen=false) $$XLA_FLAGS" \
	    $(PY) -m pytest $(XDIST) $(JAX_TESTS) $(filter-out tests/%,$(ARGS)); rc=$$?; \
	  [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc; fi  # 5: ARGS selected no test there
	@if [ -n "$(strip $(TORCH_TESTS))" ] && $(PY) -c "import torch" 2>/dev/null; then \
	  echo "KERAS_BACKEND=torch $(PY) -m pytest $(strip $(XDIST) $(TORCH_TESTS) $(filter-out tests/%,$(ARGS)))"; \
	  KERAS_BACKEND=torch $(PY) -m pytest $(XDIST) $(TORCH_TESTS) $(filter-out tests/%,$(ARGS)); rc=$$?; \
	  [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc; fi

doctor: $(STAMP) ## self-check of this machine: versions, devices, oneDNN/TF32/XLA, every layer family vs NumPy
	$(PY) -m pipelines.doctor $(ARGS)

ui: $(STAMP) ## MLflow UI on the project's tracking store, bound to 127.0.0.1 (one worker; Ctrl-C stops it)
	exec $(PY) -m pipelines.ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} --port $(UI_PORT) $(ARGS)

preview: $(STAMP) ## PNG grid of augmented samples for CONFIG
	$(PY) -m pipelines.preview --config $(CONFIG) $(ARGS)

tune: $(STAMP) ## KerasTuner search for CONFIG, each trial tracked in MLflow
	$(PY) -m pipelines.tune --config $(CONFIG) $(ARGS)

evaluate: $(STAMP) ## invariance evaluation of RUN=<MLflow run id or export path>
	$(PY) -m pipelines.evaluate --run "$(RUN)" $(ARGS)

compare: $(STAMP) ## side-by-side table of RUNS=<id>,<id>,... (run ids or export paths)
	$(PY) -m pipelines.compare --runs "$(RUNS)" $(ARGS)

serve: $(STAMP) ## TF Serving REST API for every model under EXPORTS on HOST:PORT, gRPC on GRPC_PORT (-1: off)
	$(PY) -m pipelines.serve --exports $(EXPORTS) --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT) $(ARGS)

serve-mlflow: $(STAMP) ## `mlflow models serve` of MODEL=models:/<name>/<version> on HOST:MLFLOW_PORT (5001)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
	  $(PY) -m mlflow models serve -m "$(MODEL)" --env-manager local -h $(HOST) -p $(MLFLOW_PORT)

convert: $(STAMP) ## TFRecord shards of SRC=<source> in DEST=<dir> (resumable; read: tfrecord:<dir>)
	$(PY) -m pipelines.convert --src "$(SRC)" --dest "$(DEST)" $(ARGS)

bench: $(STAMP) ## every benchmark in bench/ (needs ../shared/data for the MNIST ones)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## remove generated runs, exports, caches and the tracking store (keeps .venv)
	rm -rf runs exports tuning reports .cache mlflow.db mlartifacts mlruns .pytest_cache
