"""seqio registration of the shipped tasks, and their explicit configuration.

Task modules register their tasks and mixtures through `add_task` and
`add_mixture` when they are imported, with the current `Settings`: the
vocabulary of the output features and the data folders of the sources
(SuperGLUE, SQuAD, MRQA). `configure(vocabulary=..., superglue_data_dir=...,
squad_data_dir=..., mrqa_data_dir=...)` changes the settings: it
re-registers every task and mixture registered here (same source recipe,
preprocessors, postprocessor and metrics; class labels are kept by name in
`labels`) whenever the settings differ from the registered ones. So a task
module imported before the call follows it as well as one imported after, and
a run reads what its config says. pt-train and pt-eval call it through
`data.configure_sources` with the run's VOCABULARY and data folders.

Defaults, used until `configure` is called and for its None arguments:
`features.default_vocabulary()` (T5's model, or $PT_VOCABULARY_PATH),
`sources.default_superglue_data_dir()` ($SUPERGLUE_DATA_DIR, else TFDS), and
likewise $SQUAD_DATA_DIR and $MRQA_DATA_DIR (else TFDS). Those environment
variables are user-facing defaults only, read when the defaults are computed;
nothing in the package sets them. (pt-train, pt-eval and pt-infer pass
VOCABULARY, SUPERGLUE_DATA_DIR, SQUAD_DATA_DIR and MRQA_DATA_DIR.)

Tasks registered with their own `output_features`, and tasks registered
directly with seqio (`demo`'s byte-level tasks), keep their vocabulary.
"""
import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import seqio

from prompt_tuning.tasks import features
from prompt_tuning.tasks import sources


@dataclasses.dataclass(frozen=True)
class Settings:
  """The configuration the shipped tasks are registered with.

  Attributes:
    vocabulary: the vocabulary of the 'inputs' and 'targets' features.
    superglue_data_dir: the unzipped official SuperGLUE release the SuperGLUE
      sources read, or None to read TFDS.
    squad_data_dir: the folder with the official SQuAD v1.1 files
      (train-v1.1.json, dev-v1.1.json) `squad_v110` reads, or None for TFDS.
    mrqa_data_dir: the folder with the official MRQA 2019 files
      (train/<Name>.jsonl.gz, dev/<Name>.jsonl.gz) the `mrqa_*` tasks read, or
      None for TFDS.
  """
  # Compared with `==`: seqio's vocabularies compare by their arguments without
  # loading a model file; other vocabularies compare by identity.
  vocabulary: seqio.Vocabulary
  superglue_data_dir: Optional[str] = None
  squad_data_dir: Optional[str] = None
  mrqa_data_dir: Optional[str] = None


# A data source, or a function building one from the settings (e.g. a SuperGLUE
# source reading `settings.superglue_data_dir`).
SourceOrFn = Union[seqio.DataSource, Callable[[Settings], seqio.DataSource]]


@dataclasses.dataclass(frozen=True)
class _TaskRecipe:
  """What `add_task` was given: enough to register the task again."""
  source: SourceOrFn
  preprocessors: tuple[Any, ...]
  output_features: Optional[Mapping[str, seqio.Feature]]  # None: follow Settings.
  kwargs: Mapping[str, Any]


# Insertion-ordered, so mixtures are registered again after their tasks and
# after the mixtures they contain.
_TASKS: dict[str, _TaskRecipe] = {}
_MIXTURES: dict[str, tuple[Any, ...]] = {}
_settings: Optional[Settings] = None


def _folder(value, default: Optional[str]) -> Optional[str]:
  value = os.fspath(value) if value else None
  return value or default


def resolve(vocabulary: Optional[seqio.Vocabulary] = None,
            superglue_data_dir: Optional[Union[str, os.PathLike]] = None,
            squad_data_dir: Optional[Union[str, os.PathLike]] = None,
            mrqa_data_dir: Optional[Union[str, os.PathLike]] = None) -> Settings:
  """The settings for these arguments, with the defaults filled in.

  Args:
    vocabulary: a seqio.Vocabulary; None for `features.default_vocabulary()`.
    superglue_data_dir: the unzipped official SuperGLUE release; None (or '')
      for `sources.default_superglue_data_dir()`.
    squad_data_dir: the SQuAD v1.1 folder; None (or '') for
      `sources.default_squad_data_dir()`.
    mrqa_data_dir: the MRQA 2019 folder; None (or '') for
      `sources.default_mrqa_data_dir()`.

  Returns:
    The resolved Settings.

  Raises:
    ValueError: if `vocabulary` is not a seqio.Vocabulary.
  """
  if vocabulary is None:
    vocabulary = features.default_vocabulary()
  elif not isinstance(vocabulary, seqio.Vocabulary):
    raise ValueError(f"VOCABULARY must be a seqio.Vocabulary, got {vocabulary!r}")
  return Settings(
      vocabulary=vocabulary,
      superglue_data_dir=_folder(superglue_data_dir, sources.default_superglue_data_dir()),
      squad_data_dir=_folder(squad_data_dir, sources.default_squad_data_dir()),
      mrqa_data_dir=_folder(mrqa_data_dir, sources.default_mrqa_data_dir()))


def settings() -> Settings:
  """The settings the tasks are registered with (the defaults until `configure`)."""
  global _settings
  if _settings is None:
    _settings = resolve()
  return _settings


def configure(vocabulary: Optional[seqio.Vocabulary] = None,
              superglue_data_dir: Optional[Union[str, os.PathLike]] = None,
              squad_data_dir: Optional[Union[str, os.PathLike]] = None,
              mrqa_data_dir: Optional[Union[str, os.PathLike]] = None) -> Settings:
  """Registers every task and mixture of `add_task` / `add_mixture` with these settings.

  The latest call wins; None arguments mean the defaults (see `resolve`), so
  the settings depend on the latest call only. Tasks registered later (task
  modules imported after this call) get the same settings.

  Args:
    vocabulary: the vocabulary of the tasks' 'inputs' and 'targets' features.
    superglue_data_dir: the unzipped official SuperGLUE release to read.
    squad_data_dir: the folder of the official SQuAD v1.1 JSON files to read.
    mrqa_data_dir: the folder of the official MRQA 2019 JSONL files to read.

  Returns:
    The settings now in effect.

  Raises:
    ValueError: for a vocabulary that is not a seqio.Vocabulary, or when a
      mixture registered outside `add_mixture` holds tasks registered here:
      it would keep the old tasks (nothing is changed then).
  """
  global _settings
  new = resolve(vocabulary, superglue_data_dir, squad_data_dir, mrqa_data_dir)
  if new == settings():
    return _settings
  stale = _outside_mixtures()
  if stale:
    raise ValueError(
        f"seqio mixtures {stale} hold tasks of prompt_tuning.tasks and would keep "
        "their old vocabulary / data folders: register them with "
        "prompt_tuning.tasks.registration.add_mixture (which follows the configuration) "
        "or after it is configured (in MIXTURE_OR_TASK_MODULE)")
  _settings = new
  output_features = features.output_features(new.vocabulary)
  for name, recipe in _TASKS.items():
    _register_task(name, recipe, new, output_features)
  for name, tasks_with_rates in _MIXTURES.items():
    _register_mixture(name, tasks_with_rates)
  return new


def task_names() -> list[str]:
  """The names of the tasks registered here (that follow `configure`)."""
  return list(_TASKS)


def mixture_names() -> list[str]:
  """The names of the mixtures registered here (that follow `configure`)."""
  return list(_MIXTURES)


def token_preprocessors() -> list[Any]:
  """Tokenize, cache point, EOS: appended to every text chain, as in T5."""
  return [
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim,
  ]


def add_task(name: str, source: SourceOrFn, text_preprocessors: Sequence[Any],
             **kwargs) -> seqio.Task:
  """Registers a text-to-text task that follows `configure`.

  A name already registered (by an earlier import of the same module, or by
  someone else) is kept as it is.

  Args:
    name: task name.
    source: its data source, or a function from `Settings` to one (for sources
      that depend on the settings, e.g. the SuperGLUE folder).
    text_preprocessors: preprocessors producing 'inputs'/'targets' strings;
      tokenization and EOS are appended.
    **kwargs: forwarded to seqio.TaskRegistry.add (postprocess_fn,
      metric_fns, ...). An `output_features` given here is kept as is; by
      default the features use the configured vocabulary.

  Returns:
    The registered task.
  """
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  recipe = _TaskRecipe(
      source=source,
      preprocessors=tuple(text_preprocessors) + tuple(token_preprocessors()),
      output_features=kwargs.pop("output_features", None),
      kwargs=dict(kwargs))
  _TASKS[name] = recipe
  current = settings()
  return _register_task(name, recipe, current, features.output_features(current.vocabulary))


def add_mixture(name: str, tasks_with_rates: Sequence[tuple[str, Any]]) -> seqio.Mixture:
  """Registers a mixture (of task names) that follows `configure`, unless the name exists."""
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  _MIXTURES[name] = tuple(tasks_with_rates)
  return _register_mixture(name, _MIXTURES[name])


def _register_task(name: str, recipe: _TaskRecipe, current: Settings,
                   output_features: Mapping[str, seqio.Feature]) -> seqio.Task:
  source = recipe.source
  if not isinstance(source, seqio.DataSource):
    source = source(current)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source, preprocessors=list(recipe.preprocessors),
      output_features=recipe.output_features or output_features, **recipe.kwargs)


def _register_mixture(name: str, tasks_with_rates: Sequence[tuple[str, Any]]) -> seqio.Mixture:
  # A seqio.Mixture holds the Task objects it was built with, not their names:
  # it is built again so that it holds the tasks registered now.
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks_with_rates))


def _outside_mixtures() -> list[str]:
  """Mixtures not registered here that hold tasks registered here."""
  return sorted(
      name for name in seqio.MixtureRegistry.names()
      if name not in _MIXTURES
      and any(task.name in _TASKS for task in seqio.MixtureRegistry.get(name).tasks))
