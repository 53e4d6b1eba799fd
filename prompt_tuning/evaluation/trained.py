"""Trained parameters from a file: the one loader of them against a model, for
pt-eval, ensembles, pt-infer, pt-export-peft and the Python API. (pt-neighbors
reads a prompt with no model to check it against, any [P, d] or [k, P, d]
array, and keeps its own reader in evaluation/neighbors.py.)

`load_trainable` reads a .npy prompt or a numpy checkpoint folder (MODEL_DIR's
newest intact one by default), checked against the model's trainable
parameters (names, shapes, embedding size) and against checksums.json.
"""
import os
import re
from typing import Optional

from prompt_tuning.methods import initializers
from prompt_tuning.storage import file_utils
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import trees


def _step_of(path: str) -> int:
  match = re.search(r"checkpoint_(\d+)", path)
  return int(match.group(1)) if match else 0


def load_trainable(abstract_trainable, prompt_file: Optional[str], model_dir: Optional[str]):
  """(trainable params, step, where) from PROMPT_FILE or MODEL_DIR's latest checkpoint."""
  names = trees.shapes(abstract_trainable)
  if prompt_file and not file_utils.exists(prompt_file):
    raise initializers.PromptInitError(
        f"PROMPT_FILE {prompt_file} does not exist: give a .npy prompt or a numpy checkpoint "
        "folder")
  if prompt_file and not prompt_file.endswith(".npy") and file_utils.isdir(prompt_file):
    directory = prompt_file  # a numpy checkpoint folder
  elif prompt_file:
    if len(names) != 1:
      raise initializers.PromptInitError(
          f"PROMPT_FILE {prompt_file} is one array but this model trains {sorted(names)}: "
          "point PROMPT_FILE at the numpy checkpoint folder instead")
    (name, shape), = names.items()
    numpy_checkpoints.check_file(prompt_file)  # against checksums.json, if beside it
    value = initializers.load_prompt_file(prompt_file, shape)
    return trees.unflatten({name: value}), _step_of(prompt_file), prompt_file
  elif model_dir and numpy_checkpoints.latest_step(model_dir) is not None:
    # The newest checkpoint that verifies; damaged ones are reported, never moved.
    step = numpy_checkpoints.latest_intact_step(model_dir, move_aside=False)
    if step is None:
      raise numpy_checkpoints.CheckpointDamagedError(
          f"every numpy checkpoint in {model_dir} is damaged (see the warnings): set "
          "PROMPT_FILE to an intact prompt")
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
  for name, value in trees.flatten(params).items():
    got, want = tuple(value.shape), tuple(names[name])
    if got and want and got[-1] != want[-1]:
      raise initializers.PromptInitError(
          f"{directory}: {name} has embedding size {got[-1]} (shape {list(got)}) but this "
          f"model's EMBED_DIM is {want[-1]} ({list(want)}): it was made for another model "
          "size; use the model gin file of its size, or a prompt trained for this model")
    if got != want:
      raise initializers.PromptInitError(
          f"{directory}: {name} has shape {list(got)}, the model expects "
          f"{list(want)} (check PROMPT_LENGTH)")
  return params, _step_of(directory), directory
