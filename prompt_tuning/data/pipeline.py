"""Datasets through seqio: a task or mixture, an encoder-decoder feature
converter without packing, batched for the model, this process's rows."""
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from prompt_tuning.data.padding import Padding, configured_padding, group_by_length
from prompt_tuning.data.errors import DataError
from prompt_tuning.data.sources import get_task
from prompt_tuning.model import partitioning


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
                layout: Optional[partitioning.DataLayout] = None,
                padding: Optional[Padding] = None) -> tf.data.Dataset:
  """Batched model features: this process's rows of each global batch.

  `layout` (partitioning.data_layout of the mesh; default: one shard) says
  which input shards this process reads: shard i is seqio's ShardInfo(i, n),
  batched by batch_size / n, and the process's shards are concatenated in
  order, so a global batch is the same whichever processes read it (one
  shard per host by default, as T5X reads; DATA_SHARDS sets the count).

  Batches are padded to `task_feature_lengths` (see `fit_batch` for cutting
  them); with padding.group_by_length (default: the run's configured_padding())
  each shard's batches are made of examples of similar length.
  """
  padding = configured_padding() if padding is None else padding
  get_task(mixture_or_task_name)
  layout = layout or partitioning.DataLayout(num_shards=1, shards=(0,), num_groups=1, group=0)
  problem = layout.batch_problem(batch_size)
  if problem:
    raise DataError(problem)
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
    if padding.group_by_length:
      parts.append(group_by_length(ds, layout.per_shard(batch_size), padding.group_by_length,
                                   seed))
    else:
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
