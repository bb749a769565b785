# dai-mlflow: `make help` lists the targets. The two set-up commands are `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -o errexit -o nounset -o pipefail -c
.DEFAULT_GOAL := help

VENVS      ?= venvs
LAUNCHER   := $(VENVS)/launcher/bin/python
MLPROJECT  := $(VENVS)/mlproject/bin/python
MODEL_URI  ?=
PYTEST_ARGS ?=
# Two workers, each taking whole test files (their fixtures are file-locked caches); 0 = serial.
PYTEST_WORKERS ?= 2
LINE       ?=

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: venvs
venvs: ## build venvs/launcher and venvs/mlproject (reused while their spec is unchanged)
	@start=$$EPOCHREALTIME; \
	launchers/build_launcher_venv.sh; \
	launchers/build_mlproject_venv.sh; \
	awk -v s="$$start" -v e="$$EPOCHREALTIME" 'BEGIN {printf "make venvs: done in %.1fs\n", e - s}'

.PHONY: launcher-venv
launcher-venv: ## build venvs/launcher only
	@launchers/build_launcher_venv.sh

.PHONY: spark-venv
spark-venv: launcher-venv ## build venvs/spark_inference for MODEL_URI=<uri> (the model's env + pyspark)
	@test -n "$(MODEL_URI)" || { echo "Error: pass MODEL_URI=<models:/name@alias | runs:/... | path>" >&2; exit 2; }
	@launchers/build_spark_venv.sh "$(MODEL_URI)"

.PHONY: use-line
use-line: ## switch python_env.yaml to a DAI line: LINE=1.10 (Python 3.8) or LINE=2 (Python 3.11)
	@test -f "envs/python_env.dai-$(LINE).yaml" || { echo "Error: LINE must be 1.10 or 2 (envs/python_env.dai-<LINE>.yaml)" >&2; exit 2; }
	@cp "envs/python_env.dai-$(LINE).yaml" python_env.yaml && echo "python_env.yaml now follows DAI $(LINE); run \`make venvs\`"

.PHONY: demo
demo: venvs ## run the main job end to end on the sample DAI-shaped pipeline
	@$(LAUNCHER) -m dai_mlflow.demo

.PHONY: test
test: venvs ## run every test (unit, venv, mlflow run, spark, serve); fails if none ran
	@$(LAUNCHER) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: launcher-venv ## run only the tests that build no venv and start no Spark or server
	@$(LAUNCHER) -m pytest -m "not venv and not mlflow_run and not spark and not serve" $(PYTEST_ARGS)

# Lifecycle entry points (docs/lifecycle.md); each is `mlflow run . -e <name>` from venvs/launcher.
MODEL_NAME    ?=
HOLDOUT       ?=
INPUT         ?=
TABLE         ?= data/output/scored
MONITOR_TABLE ?= data/output/monitoring
DATE          ?=
OVERWRITE     ?= false
MLFLOW_RUN     = source $(VENVS)/launcher/bin/activate && mlflow run .

.PHONY: validate
validate: launcher-venv ## promote MODEL_NAME@challenger to champion if better on HOLDOUT=<labelled csv|parquet>
	@test -n "$(MODEL_NAME)" && test -n "$(HOLDOUT)" || { echo "Error: pass MODEL_NAME=<registered model> HOLDOUT=<labelled csv|parquet>" >&2; exit 2; }
	@$(MLFLOW_RUN) -e validate -P model_name="$(MODEL_NAME)" -P holdout="$(HOLDOUT)"

.PHONY: batch
batch: launcher-venv ## score INPUT with MODEL_NAME@champion into TABLE's DATE partition (default today)
	@test -n "$(MODEL_NAME)" && test -n "$(INPUT)" || { echo "Error: pass MODEL_NAME=<registered model> INPUT=<csv|parquet> [TABLE=dir] [DATE=YYYY-MM-DD] [OVERWRITE=true]" >&2; exit 2; }
	@$(MLFLOW_RUN) -e batch -P model_name="$(MODEL_NAME)" -P input="$(INPUT)" -P table="$(TABLE)" -P date="$(DATE)" -P overwrite="$(OVERWRITE)"

TARGET        ?= local
DEPLOY_PORT   ?= 5050
RPC           ?= false

.PHONY: deploy
deploy: launcher-venv ## deploy MODEL_NAME@champion: TARGET=local (stable port DEPLOY_PORT, RPC=true|false) or databricks
	@test -n "$(MODEL_NAME)" || { echo "Error: pass MODEL_NAME=<registered model> [TARGET=local|databricks] [DEPLOY_PORT=5050] [RPC=true]" >&2; exit 2; }
	@$(MLFLOW_RUN) -e deploy -P model_name="$(MODEL_NAME)" -P target="$(TARGET)" -P port="$(DEPLOY_PORT)" -P rpc="$(RPC)"

.PHONY: undeploy
undeploy: launcher-venv ## stop MODEL_NAME's local endpoint (front proxy and servers)
	@test -n "$(MODEL_NAME)" || { echo "Error: pass MODEL_NAME=<registered model>" >&2; exit 2; }
	@$(LAUNCHER) -m dai_mlflow.lifecycle undeploy --model-name "$(MODEL_NAME)"

.PHONY: monitor
monitor: launcher-venv ## drift of TABLE's DATE partition vs the training baseline -> MONITOR_TABLE
	@test -n "$(MODEL_NAME)" || { echo "Error: pass MODEL_NAME=<registered model> [TABLE=dir] [MONITOR_TABLE=dir] [DATE=YYYY-MM-DD]" >&2; exit 2; }
	@$(MLFLOW_RUN) -e monitor -P model_name="$(MODEL_NAME)" -P table="$(TABLE)" -P output="$(MONITOR_TABLE)" -P date="$(DATE)" -P overwrite="$(OVERWRITE)"

# Serving (docs/serving.md): both restore the model's env offline and score there.
PORT     ?= 5000
RPC_PORT ?= 9090

.PHONY: serve
serve: launcher-venv ## serve MODEL_URI=<uri> with MLflow's REST API (/invocations) on PORT (default 5000)
	@test -n "$(MODEL_URI)" || { echo "Error: pass MODEL_URI=<models:/name@alias | runs:/... | path>" >&2; exit 2; }
	@$(LAUNCHER) -m dai_mlflow.serve -m "$(MODEL_URI)" -p "$(PORT)"

.PHONY: rpc
rpc: launcher-venv ## serve MODEL_URI=<uri> with DAI's JSON-RPC protocol (POST /rpc) on RPC_PORT (default 9090)
	@test -n "$(MODEL_URI)" || { echo "Error: pass MODEL_URI=<models:/name@alias | runs:/... | path>" >&2; exit 2; }
	@$(LAUNCHER) -m dai_mlflow.serve.rpc --model-uri "$(MODEL_URI)" --port "$(RPC_PORT)"

# Serving image (docs/image.md): built with `docker build --network=none`; BASE_IMAGE is never pulled.
TAG        ?=
BASE_IMAGE ?=
IMAGE_ARGS ?=

.PHONY: image
image: launcher-venv ## build a serving image of MODEL_URI=<uri> as TAG=<name:tag> [BASE_IMAGE=...] [IMAGE_ARGS=--bake-model]
	@test -n "$(MODEL_URI)" && test -n "$(TAG)" || { echo "Error: pass MODEL_URI=<models:/name@alias | runs:/... | path> TAG=<name:tag> [BASE_IMAGE=image] [IMAGE_ARGS=...]" >&2; exit 2; }
	@$(LAUNCHER) -m dai_mlflow.image build --model-uri "$(MODEL_URI)" --tag "$(TAG)" $(if $(BASE_IMAGE),--base-image "$(BASE_IMAGE)") $(IMAGE_ARGS)

# Benchmarks print figures; none is a test. LINE picks the stand-in's DAI line.
.PHONY: bench-spark
bench-spark: launcher-venv ## rows/s: raw scorer vs spark_udf local and uv (LINE=1.10|2, default 2)
	@$(LAUNCHER) benchmarks/spark_throughput.py --dai-version "$(or $(LINE),2)"

.PHONY: bench-switch
bench-switch: launcher-venv ## seconds from model URI to first prediction: cold, new model of a seen DAI line, same model [SWITCH_ARGS="--runtime-mb 800"]
	@$(LAUNCHER) benchmarks/model_switch.py $(SWITCH_ARGS)

.PHONY: bench-run
bench-run: launcher-venv ## seconds and peak memory of warm `mlflow run` (light and 1.2 GB pipelines) vs MLflow's floor
	@$(LAUNCHER) benchmarks/mlflow_run.py

.PHONY: bench-serve
bench-serve: launcher-venv ## the serving targets: the model's server vs plain mlflow models serve, both DAI lines (LINE=1.10|2 for one)
	@$(LAUNCHER) benchmarks/serve_targets.py $(if $(LINE),--lines "$(LINE)")

.PHONY: bench-deploy
bench-deploy: launcher-venv ## serve_load.py against a local endpoint while `mlflow run -e deploy` swaps the champion
	@$(LAUNCHER) benchmarks/deploy_switch.py

.PHONY: bench-image
bench-image: launcher-venv ## serving images per DAI line: size, cold and cached build, start to first answer (mounted, baked, 2nd model); LINE=1.10|2 for one
	@$(LAUNCHER) benchmarks/image_build.py $(if $(LINE),--lines "$(LINE)")

.PHONY: report-images
report-images: launcher-venv ## docs/img/{validation,drift}_report.png: real reports of the stand-in models, shot by headless Chromium
	@$(LAUNCHER) docs/report_images.py

.PHONY: lint
lint: launcher-venv ## ruff check + format check, mypy on dai_mlflow/, no import cycle in it
	@$(VENVS)/launcher/bin/ruff check . && $(VENVS)/launcher/bin/ruff format --check .
	@$(LAUNCHER) -m mypy
	@$(LAUNCHER) tools/import_cycles.py dai_mlflow && echo "no import cycle in dai_mlflow/"

.PHONY: clean
clean: ## remove venvs, generated data, local MLflow stores and caches
	rm -rf $(VENVS)/launcher $(VENVS)/mlproject $(VENVS)/spark_inference $(VENVS)/pythons \
	  data/generated data/output mlruns mlartifacts mlflow.db tests/.cache .pytest_cache
