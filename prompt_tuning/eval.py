"""pt-eval: evaluates a prompt on a frozen T5 with seqio.Evaluator.

The frozen model comes from CHECKPOINT_PATH (or INITIAL_CHECKPOINT_PATH); the
prompt from PROMPT_FILE (a .npy, or a numpy checkpoint folder holding every
trainable parameter) or else the latest numpy checkpoint in MODEL_DIR.
Results: EVAL_OUTPUT_DIR (default MODEL_DIR/inference_eval) via seqio's
JSONLogger and TensorBoardLogger. The job is
prompt_tuning.evaluation.job.evaluate; the library, prompt_tuning.evaluation.seqio_eval.
PROMPT_FILES (a list of prompts) evaluates them as an ensemble in one batched
pass: each member's results and the majority vote's (`prompt_tuning.evaluation.ensemble`).

    pt-eval --gin_file=models/t5_1_1_base_prompt.gin --gin_file=runs/prompt_eval.gin \
            --gin.CHECKPOINT_PATH="'gs://...'" \
            --gin.PROMPT_FILE="'.../encoder.prompt.prompt.npy'" ...
"""
from prompt_tuning import cli


def main():
  from prompt_tuning.evaluation import job  # pylint: disable=g-import-not-at-top
  job.evaluate()


def console_main():
  cli.run(main, "pt-eval")


if __name__ == "__main__":
  console_main()
