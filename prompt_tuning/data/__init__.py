"""The data: seqio tasks and mixtures as the model's batches.

  sources   the run's tasks (vocabulary, data folders, task modules), DataError
  padding   length buckets and grouping by length (PADDING macros), fit_batch
  pipeline  get_dataset: batched model features, this process's rows
  config    DataConfig: a run's data settings, bound once by gin

This package exports their public names.
"""
from prompt_tuning.data.padding import (DEFAULT_BUCKETS, GROUPS, PADDINGS, Padding,
                                        agreed_lengths, configured_padding, fit_batch,
                                        group_by_length, needed_lengths, padded_fraction)
from prompt_tuning.data.pipeline import feature_converter, first_batch, get_dataset
from prompt_tuning.data.config import DataConfig
from prompt_tuning.data.errors import DataError
from prompt_tuning.data.sources import (check_vocabularies, configure_sources, get_task,
                                        import_task_modules)
