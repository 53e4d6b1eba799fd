"""Datasets through seqio: a task or mixture, an encoder-decoder feature
converter without packing, batched for the model.

Length-aware padding (`Padding`, the PADDING / PADDING_BUCKETS /
GROUP_BY_LENGTH macros): seqio pads every batch to TASK_FEATURE_LENGTHS;
`fit_batch` cuts the trailing padding columns of a batch down to the smallest
bucket length that holds its longest example, separately for the encoder
(`encoder_*` features) and the decoder (`decoder_*` features), so a batch of
short examples costs what its examples need and only a few shapes compile.
Cutting padding columns is exact: padded positions are masked out of every
attention and carry zero loss weight, so every real position computes the
same values (up to float summation order). TASK_FEATURE_LENGTHS stays the
truncation length and the largest bucket.
"""
import dataclasses
import importlib
from typing import Mapping, Optional, Sequence

import gin
import jax
from jax.experimental import multihost_utils
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.model import partitioning
from prompt_tuning.tasks import features
from prompt_tuning.tasks import registration


class DataError(ValueError):
  """Unknown task, empty dataset and other data problems; says what to fix."""


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


# Bucket lengths: powers of two and 1.5x powers of two (8, 12, 16, 24, 32, 48,
# 64, 96, ...): consecutive buckets differ by at most 1.5x, so a batch is padded
# by at most a third of its length and, for uniformly spread lengths, by about
# 15% on average, while a feature of length 512 has at most 13 shapes (in
# practice the handful its batches' longest examples fall in; a feature of
# length 8, such as classification targets, keeps one).
DEFAULT_BUCKETS = tuple(sorted({2 ** k for k in range(3, 17)} | {3 * 2 ** k for k in range(2, 16)}))
PADDINGS = ("buckets", "fixed")


@dataclasses.dataclass(frozen=True)
class Padding:
  """How batches are padded.

  mode: 'buckets' (default): each batch is cut to the smallest bucket length
    that holds its longest example (encoder and decoder separately); 'fixed':
    every batch keeps TASK_FEATURE_LENGTHS (T5X's behaviour).
  buckets: increasing positive lengths (None: DEFAULT_BUCKETS); a feature of
    length N uses the buckets below N, and N itself.
  group_by_length: None (off), or N: training batches are made of examples of
    similar length, sorted within windows of N batches of the shuffled stream
    (the batches of a window are then shuffled, deterministically for the
    seed). Changes which examples share a batch, not which examples are seen.
  """
  mode: str = "buckets"
  buckets: Optional[Sequence[int]] = None
  group_by_length: Optional[int] = None

  def __post_init__(self):
    if self.mode not in PADDINGS:
      raise DataError(f"PADDING must be one of {', '.join(map(repr, PADDINGS))}; got "
                      f"{self.mode!r}")
    if self.buckets is not None:
      ok = (isinstance(self.buckets, (list, tuple)) and len(self.buckets) > 0
            and all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b > 0
                    for b in self.buckets)
            and all(a < b for a, b in zip(self.buckets, self.buckets[1:])))
      if not ok:
        raise DataError("PADDING_BUCKETS must be a list of increasing positive integers "
                        f"(e.g. [32, 64, 128, 256]), or None for the default; got "
                        f"{self.buckets!r}")
      object.__setattr__(self, "buckets", tuple(int(b) for b in self.buckets))
    g = self.group_by_length
    if g is not None and (isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1):
      raise DataError("GROUP_BY_LENGTH must be a positive integer (a window of that many "
                      f"batches), or None to keep the shuffled order; got {g!r}")

  def ladder(self, width: int) -> tuple:
    """The bucket lengths of a feature padded to `width`: those below it, and it."""
    if self.mode == "fixed":
      return (width,)
    return tuple(b for b in (self.buckets or DEFAULT_BUCKETS) if b < width) + (width,)

  def bucket(self, needed: int, width: int) -> int:
    """The smallest bucket of `width`'s ladder that holds `needed` positions."""
    return next(b for b in self.ladder(width) if b >= needed)


@gin.configurable(module="data")
def configured_padding(mode: str = "buckets", buckets: Optional[Sequence[int]] = None,
                       group_by_length: Optional[int] = None) -> Padding:
  """The run's Padding (gin: PADDING, PADDING_BUCKETS, GROUP_BY_LENGTH); DataError
  naming the macro when a value is bad."""
  return Padding(mode, None if buckets is None else (
      list(buckets) if isinstance(buckets, (list, tuple)) else buckets), group_by_length)


GROUPS = ("encoder", "decoder")


def _group(name: str) -> Optional[str]:
  prefix = name.split("_", 1)[0]
  return prefix if prefix in GROUPS else None


def needed_lengths(batch) -> np.ndarray:
  """[encoder, decoder] positions this batch needs: one past the last position
  where any row of any of the group's [b, len] features is nonzero (seqio pads
  with 0 at the end; a real token is never 0, and loss weights and targets
  mark every real decoder position)."""
  out = np.zeros(len(GROUPS), np.int64)
  for name, value in batch.items():
    group = _group(name)
    value = np.asarray(value)
    if group is None or value.ndim < 2 or value.shape[0] == 0:
      continue
    used = np.any(value.reshape(value.shape[:2] + (-1,)) != 0, axis=(0, 2))
    nonzero = np.flatnonzero(used)
    if nonzero.size:
      i = GROUPS.index(group)
      out[i] = max(out[i], int(nonzero[-1]) + 1)
  return out


def agreed_lengths(needed: np.ndarray) -> np.ndarray:
  """The maximum of `needed` over all processes (each holds different rows of a
  global batch; all must cut it alike). One tiny all-gather, multi-process only."""
  if jax.process_count() == 1:
    return needed
  gathered = np.asarray(multihost_utils.process_allgather(np.asarray(needed, np.int64)))
  return gathered.reshape(-1, len(GROUPS)).max(axis=0)


def fit_batch(batch, padding: Optional[Padding] = None, *, multihost: bool = True):
  """`batch` with its [b, len] features cut to their bucket lengths.

  padding: None = the run's configured_padding(). 'fixed' returns the batch as
  it is. Every process must call this for every global batch when there are
  several (`multihost`=False when each process already holds the same global
  batch, so no agreement is needed). Features other than `encoder_*` /
  `decoder_*` arrays of rank >= 2 pass unchanged.
  """
  padding = configured_padding() if padding is None else padding
  if padding.mode == "fixed":
    return batch
  needed = needed_lengths(batch)
  if multihost:
    needed = agreed_lengths(needed)
  out = {}
  for name, value in batch.items():
    group = _group(name)
    if group is None or np.ndim(value) < 2:
      out[name] = value
      continue
    width = value.shape[1]
    length = padding.bucket(int(needed[GROUPS.index(group)]), width)
    out[name] = value if length == width else value[:, :length]
  return out


def padded_fraction(batch) -> float:
  """The share of the batch's token positions (encoder inputs and decoder
  targets) that are padding."""
  total = real = 0
  for name in ("encoder_input_tokens", "decoder_target_tokens"):
    if name in batch:
      value = np.asarray(batch[name])
      total += value.size
      real += int(np.count_nonzero(value))
  return 1.0 - real / max(total, 1)


def group_by_length(ds: tf.data.Dataset, batch_size: int, window: int,
                    seed: Optional[int]) -> tf.data.Dataset:
  """Batches of `batch_size` from an unbatched converted dataset, examples of
  similar length together: each window of `window` * batch_size examples is
  sorted by (encoder, decoder) length, cut into batches (the last
  n % batch_size examples of a short final window are dropped, as batching
  drops them), and those batches are put in an order drawn from (seed,
  window number), so the stream is deterministic and not ordered by length."""
  seed = 0 if seed is None else int(seed)

  def last(x):  # [n, len] -> [n] one past the last nonzero position
    nonzero = tf.cast(tf.not_equal(x, 0), tf.int64)
    positions = tf.range(1, tf.shape(x, out_type=tf.int64)[1] + 1)
    return tf.reduce_max(nonzero * positions[None, :], axis=1)

  def regroup(number, examples):
    enc = last(examples["encoder_input_tokens"])
    dec = last(examples["decoder_target_tokens"])
    order = tf.argsort(enc * 1_000_000 + dec, stable=True)
    n = tf.shape(order)[0] // batch_size
    order = tf.reshape(order[:n * batch_size], [n, batch_size])
    shuffle = tf.argsort(tf.random.stateless_uniform(
        [n], seed=tf.stack([tf.constant(seed, tf.int64), number])))
    order = tf.reshape(tf.gather(order, shuffle), [-1])
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.gather(v, order) for k, v in examples.items()}).batch(batch_size)

  return ds.batch(batch_size * window).enumerate().flat_map(regroup)


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
  which data shards this process reads: shard i is seqio's ShardInfo(i, n),
  batched by batch_size / n, and the process's shards are concatenated in mesh
  order, so a global batch is the same whichever processes read it.

  Batches are padded to `task_feature_lengths` (see `fit_batch` for cutting
  them); with padding.group_by_length (default: the run's configured_padding())
  each shard's batches are made of examples of similar length.
  """
  padding = configured_padding() if padding is None else padding
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
