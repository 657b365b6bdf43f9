# bcd_lightning — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.DEFAULT_GOAL := help

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python ## Create .venv and install the package with dev tools (editable)
	$(BIN)/pip install -e ".[dev]"

train: ## The main job: teacher -> baseline student -> distilled students -> table (embedded data, CPU)
	$(BIN)/bcd-pipeline $(ARGS)

train-teacher: ## Train the embedded teacher and export its checkpoint (ARGS for Hydra overrides)
	$(BIN)/bcd-train experiment=embedded/teacher $(ARGS)

distill: ## Distill the embedded student with BCD from the exported teacher (ARGS for overrides)
	$(BIN)/bcd-train experiment=embedded/bcd $(ARGS)

train-detection: ## Detection: teacher -> baseline -> FitNet/CWD/PKD -> BCD -> one table (embedded data, CPU)
	$(BIN)/python -m bcd_lightning.detection.pipeline $(ARGS)
.PHONY: train-detection

train-instance: ## Instance seg. (Mask R-CNN): teacher -> baseline -> mask KD, PKD -> BCD -> one table (embedded, CPU; 13.4 min measured)
	$(BIN)/python -m bcd_lightning.detection.pipeline --task instance --jobs 2 $(ARGS)
.PHONY: train-instance

results: ## Regenerate docs/results.{md,csv,png}: the method comparison (same as make compare)
	$(MAKE) compare ARGS="$(ARGS)"

compare: ## Every method x 5 seeds, paired, on the embedded benchmark and its variant -> docs/results.{md,csv,png} (~60 min measured on 2 shared cores)
	$(BIN)/python scripts/compare.py --n-jobs 2 threads=1 $(ARGS)

tune: ## Optuna search of BCD's loss weights and taus on the val split (ARGS="hydra.sweeper.n_trials=40")
	$(BIN)/bcd-train -m experiment=embedded/bcd hparams_search=bcd_optuna $(ARGS)

sweep: ## Example sweep: KD vs BCD x 2 seeds, 2 local jobs in parallel, then a mean +- std table
	d=logs/sweep_example/multiruns/$$(date +%Y-%m-%d_%H-%M-%S_%N); \
	$(BIN)/bcd-train -m experiment=embedded/bcd distill=kd,bcd seed=0,1 task_name=sweep_example \
		hydra/launcher=parallel hydra.launcher.n_jobs=2 threads=1 hydra.sweep.dir=$$d $(ARGS) && \
	$(BIN)/python scripts/aggregate_runs.py $$d

bench: ## Loss and step benchmarks (ARGS: bench_losses.py, STEP_ARGS: bench_step.py, e.g. --write-doc)
	$(BIN)/python scripts/bench_losses.py $(ARGS)
	$(BIN)/python scripts/bench_step.py $(STEP_ARGS)

eval: ## Evaluate a checkpoint: make eval CKPT=logs/.../checkpoints/best.ckpt
	$(BIN)/bcd-eval ckpt_path=$(CKPT) $(ARGS)

export: ## Export a student for deployment (TorchScript + ONNX): make export CKPT=logs/.../checkpoints/best.ckpt
	$(BIN)/bcd-export $(CKPT) $(ARGS)

test: ## Fast test suite (< 15 min on 2 cores)
	WANDB_MODE=disabled HF_HUB_OFFLINE=1 $(BIN)/pytest -q $(ARGS)

test-full: ## Every test, including the slow ones
	WANDB_MODE=disabled HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m "" $(ARGS)

lint: ## ruff check + format check + pyright (types of src/)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/pyright --pythonpath $(BIN)/python

format: ## ruff fix + format
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

clean: ## Remove caches and build artefacts (keeps logs and .venv)
	rm -rf build dist *.egg-info src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

clean-logs: ## Remove all run directories under logs/ (including the exported teacher)
	rm -rf logs/*

# --- GPU check (scripts/gpu_check.py): wheels prepared on a networked machine, installed offline on the GPU one.
WHEELS ?= gpu-wheels
GPU_PY ?= python3
# pip matches --platform tags exactly: list the older manylinux tags a glibc-2.28 machine also runs.
# The CUDA machine's Python version (binary wheels are built per version).
GPU_PYVER ?= 3.12
GPU_PLATFORM := --only-binary=:all: --python-version $(GPU_PYVER) --platform manylinux_2_28_x86_64 \
	$(addprefix --platform ,manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)
# What a CUDA machine that has torch, torchvision, lightning, torchmetrics and timm may lack: the project's
# other runtime dependencies (pip resolves theirs), smp's non-torch ones, and the project itself.
GPU_WHEEL_PKGS := "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3" "wandb>=0.17" "rich>=13" "matplotlib>=3.7" \
	huggingface-hub safetensors pillow numpy tqdm

gpu-wheels: ## Wheels for an offline CUDA machine (CPython GPU_PYVER=3.12, x86_64) into WHEELS=gpu-wheels
	mkdir -p $(WHEELS)
	@# antlr4-python3-runtime (hydra's parser) is published only as an sdist: build it (pure Python) here.
	$(BIN)/pip wheel --no-deps -w $(WHEELS) . "antlr4-python3-runtime==4.9.3"
	$(BIN)/pip download $(GPU_PLATFORM) --find-links $(WHEELS) -d $(WHEELS) $(GPU_WHEEL_PKGS)
	@# --no-deps: its own dependencies are torch, torchvision, timm (on the machine) and the ones above.
	$(BIN)/pip download $(GPU_PLATFORM) --no-deps -d $(WHEELS) "segmentation-models-pytorch>=0.4"
	@du -sh $(WHEELS)

gpu-check: ## On the CUDA machine, offline: install from WHEELS, run the <= 6 min GPU check into OUT=<folder>
	@test -n "$(OUT)" || { echo "usage: make gpu-check OUT=<folder> [WHEELS=gpu-wheels] [GPU_PY=python3]"; exit 2; }
	$(GPU_PY) -m pip install --no-index --find-links $(WHEELS) bcd_lightning
	@# The project wheel again, so a rebuilt wheel of the same version replaces an installed one.
	$(GPU_PY) -m pip install --no-index --find-links $(WHEELS) --force-reinstall --no-deps bcd_lightning
	$(GPU_PY) scripts/gpu_check.py --out $(OUT) $(ARGS)

.PHONY: export help install train train-teacher distill results compare tune sweep bench eval test test-full lint format clean clean-logs gpu-wheels gpu-check
