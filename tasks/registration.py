"""Idempotent seqio registration helpers shared by the task modules."""
from typing import Any, Sequence

import seqio

from prompt_tuning.tasks import features


def token_preprocessors() -> list[Any]:
  """Tokenize, cache point, EOS: appended to every text chain, as in T5."""
  return [
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim,
  ]


def add_task(name: str, source: seqio.DataSource,
             text_preprocessors: Sequence[Any], **kwargs) -> seqio.Task:
  """Registers a text-to-text task unless one with that name exists.

  Args:
    name: task name.
    source: its data source.
    text_preprocessors: preprocessors producing 'inputs'/'targets' strings;
      tokenization and EOS are appended.
    **kwargs: forwarded to seqio.TaskRegistry.add (postprocess_fn,
      metric_fns, ...).

  Returns:
    The registered task.
  """
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  kwargs.setdefault("output_features", features.DEFAULT_OUTPUT_FEATURES)
  return seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=list(text_preprocessors) + token_preprocessors(),
      **kwargs)


def add_mixture(name: str, tasks_with_rates: Sequence[tuple[str, float]]
                ) -> seqio.Mixture:
  """Registers a mixture unless one with that name exists."""
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  return seqio.MixtureRegistry.add(name, list(tasks_with_rates))
