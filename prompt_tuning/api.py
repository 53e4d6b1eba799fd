"""The Python API: what the commands do, as functions for notebooks and scripts.

Each function takes the gin files the command would take (a model's, a
method's, a prompt initialiser's; the run file is added for you) and the
macros as keyword arguments (`TRAIN_STEPS=100` is `--gin.TRAIN_STEPS=100`;
values are Python values, written into gin as their repr), then runs the
same job as the command: `train` is pt-train's, `evaluate` pt-eval's,
`predict` pt-infer's, `export_peft`/`import_peft` pt-export-peft's and
pt-import-peft's. Errors are the commands' (each says what to fix). Gin's
global config is left as it was found (gin_utils.isolated), so these calls
mix with a program's own gin use.

    from prompt_tuning import api
    model_files = ["models/t5_1_1_base_prompt.gin", "prompts/class_labels.gin"]
    api.train(model_files, MODEL_DIR="/runs/rte", INITIAL_CHECKPOINT_PATH=ckpt,
              MIXTURE_OR_TASK_NAME="taskless_super_glue_rte_v102", ...)
    metrics = api.evaluate(model_files, MODEL_DIR="/runs/rte", CHECKPOINT_PATH=ckpt, ...)
"""
import json
import os
import tempfile
from typing import Mapping, Optional, Sequence

import jax

from prompt_tuning import configurables
from prompt_tuning.evaluation import job as eval_job
from prompt_tuning.evaluation import predict as predict_lib
from prompt_tuning.evaluation import trained
from prompt_tuning import gin_utils
from prompt_tuning.interop import peft
from prompt_tuning.methods import sites
from prompt_tuning.model import weights
from prompt_tuning import peft_commands
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.training import trainer

TRAIN_RUN = "runs/prompt_finetune.gin"
EVAL_RUN = "runs/prompt_eval.gin"
INFER_RUN = "runs/prompt_infer.gin"
EXPORT_RUN = "runs/peft_export.gin"


def bindings(macros: Mapping[str, object], gin_bindings: Sequence[str] = ()) -> list:
  """`NAME = repr(value)` for each macro, then `gin_bindings` (gin text, for
  what is not a macro: `optimizers.adafactor.learning_rate = 0.1`)."""
  return [f"{name} = {value!r}" for name, value in macros.items()] + list(gin_bindings)


def _run(first_files, gin_files, run_file, macros, gin_bindings, job):
  with gin_utils.isolated():
    gin_utils.parse(list(first_files) + list(gin_files) + ([run_file] if run_file else []),
                    bindings(macros, gin_bindings))
    return job()


def load_model(gin_files: Sequence[str], gin_bindings: Sequence[str] = (), **macros):
  """The model (`MODEL`) the gin files configure: an EncoderDecoderModel."""
  return configurables.build_model(list(gin_files), bindings(macros, gin_bindings))


def random_checkpoint(gin_files: Sequence[str], directory: str, seed: int = 0,
                      gin_bindings: Sequence[str] = (), **macros) -> str:
  """A frozen model with random weights, written as a T5X checkpoint (for
  trying things out and for benchmarks); returns its checkpoint folder."""
  model = load_model(gin_files, gin_bindings, **macros)
  params = weights.init_random(model, jax.random.PRNGKey(seed), weights.dummy_batch(1, 8, 4))
  frozen = trees.split(params, sites.TRAINABLE_PARAMS)[1]
  return t5x_checkpoints.save_checkpoint(directory, jax.device_get(frozen), 0)


def train(gin_files: Sequence[str], gin_bindings: Sequence[str] = (), *,
          run_file: Optional[str] = TRAIN_RUN, **macros):
  """pt-train: trains in MODEL_DIR (resuming what is there); returns the
  trained parameters (a nested dict of numpy arrays)."""
  return _run((), gin_files, run_file, macros, gin_bindings, trainer.train)


def evaluate(gin_files: Sequence[str], gin_bindings: Sequence[str] = (), *,
             run_file: Optional[str] = EVAL_RUN, **macros) -> dict:
  """pt-eval: {task: {metric: value}} (with PROMPT_FILES, {member_i or
  'ensemble': {task: {metric: value}}}); seqio's files go to EVAL_OUTPUT_DIR."""
  return _run((), gin_files, run_file, macros, gin_bindings, eval_job.evaluate)


def predict(gin_files: Sequence[str], examples: Sequence[Mapping],
            prompts: Mapping[str, str], *, output: Optional[str] = None,
            gin_bindings: Sequence[str] = (), run_file: Optional[str] = INFER_RUN,
            **macros) -> list:
  """pt-infer: each example (`{"task": NAME, "inputs": TEXT, ...}`) with its
  task's prompt (`prompts`: {task: .npy or numpy checkpoint folder}); returns
  the output dicts in input order (`prediction`, `score`, `label_scores` for
  tasks with class labels), also written to `output` (JSONL) if given."""
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "examples.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(dict(e)) + "\n" for e in examples)
    return _run((), gin_files, run_file, macros, gin_bindings,
                lambda: predict_lib.infer(path, output, dict(prompts)))


def load_trained(gin_files: Sequence[str], path: Optional[str] = None,
                 model_dir: Optional[str] = None, gin_bindings: Sequence[str] = (),
                 **macros):
  """(trainable parameters, step, source) of the model the gin files
  configure, from `path` (.npy or numpy checkpoint folder) or else
  `model_dir`'s newest intact checkpoint, checked as pt-eval checks them."""
  model = load_model(gin_files, gin_bindings, **macros)
  abstract = weights.abstract_trainable(model, sites.TRAINABLE_PARAMS)
  return trained.load_trainable(abstract, path, model_dir)


def export_peft(gin_files: Sequence[str], output_dir: str, base_model: Optional[str] = None,
                gin_bindings: Sequence[str] = (), **macros) -> dict:
  """pt-export-peft: the trained parameters (PROMPT_FILE, or MODEL_DIR's
  newest checkpoint) as a Hugging Face PEFT adapter folder; returns its
  adapter_config.json."""
  return _run((EXPORT_RUN,), gin_files, None, macros, gin_bindings,
              lambda: peft_commands.export_adapter(output_dir=output_dir,
                                                   base_model=base_model))


def import_peft(adapter_dir: str, out_dir: str) -> dict:
  """pt-import-peft: a PEFT adapter folder as a numpy checkpoint folder (and
  the method's gin file) in `out_dir`; returns {name: array}."""
  return peft.import_adapter(adapter_dir, out_dir)
