"""pt-eval: evaluates a prompt on a frozen T5 with seqio.Evaluator.

The frozen model comes from CHECKPOINT_PATH (or INITIAL_CHECKPOINT_PATH); the
prompt from PROMPT_FILE (a .npy, or a numpy checkpoint folder holding every
trainable parameter) or else the latest numpy checkpoint in MODEL_DIR.
Results: EVAL_OUTPUT_DIR (default MODEL_DIR/inference_eval) via seqio's
JSONLogger and TensorBoardLogger.
"""
import os
import re
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax

from prompt_tuning import cli
from prompt_tuning import data
from prompt_tuning import evaluation
from prompt_tuning import file_utils
from prompt_tuning import initializers
from prompt_tuning import model_params
from prompt_tuning import numpy_checkpoints
from prompt_tuning import param_utils
from prompt_tuning import partitioning
from prompt_tuning import trainer


def _step_of(path: str) -> int:
  match = re.search(r"checkpoint_(\d+)", path)
  return int(match.group(1)) if match else 0


def load_trainable(abstract_trainable, prompt_file: Optional[str], model_dir: Optional[str]):
  """(trainable params, step, where) from PROMPT_FILE or MODEL_DIR's latest checkpoint."""
  names = param_utils.shapes(abstract_trainable)
  if prompt_file and not prompt_file.endswith(".npy"):
    directory = prompt_file  # a numpy checkpoint folder
  elif prompt_file:
    if len(names) != 1:
      raise initializers.PromptInitError(
          f"PROMPT_FILE {prompt_file} is one array but this model trains {sorted(names)}: "
          "point PROMPT_FILE at the numpy checkpoint folder instead")
    (name, shape), = names.items()
    value = initializers.load_prompt_file(prompt_file, shape)
    return param_utils.unflatten({name: value}), _step_of(prompt_file), prompt_file
  elif model_dir and numpy_checkpoints.latest_step(model_dir) is not None:
    step = numpy_checkpoints.latest_step(model_dir)
    directory = numpy_checkpoints.checkpoint_dir(model_dir, step)
  else:
    raise initializers.PromptInitError(
        "no prompt to evaluate: set PROMPT_FILE to a .npy prompt, or MODEL_DIR to a run "
        "with numpy_checkpoints")
  missing = [n for n in names if not file_utils.exists(
      os.path.join(directory, numpy_checkpoints.param_filename(n)))]
  if missing:
    raise initializers.PromptInitError(
        f"{directory} lacks {', '.join(numpy_checkpoints.param_filename(n) for n in missing)}")
  params = numpy_checkpoints.load_params(directory, names)
  for name, value in param_utils.flatten(params).items():
    if tuple(value.shape) != tuple(names[name]):
      raise initializers.PromptInitError(
          f"{directory}: {name} has shape {list(value.shape)}, the model expects "
          f"{list(names[name])} (check PROMPT_LENGTH and EMBED_DIM)")
  return params, _step_of(directory), directory


@gin.configurable
def evaluate(*,
             model=gin.REQUIRED,
             mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             batch_size: int = gin.REQUIRED,
             checkpoint_path: Optional[str] = None,
             initial_checkpoint_path: Optional[str] = None,
             prompt_file: Optional[str] = None,
             model_dir: Optional[str] = None,
             eval_output_dir: Optional[str] = None,
             split: str = "validation",
             use_cached_tasks: bool = False,
             mixture_or_task_module=None,
             trainable_params: Sequence[str] = trainer.DEFAULT_TRAINABLE,
             mesh_fn=partitioning.make_mesh):
  """Evaluates and returns {task: {metric: value}}."""
  data.import_task_modules(mixture_or_task_module)
  data.get_task(mixture_or_task_name)
  frozen_path = checkpoint_path or initial_checkpoint_path
  if not frozen_path:
    raise initializers.PromptInitError(
        "no frozen model: set CHECKPOINT_PATH (or INITIAL_CHECKPOINT_PATH) to a T5X checkpoint")
  output_dir = eval_output_dir or (os.path.join(model_dir, "inference_eval") if model_dir else None)
  if not output_dir:
    raise initializers.PromptInitError("set EVAL_OUTPUT_DIR (or MODEL_DIR) for the results")
  mesh = mesh_fn()
  lengths = dict(task_feature_lengths)
  batch = model_params.dummy_batch(1, lengths["inputs"], lengths["targets"])
  abstract_trainable = param_utils.split(
      nn.unbox(model_params.abstract_params(model, batch)), trainable_params)[0]
  trainable, step, source = load_trainable(abstract_trainable, prompt_file, model_dir)
  frozen = model_params.load_frozen(model, frozen_path, batch, trainable_params, mesh)
  trainable = jax.device_put(trainable, partitioning.replicated(mesh))
  evaluator = evaluation.make_evaluator(model, mixture_or_task_name, lengths, split, output_dir,
                                        batch_size, use_cached_tasks, mesh)
  print(f"Evaluating {source} (step {step}) on {mixture_or_task_name}:{split}", flush=True)
  return evaluation.run(evaluator, model, param_utils.merge(trainable, frozen), step, None,
                        batch_size, mesh)


def main():
  evaluate()


def console_main():
  cli.run(main, "pt-eval")


if __name__ == "__main__":
  console_main()
