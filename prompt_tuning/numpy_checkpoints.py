"""Kilobyte checkpoints of the trainable parameters, and exact resume.

Layout (the authors' convention, so their released prompts and ours mix):

    MODEL_DIR/numpy_checkpoints/checkpoint_{step}/
        encoder.prompt.prompt.npy      one file per trainable parameter, named
                                       by its '/'-path with '.' separators
        train_state.msgpack            optimizer state, step, RNG seed and data
                                       position: what an exact resume needs

Frozen weights are never written. Each checkpoint folder is written under a
temporary name and renamed when complete, so a killed run leaves either a
whole checkpoint or none; the latest complete one is where a rerun resumes.
"""
import os
import re
from typing import Optional

import flax.serialization
import numpy as np

from prompt_tuning import file_utils
from prompt_tuning import param_utils

DIRNAME = "numpy_checkpoints"
STATE_FILE = "train_state.msgpack"
_STEP_RE = re.compile(r"^checkpoint_(\d+)$")


def checkpoint_dir(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, DIRNAME, f"checkpoint_{step}")


def param_filename(name: str) -> str:
  return name.replace("/", ".") + ".npy"


def steps(model_dir: str) -> list:
  """Steps of the complete checkpoints in MODEL_DIR, ascending."""
  found = []
  for entry in file_utils.listdir(os.path.join(model_dir, DIRNAME)):
    match = _STEP_RE.match(entry.rstrip("/"))
    if match:
      found.append(int(match.group(1)))
  return sorted(found)


def latest_step(model_dir: str) -> Optional[int]:
  found = steps(model_dir)
  return found[-1] if found else None


def save(model_dir: str, step: int, trainable_params, state: Optional[dict] = None) -> str:
  """Writes one checkpoint atomically; `state` is a pytree of arrays/scalars."""
  final = checkpoint_dir(model_dir, step)
  tmp = file_utils.temp_sibling(final)
  file_utils.makedirs(tmp)
  for name, value in param_utils.flatten(trainable_params).items():
    file_utils.save_npy(os.path.join(tmp, param_filename(name)), np.asarray(value))
  if state is not None:
    file_utils.write_bytes_atomic(os.path.join(tmp, STATE_FILE),
                                  flax.serialization.msgpack_serialize(state))
  if file_utils.exists(final):
    file_utils.remove_tree(final)
  file_utils.rename(tmp, final)
  return final


def load_params(directory: str, names) -> dict:
  """Reads the named parameters ('/'-paths) from a checkpoint folder."""
  return param_utils.unflatten({
      name: file_utils.load_npy(os.path.join(directory, param_filename(name)))
      for name in names})


def load_state(directory: str) -> Optional[dict]:
  path = os.path.join(directory, STATE_FILE)
  if not file_utils.exists(path):
    return None
  return flax.serialization.msgpack_restore(file_utils.read_bytes(path))


def cleanup(model_dir: str, keep: Optional[int]) -> None:
  """Keeps the newest `keep` checkpoints (all if None; always checkpoint_0,
  the initial prompt) and removes leftovers of killed writes."""
  if keep:
    for step in steps(model_dir)[:-keep]:
      if step != 0:
        file_utils.remove_tree(checkpoint_dir(model_dir, step))
  base = os.path.join(model_dir, DIRNAME)
  for entry in file_utils.listdir(base):  # leftovers of killed writes
    if ".tmp-" in entry:
      file_utils.remove_tree(os.path.join(base, entry))
