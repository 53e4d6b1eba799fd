"""Datasets through seqio: a task or mixture, an encoder-decoder feature
converter without packing, batched for the model."""
import importlib
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from prompt_tuning import partitioning
from prompt_tuning.tasks import features
from prompt_tuning.tasks import registration


class DataError(ValueError):
  """Unknown task, empty dataset and other data problems; says what to fix."""


def configure_sources(vocabulary=None,
                      superglue_data_dir: Optional[str] = None,
                      squad_data_dir: Optional[str] = None,
                      mrqa_data_dir: Optional[str] = None) -> registration.Settings:
  """Points the shipped tasks (prompt_tuning.tasks) at the run's vocabulary and data.

  Passes the run's VOCABULARY and SUPERGLUE_DATA_DIR (and SQuAD / MRQA folders)
  to `prompt_tuning.tasks.registration.configure`, which registers the shipped
  tasks and mixtures again with them: task modules imported before this call
  follow it as well as those imported after, and the latest call wins. None
  means the user's default ($PT_VOCABULARY_PATH or T5's vocabulary;
  $SUPERGLUE_DATA_DIR, $SQUAD_DATA_DIR, $MRQA_DATA_DIR, else TFDS). Sets no
  environment variable.

  Returns:
    The `registration.Settings` now in effect.
  """
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


def feature_converter():
  return seqio.EncDecFeatureConverter(pack=False)


def get_dataset(mixture_or_task_name: str,
                task_feature_lengths: Mapping[str, int],
                split: str,
                batch_size: int,
                shuffle: bool = True,
                seed: Optional[int] = 0,
                use_cached: bool = False,
                num_epochs: Optional[int] = None,
                layout: Optional[partitioning.DataLayout] = None) -> tf.data.Dataset:
  """Batched model features: this process's rows of each global batch.

  `layout` (partitioning.data_layout of the mesh; default: one shard) says
  which data shards this process reads: shard i is seqio's ShardInfo(i, n),
  batched by batch_size / n, and the process's shards are concatenated in mesh
  order, so a global batch is the same whichever processes read it.
  """
  get_task(mixture_or_task_name)
  layout = layout or partitioning.DataLayout(num_shards=1, shards=(0,), num_groups=1, group=0)
  if batch_size <= 0 or batch_size % layout.num_shards:
    raise DataError(f"BATCH_SIZE {batch_size} must be a positive multiple of the "
                    f"{layout.num_shards} data-parallel shards (devices / NUM_PARTITIONS)")
  parts = []
  for shard in layout.shards:
    try:
      ds = seqio.get_dataset(
          mixture_or_task_name, task_feature_lengths=dict(task_feature_lengths),
          dataset_split=split, shuffle=shuffle, num_epochs=num_epochs,
          feature_converter=feature_converter(),
          shard_info=seqio.ShardInfo(index=shard, num_shards=layout.num_shards),
          use_cached=use_cached, seed=seed)
    except (ValueError, KeyError, tf.errors.OpError, FileNotFoundError) as e:
      msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise DataError(f"cannot read split {split!r} of {mixture_or_task_name!r}: {msg}") from None
    parts.append(ds.batch(layout.per_shard(batch_size), drop_remainder=True))
  if len(parts) == 1:
    return parts[0]
  return tf.data.Dataset.zip(tuple(parts)).map(
      lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]})


def first_batch(ds: tf.data.Dataset, what: str):
  """The first batch, or a DataError when the dataset yields none."""
  for batch in ds.take(1).as_numpy_iterator():
    return batch
  raise DataError(f"{what} yields no examples (or fewer than one batch): check the task, "
                  "split, TASK_FEATURE_LENGTHS and BATCH_SIZE")
