# One vocabulary for people and CI. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export UV_LINK_MODE ?= copy

# $(call stage,NAME,COMMAND): run one check; when it fails, say which one, so that the end of a
# long CI log names the stage that stopped the run. COMMAND may not contain a comma.
define stage
	@echo "==> $(1)"
	@$(2) || { echo "make: stage '$(1)' failed" >&2; exit 1; }
endef

# A literal comma for $(or ...) and $(if ...) arguments.
, := ,

# The stages of `make test` run in the order listed and stop at the first failure, even under -j.
.NOTPARALLEL:

.PHONY: help install run image bench-image test test-unit lint typecheck seed status mlflow-ui server deploy worker clean bench bench-serving bench-forecast bench-metrics bench-scale bench-scale-50x bench-all bench-runners

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: ## Install everything from the lock file into .venv (installs uv first if needed)
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv \
	  || python3 -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen

run: install ## Seed the source database if empty, then run the weekly retrain end to end
	$(UV) run mlops seed --if-empty
	$(UV) run mlops retrain --reason "make run"

image: ## Build the serving and flow-runner images with buildah (docker/build-images.sh; a Debian base via debootstrap)
	docker/build-images.sh

test: install lint typecheck ## Lint, type-check, then run the whole test suite (unit, flows, integration)
	$(call stage,pytest,$(UV) run pytest)

test-unit: install ## Unit tests only
	$(UV) run pytest tests/unit -q

lint: install ## ruff: lint rules, then formatting
	$(call stage,ruff check,$(UV) run ruff check .)
	$(call stage,ruff format,$(UV) run ruff format --check .)

typecheck: install ## mypy over every product package ([tool.mypy] files)
	$(call stage,mypy,$(UV) run mypy)

seed: install ## Append one more week to the source database
	$(UV) run mlops seed

status: install ## What is published and registered, per model
	$(UV) run mlops status

mlflow-ui: install ## MLflow UI on the embedded store (http://127.0.0.1:5000)
	$(UV) run mlflow ui --backend-store-uri sqlite:///$${MLOPS_HOME:-.mlops}/mlflow.db --host 127.0.0.1 --port 5000

server: install ## Prefect server and UI on loopback (http://127.0.0.1:4200), state under MLOPS_HOME
	PREFECT_HOME=$${MLOPS_HOME:-$(CURDIR)/.mlops}/prefect-server PREFECT_SERVER_ANALYTICS_ENABLED=false \
	  $(UV) run prefect server start --host 127.0.0.1 --port 4200

deploy: install ## Register the deployments, schedules and writers' limit on the server at PREFECT_API_URL
	@test -n "$$PREFECT_API_URL" || { echo "set PREFECT_API_URL (for example http://127.0.0.1:4200/api)"; exit 2; }
	$(UV) run mlops seed --if-empty
	$(UV) run python deployments/deploy.py

worker: install ## A worker on the process pool (needs PREFECT_API_URL; runs inherit this shell's MLOPS_*)
	@test -n "$$PREFECT_API_URL" || { echo "set PREFECT_API_URL (for example http://127.0.0.1:4200/api)"; exit 2; }
	$(UV) run prefect worker start --pool intelli-rate-process

bench: bench-serving bench-scale ## The serving and scale benchmarks (1x, 10x); figures go to BENCHMARKS.md (~25 min)

bench-all: bench bench-image bench-scale-50x bench-forecast bench-runners ## Every benchmark, the 50x run too (~2.5 h)

# SIZES=1x,10x (default) or others; FLOW_MODELS=a,b to run fewer families as flow and bare.
bench-scale: install ## The retrain against the bare script at 1x and 10x the data (~20 min idle)
	PYTHONPATH=$(CURDIR) $(UV) run python bench/bench_scale.py --sizes $(or $(SIZES),1x$(,)10x) \
	  $(if $(FLOW_MODELS),--flow-models $(FLOW_MODELS))

bench-scale-50x: install ## The same at 50x (15M rows; export memory against 10x) (~75 min, 14 GB)
	PYTHONPATH=$(CURDIR) $(UV) run python bench/bench_scale.py --sizes 10x$(,)50x --export-only 10x

bench-runners: install ## make run's retrain under threads, process pool and Dask, alternating (~10 min)
	PYTHONPATH=$(CURDIR) $(UV) run python bench/bench_scale.py --runners threads,process,dask --rounds $(or $(ROUNDS),3)

# BASELINE=<git revision> also measures that revision (a temporary worktree) for ratios, with
# BASELINE_PYTHON=<a venv's python synced from that revision's lock> for its own libraries.
bench-serving: install ## wrk against the local endpoint, per family, direct and via the router (~3 min)
	PYTHONPATH=$(CURDIR) $(UV) run python bench/bench_serving.py \
	  $(if $(BASELINE),--baseline $(BASELINE)) $(if $(BASELINE_PYTHON),--baseline-python $(BASELINE_PYTHON))

bench-image: install ## The images: size, cold and cached build, start to first /ping, wrk against the local process (~10 min)
	PYTHONPATH=$(CURDIR) $(UV) run python bench/bench_image.py $(if $(ROUNDS),--rounds $(ROUNDS))

bench-forecast: install ## The forecaster: one Prophet fit, training cost on 100 services, accuracy on the real series (~15 min)
	$(UV) run python bench/prophet_fit.py
	$(UV) run python bench/forecast_training_cost.py --services 100 --rounds 2
	$(UV) run python bench/forecast_real_series.py

bench-metrics: install ## Serving throughput with Prometheus metrics on vs off, interleaved (~2 min)
	PYTHONPATH=$(CURDIR) $(UV) run python bench/bench_serving.py --metrics-cost 4 --seconds 5 --rows 1,100

clean: ## Delete the embedded state (.mlops or $MLOPS_HOME)
	rm -rf $${MLOPS_HOME:-.mlops}
