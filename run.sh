#!/usr/bin/env bash
# The embedded default: a whole prompt-tuning experiment on CPU, no network,
# a few minutes. Installs the package if needed, makes a tiny frozen T5 1.1
# (written as a T5X checkpoint), tunes a prompt with pt-train, scores the
# initial and the learned prompt with pt-eval on held-out examples.
#   WORK=/some/dir bash run.sh     (default ./demo_run; a rerun resumes)
set -euo pipefail
cd "$(dirname "$0")"
WORK="${WORK:-$PWD/demo_run}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"

# Installed into this python (not merely importable from the source folder here)?
if ! python -c "import importlib.metadata as m; m.version('prompt-tuning-jax'); import prompt_tuning.demo" \
     2>/dev/null || ! command -v pt-train >/dev/null; then
  python -m pip install -q -e .
fi

TASK=(--gin.MIXTURE_OR_TASK_NAME="'demo_last_word'"
      --gin.MIXTURE_OR_TASK_MODULE="'prompt_tuning.tasks.demo'"
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"
      --gin.BATCH_SIZE=32)
FROZEN="$WORK/frozen/checkpoint_600"

echo "== 1/4 tiny frozen T5 1.1 -> $FROZEN"
python -m prompt_tuning.demo pretrain --out "$WORK/frozen" --steps 600

echo "== 2/4 pt-train: prompt tuning (only the 10x64 prompt trains)"
pt-train --gin_file=models/demo_prompt.gin --gin_file=runs/prompt_finetune.gin "${TASK[@]}" \
  --gin.MODEL_DIR="'$WORK/prompt'" --gin.INITIAL_CHECKPOINT_PATH="'$FROZEN'" \
  --gin.TRAIN_STEPS=300 --gin.EVAL_PERIOD=100 --gin.CHECKPOINT_PERIOD=100 --gin.LOG_PERIOD=50

echo "== 3/4 pt-eval: the initial (step 0) and the learned prompt"
pt-eval --gin_file=models/demo_prompt.gin --gin_file=runs/prompt_eval.gin "${TASK[@]}" \
  --gin.CHECKPOINT_PATH="'$FROZEN'" --gin.EVAL_OUTPUT_DIR="'$WORK/eval_initial'" \
  --gin.PROMPT_FILE="'$WORK/prompt/numpy_checkpoints/checkpoint_0/encoder.prompt.prompt.npy'"
pt-eval --gin_file=models/demo_prompt.gin --gin_file=runs/prompt_eval.gin "${TASK[@]}" \
  --gin.CHECKPOINT_PATH="'$FROZEN'" --gin.EVAL_OUTPUT_DIR="'$WORK/eval_learned'" \
  --gin.MODEL_DIR="'$WORK/prompt'"

echo "== 4/4 result"
python -m prompt_tuning.demo compare --initial "$WORK/eval_initial" --learned "$WORK/eval_learned"
