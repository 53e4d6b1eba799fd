"""pt-import-peft and pt-export-peft: Hugging Face PEFT adapter folders to
and from this tool's runs (the conversion itself is prompt_tuning.interop.peft).

    pt-import-peft ADAPTER_DIR OUT_DIR
    pt-export-peft --gin_file=models/t5_1_1_base_prompt.gin --gin_file=methods/lora.gin \
        --gin.MODEL_DIR="'/runs/rte_lora'" --output_dir=/runs/rte_lora/peft
"""
import sys
from typing import Optional, Sequence

import gin
import numpy as np

from prompt_tuning.interop.peft import (METHOD_GIN, PeftError, check_out_dir, import_adapter,
                                        peft_tensors, write_adapter)
from prompt_tuning.storage import file_utils


@gin.configurable(module="peft_interop")
def export_adapter(*, output_dir: str, model, prompt_file: Optional[str] = None,
                   model_dir: Optional[str] = None,
                   trainable_params: Sequence[str] = (),
                   base_model: Optional[str] = None) -> dict:
  """pt-export-peft: a run's trained parameters as a PEFT adapter folder."""
  from prompt_tuning.evaluation import trained  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import weights  # pylint: disable=g-import-not-at-top
  from prompt_tuning.storage import trees  # pylint: disable=g-import-not-at-top
  if not output_dir:
    raise PeftError("give --output_dir, the adapter folder to write")
  check_out_dir(output_dir, "--output_dir")
  abstract = weights.abstract_trainable(model, trainable_params)
  trainable, step, source = trained.load_trainable(abstract, prompt_file, model_dir)
  flat = {k: np.asarray(v) for k, v in trees.flatten(trainable).items()}
  config, tensors = peft_tensors(model, flat, base_model)
  write_adapter(output_dir, config, tensors)
  print(f"Wrote {config['peft_type']} adapter of {source} (step {step}) to {output_dir}",
        flush=True)
  return config


# ---------------------------------------------------------------- commands

IMPORT_PROG = "pt-import-peft"


def _import_command(adapter_dir: str, out_dir: str) -> None:
  """pt-import-peft's work: prints what it wrote, or one error line."""
  from prompt_tuning import command  # pylint: disable=g-import-not-at-top
  from prompt_tuning.storage import numpy_checkpoints  # pylint: disable=g-import-not-at-top
  try:
    flat = import_adapter(adapter_dir, out_dir)
  except (PeftError, numpy_checkpoints.CheckpointDamagedError, file_utils.DiskFullError,
          OSError) as e:
    command.fail(IMPORT_PROG, e)
  count = sum(v.size for v in flat.values())
  print(f"Wrote {len(flat)} parameters ({count:,} values) and {METHOD_GIN} to {out_dir}",
        flush=True)


def import_main(argv=None) -> int:
  """`pt-import-peft ADAPTER_DIR OUT_DIR` (absl flags: --verbosity, --help),
  `argv` being its arguments (sys.argv's when None): the exit status."""
  from prompt_tuning import command  # pylint: disable=g-import-not-at-top
  return command.call(IMPORT_PROG, _import_command, sys.argv[1:] if argv is None else argv,
                      positional=2, usage="ADAPTER_DIR OUT_DIR")


def import_console_main():
  sys.exit(import_main())


def export_console_main():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  if "output_dir" not in flags.FLAGS:
    flags.DEFINE_string("output_dir", None, "The PEFT adapter folder to write (new or empty).")
  if "base_model" not in flags.FLAGS:
    flags.DEFINE_string("base_model", None, "base_model_name_or_path to record in "
                        "adapter_config.json (e.g. google/t5-v1_1-base).")

  def main():
    export_adapter(output_dir=flags.FLAGS.output_dir, base_model=flags.FLAGS.base_model)

  cli.run(main, "pt-export-peft", first_gin_files=("runs/peft_export.gin",),
          extra_errors=(PeftError,))

