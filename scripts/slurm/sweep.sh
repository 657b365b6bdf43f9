#!/usr/bin/env bash
# A method x seed sweep on a SLURM cluster through Hydra's submitit launcher (run from the login node).
# Edit the cluster keys below; every job gets its own run dir under logs/$TASK/multiruns/<time>/<job>.
set -euo pipefail

PARTITION=${PARTITION:-gpu}
GPUS=${GPUS:-1}            # per job (DDP when > 1: trainer=ddp, one task per GPU)
TIME_MIN=${TIME_MIN:-240}
MEM_GB=${MEM_GB:-64}
TASK=${TASK:-compare_slurm}
# Default: every preset of the distill group (conf/distill/*.yaml and BCD_CONFIG_PATH), so a new method needs no edit.
PY="$(dirname "$(command -v bcd-train)")/python"   # the interpreter bcd-train runs with
METHODS=${METHODS:-$("$PY" -c "from bcd_lightning.utils.presets import group_options; print(','.join(group_options('distill')))")}
SEEDS=${SEEDS:-0,1,2}

if [ "$GPUS" -gt 1 ]; then TRAINER="trainer=ddp trainer.devices=$GPUS"; else TRAINER="trainer=gpu"; fi

# shellcheck disable=SC2086  # TRAINER holds several overrides on purpose
bcd-train -m experiment=embedded/bcd "distill=$METHODS" "seed=$SEEDS" task_name="$TASK" $TRAINER \
  hydra/launcher=slurm hydra.launcher.partition="$PARTITION" \
  hydra.launcher.gpus_per_node="$GPUS" hydra.launcher.tasks_per_node="$GPUS" \
  hydra.launcher.timeout_min="$TIME_MIN" hydra.launcher.mem_gb="$MEM_GB" "$@"

echo "When the jobs are done: python scripts/aggregate_runs.py logs/$TASK/multiruns/<time>"
