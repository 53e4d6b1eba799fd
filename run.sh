#!/usr/bin/env bash
# The embedded default: a whole prompt-tuning experiment on CPU, no network,
# a few minutes. Installs the package if needed, makes a tiny frozen T5 1.1
# (written as a T5X checkpoint), tunes a prompt with pt-train, scores the
# initial and the learned prompt with pt-eval on held-out examples.
#   WORK=/some/dir bash run.sh     (default ./demo_run; a rerun resumes)
#   bash run.sh sweep              a 2 x 2 x 2 ablation (prompt length x initialiser
#                                  x seed) on the same tiny model with pt-sweep, then
#                                  its table and figures (a rerun skips finished runs)
set -euo pipefail
MODE="${1:-demo}"
if [[ "$MODE" != demo && "$MODE" != sweep ]]; then
  echo "run.sh: error: unknown mode '$MODE' (use: bash run.sh, or bash run.sh sweep)" >&2
  exit 2
fi
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

echo "== tiny frozen T5 1.1 -> $FROZEN"
python -m prompt_tuning.demo pretrain --out "$WORK/frozen" --steps 600

if [[ "$MODE" == sweep ]]; then
  # The paper's ablation in miniature: 8 pt-train runs, 2 at a time, then
  # pt-sweep report writes $WORK/sweep/results.{csv,md} and plots/.
  echo "== pt-sweep: PROMPT_LENGTH x initialiser x RANDOM_SEED -> $WORK/sweep"
  pt-sweep --gin_file=models/demo_prompt.gin --gin_file=runs/prompt_finetune.gin "${TASK[@]}" \
    --gin.INITIAL_CHECKPOINT_PATH="'$FROZEN'" \
    --gin.TRAIN_STEPS=150 --gin.EVAL_PERIOD=75 --gin.CHECKPOINT_PERIOD=75 --gin.LOG_PERIOD=75 \
    --sweep='PROMPT_LENGTH=[1, 10]' \
    --sweep="gin_file=['prompts/random_uniform.gin', 'prompts/sampled_vocab.gin']" \
    --sweep='RANDOM_SEED=[0, 1]' \
    --sweep_dir="$WORK/sweep" --parallel=2
  exit 0
fi

echo "== pt-train: prompt tuning (only the 10x64 prompt trains)"
pt-train --gin_file=models/demo_prompt.gin --gin_file=runs/prompt_finetune.gin "${TASK[@]}" \
  --gin.MODEL_DIR="'$WORK/prompt'" --gin.INITIAL_CHECKPOINT_PATH="'$FROZEN'" \
  --gin.TRAIN_STEPS=300 --gin.EVAL_PERIOD=100 --gin.CHECKPOINT_PERIOD=100 --gin.LOG_PERIOD=50

echo "== pt-eval: the initial (step 0) and the learned prompt"
pt-eval --gin_file=models/demo_prompt.gin --gin_file=runs/prompt_eval.gin "${TASK[@]}" \
  --gin.CHECKPOINT_PATH="'$FROZEN'" --gin.EVAL_OUTPUT_DIR="'$WORK/eval_initial'" \
  --gin.PROMPT_FILE="'$WORK/prompt/numpy_checkpoints/checkpoint_0/encoder.prompt.prompt.npy'"
pt-eval --gin_file=models/demo_prompt.gin --gin_file=runs/prompt_eval.gin "${TASK[@]}" \
  --gin.CHECKPOINT_PATH="'$FROZEN'" --gin.EVAL_OUTPUT_DIR="'$WORK/eval_learned'" \
  --gin.MODEL_DIR="'$WORK/prompt'"

echo "== result"
python -m prompt_tuning.demo compare --initial "$WORK/eval_initial" --learned "$WORK/eval_learned"
