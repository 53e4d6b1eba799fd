"""`DataConfig`: a run's data, one object bound once by gin and handed to
every job (pt-train, pt-eval, pt-infer), as t5x's `utils.DatasetConfig` is.

gin/runs/data.gin binds its fields to the macros users set
(MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, BATCH_SIZE, ...), and each run
file hands it to its job (`train.data_config = @data.DataConfig()`).
`prepare` is what every job does first with it: the values checked, the
shipped tasks pointed at the run's vocabulary and data folders, the task
modules imported, the task looked up and its vocabularies loaded.

Configs written before DataConfig existed bind the same values on the job
itself (`train.batch_size = %BATCH_SIZE`, ...); `resolve` takes them, so an
old run's config.gin still parses and runs.
"""
import dataclasses
import difflib
from typing import Any, Mapping, Optional, Sequence, Union

import gin

from prompt_tuning.data.errors import DataError
from prompt_tuning.data import sources
from prompt_tuning import gin_utils


@gin.configurable(module="data")
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What a job reads: a seqio task or mixture, its lengths and batch size,
  and where its tasks' data and vocabulary come from.

  Attributes:
    mixture_or_task_name: the seqio task or mixture (None for pt-infer, whose
      examples each name their task).
    task_feature_lengths: {'inputs': n, 'targets': m}, the longest example.
    batch_size: examples per (global) batch.
    mixture_or_task_module: module(s) to import so that the task registers.
    use_cached_tasks: read seqio's cached (preprocessed) task data.
    vocabulary: the shipped tasks' vocabulary (None: $PT_VOCABULARY_PATH or T5's).
    superglue_data_dir, squad_data_dir, mrqa_data_dir: local copies of the
      data (None: $SUPERGLUE_DATA_DIR, ..., else TFDS).
  """
  mixture_or_task_name: Optional[str] = None
  task_feature_lengths: Optional[Mapping[str, int]] = None
  batch_size: int = 32
  mixture_or_task_module: Union[None, str, Sequence[str]] = None
  use_cached_tasks: bool = False
  vocabulary: Any = None
  superglue_data_dir: Optional[str] = None
  squad_data_dir: Optional[str] = None
  mrqa_data_dir: Optional[str] = None

  def prepare(self, error=DataError, need_task: bool = True) -> dict:
    """Checks the values and readies the tasks; returns the feature lengths.
    `error` is the job's exception class for a bad setting; a task that
    cannot be found or read is a DataError."""
    if need_task and not (isinstance(self.mixture_or_task_name, str)
                          and self.mixture_or_task_name):
      raise error(f"MIXTURE_OR_TASK_NAME must name a seqio task or mixture, got "
                  f"{self.mixture_or_task_name!r}")
    gin_utils.check_int("BATCH_SIZE", self.batch_size, error)
    lengths = gin_utils.check_feature_lengths(self.task_feature_lengths, error)
    sources.configure_sources(self.vocabulary, self.superglue_data_dir, self.squad_data_dir,
                              self.mrqa_data_dir)
    sources.import_task_modules(self.mixture_or_task_module)
    if not isinstance(self.use_cached_tasks, bool):
      raise error(f"USE_CACHED_TASKS must be True or False, got {self.use_cached_tasks!r}")
    if need_task:
      sources.get_task(self.mixture_or_task_name)
      sources.check_vocabularies(self.mixture_or_task_name)
      if self.use_cached_tasks:
        sources.check_cached(self.mixture_or_task_name)
    return lengths


FIELDS = tuple(field.name for field in dataclasses.fields(DataConfig))


def resolve(config: Optional[DataConfig], legacy: Mapping[str, Any], job: str,
            error=DataError) -> DataConfig:
  """The job's DataConfig: `config` with the DataConfig values bound on the job
  itself (`legacy`, an old config.gin's `train.batch_size = ...`) put in.
  Any other name in `legacy` is an unknown parameter of the job: `error`."""
  unknown = sorted(set(legacy) - set(FIELDS))
  if unknown:
    close = difflib.get_close_matches(unknown[0], FIELDS, n=1)
    hint = f" (did you mean {job}.{close[0]}?)" if close else ""
    raise error(f"{job} has no parameter {unknown[0]!r}{hint}: check the gin bindings of {job}")
  if config is None and not legacy:
    raise error(f"{job}.data_config is not set: include the run file (runs/*.gin), which binds "
                "it to @data.DataConfig()")
  if config is not None and not isinstance(config, DataConfig):
    raise error(f"{job}.data_config must be @data.DataConfig(), got {config!r}")
  return dataclasses.replace(config or DataConfig(), **legacy)
