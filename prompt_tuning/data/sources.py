"""The run's tasks: the shipped tasks pointed at the run's vocabulary and data
folders, the task modules imported, a task looked up, its vocabularies
checked; `DataError` for every data problem."""
import importlib
from typing import Optional

import seqio

from prompt_tuning.data.errors import DataError
from prompt_tuning.data.padding import configured_padding
from prompt_tuning.tasks import features
from prompt_tuning.tasks import registration


def configure_sources(vocabulary=None,
                      superglue_data_dir: Optional[str] = None,
                      squad_data_dir: Optional[str] = None,
                      mrqa_data_dir: Optional[str] = None) -> registration.Settings:
  """Points the shipped tasks (prompt_tuning.tasks) at the run's vocabulary and data.

  Passes the run's VOCABULARY, SUPERGLUE_DATA_DIR, SQUAD_DATA_DIR and
  MRQA_DATA_DIR to `prompt_tuning.tasks.registration.configure`, which registers the shipped
  tasks and mixtures again with them: task modules imported before this call
  follow it as well as those imported after, and the latest call wins. None
  means the user's default ($PT_VOCABULARY_PATH or T5's vocabulary;
  $SUPERGLUE_DATA_DIR, $SQUAD_DATA_DIR, $MRQA_DATA_DIR, else TFDS). Sets no
  environment variable. Also checks the padding macros (configured_padding).

  Returns:
    The `registration.Settings` now in effect.
  """
  # The padding macros are checked here too: every program (pt-train, pt-eval,
  # pt-infer) calls this first, before it writes anything.
  configured_padding()
  try:
    return registration.configure(vocabulary=vocabulary, superglue_data_dir=superglue_data_dir,
                                  squad_data_dir=squad_data_dir, mrqa_data_dir=mrqa_data_dir)
  except ValueError as e:
    raise DataError(str(e)) from None


def import_task_modules(modules) -> None:
  """Imports MIXTURE_OR_TASK_MODULE (one name or several) so their tasks register."""
  if not modules:
    return
  for name in [modules] if isinstance(modules, str) else modules:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise DataError(f"MIXTURE_OR_TASK_MODULE {name!r} could not be imported: {e}") from None


def get_task(name: str):
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    raise DataError(
        f"unknown task or mixture {name!r}: register it in a module and name that module "
        "with --gin.MIXTURE_OR_TASK_MODULE=\"'my.tasks'\" (e.g. prompt_tuning.tasks.super_glue)"
    ) from None


def check_vocabularies(mixture_or_task_name: str) -> None:
  """DataError naming the file when a vocabulary of the task (or of a task of the
  mixture) cannot be loaded: a missing file, one that is not a SentencePiece
  model, or a gs:// one that cannot be reached. Only the vocabularies the run's
  tasks use are loaded."""
  seen = set()
  for task in seqio.get_subtasks(get_task(mixture_or_task_name)):
    for feature in task.output_features.values():
      if id(feature.vocabulary) in seen:
        continue
      seen.add(id(feature.vocabulary))
      problem = features.vocabulary_problem(feature.vocabulary)
      if problem:
        raise DataError(problem)


def check_cached(mixture_or_task_name: str) -> None:
  """DataError when USE_CACHED_TASKS is set but a task of the run has no
  seqio cache (a COMPLETED cache folder in seqio's cache directories): the
  run must not silently read it uncached."""
  for task in seqio.get_subtasks(get_task(mixture_or_task_name)):
    if not task.cache_dir:
      raise DataError(
          f"USE_CACHED_TASKS is True but task {task.name!r} has no seqio cache in "
          f"{', '.join(seqio.utils.get_global_cache_dirs()) or 'any cache directory'}: cache it "
          "(seqio's cache_tasks_main, then --seqio_additional_cache_dirs=DIR), or set "
          "--gin.USE_CACHED_TASKS=False")
