"""Registry of the label strings of classification tasks.

Rank classification scores every label string of a task and predicts the most
likely one, so it needs to know the legal targets. Every classification task
registered under `prompt_tuning.tasks` records its labels here, in class-id
order (the order of the TFDS `ClassLabel` names, which is also the order T5's
postprocessors use to map a predicted string back to a class id).
"""
from typing import Optional, Sequence

_CLASS_LABELS: dict[str, tuple[str, ...]] = {}


def register_class_labels(task_name: str, labels: Sequence[str]) -> None:
  """Records the label strings of `task_name` (idempotent for equal labels).

  Args:
    task_name: name of the seqio Task.
    labels: the label strings in class-id order.

  Raises:
    ValueError: if `labels` is empty, has duplicates, or differs from labels
      already registered under the same name.
  """
  labels = tuple(str(label) for label in labels)
  if not labels:
    raise ValueError(f"Task {task_name!r}: no class labels given.")
  if len(set(labels)) != len(labels):
    raise ValueError(f"Task {task_name!r}: duplicate class labels {labels}.")
  existing = _CLASS_LABELS.get(task_name)
  if existing is not None and existing != labels:
    raise ValueError(
        f"Task {task_name!r} already has class labels {existing}, not {labels}.")
  _CLASS_LABELS[task_name] = labels


def get_class_labels(task_or_mixture_name: str) -> Optional[list[str]]:
  """Returns the label strings of a task, or of a mixture whose tasks agree.

  Args:
    task_or_mixture_name: a registered task name, or the name of a seqio
      Mixture.

  Returns:
    The labels in class-id order; None for a task that is not a classification
    task, and for a mixture unless every one of its tasks has the same labels.
  """
  if task_or_mixture_name in _CLASS_LABELS:
    return list(_CLASS_LABELS[task_or_mixture_name])
  task_names = _mixture_task_names(task_or_mixture_name)
  if not task_names:
    return None
  label_sets = {_CLASS_LABELS.get(name) for name in task_names}
  if len(label_sets) != 1 or None in label_sets:
    return None
  return list(label_sets.pop())


def _mixture_task_names(name: str) -> list[str]:
  """The names of the tasks (recursively) in a seqio Mixture, else []."""
  import seqio  # pylint: disable=g-import-not-at-top  # keep this module light.
  if name not in seqio.MixtureRegistry.names():
    return []
  return [task.name for task in seqio.MixtureRegistry.get(name).tasks]
