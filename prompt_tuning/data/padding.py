"""Length-aware padding (`Padding`, the PADDING / PADDING_BUCKETS /
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
from typing import Optional, Sequence

import gin
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf

from prompt_tuning.data.errors import DataError


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


