"""pt-train: prompt tuning of a frozen T5 from a T5X checkpoint, configured by gin.

    pt-train --gin_file=models/t5_1_1_base_prompt.gin --gin_file=runs/prompt_finetune.gin \
             --gin.MODEL_DIR="'/runs/rte'" --gin.MIXTURE_OR_TASK_NAME="'...'" ...
"""
from prompt_tuning import cli


def main():
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top
  trainer.train()


def console_main():
  cli.run(main, "pt-train")


if __name__ == "__main__":
  console_main()
