"""The train data position, saved with each numpy checkpoint (T5X's way).

A resume restores the tf.data iterator where the checkpoint left it instead of
replaying (recomputing) every batch before it. The iterator's state is what
`tf.train.Checkpoint(ds=iterator)` writes: the position of every dataset op,
the shuffle buffer, the shuffle seeds (so later epochs reshuffle as an
uninterrupted run would) and the prefetched batches. Each process saves its
own iterator, as the two files of a tf.train.Checkpoint with the prefix
`train_ds-{process_index:03}-of-{process_count:03}` (T5X's names);
numpy_checkpoints stores them in the checkpoint folder, covered by its
checksums.json like every other file.

A pipeline with Python state (a tf.py_function or Dataset.from_generator
source in a custom task) cannot be checkpointed: the first save logs one
warning and no iterator state is saved; a resume then replays the data
stream up to its step (`resume`), as it does for a checkpoint written by an
older version or for another data layout.
"""
import os
import shutil
import tempfile
import time
from typing import Mapping, Optional, Tuple

from absl import logging
import jax
import tensorflow as tf

from prompt_tuning.model import partitioning
from prompt_tuning.storage import numpy_checkpoints

PREFIX = "train_ds"


def prefix(process_index: int, process_count: int) -> str:
  """T5X's name of one process's data state: `train_ds-000-of-002`."""
  return f"{PREFIX}-{process_index:03}-of-{process_count:03}"


def is_state_file(filename: str) -> bool:
  return filename.startswith(PREFIX + "-")


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


class TrainIterator:
  """Numpy batches of a tf.data.Dataset (as `as_numpy_iterator` yields them),
  from a tf iterator whose state can be saved and restored."""

  def __init__(self, ds: tf.data.Dataset):
    self._iterator = iter(ds)
    self.checkpointable = True

  def __iter__(self):
    return self

  def __next__(self):
    return tf.nest.map_structure(lambda t: t.numpy(), next(self._iterator))

  def advance(self, steps: int) -> int:
    """Replays `steps` batches (a resume without a saved data state); returns
    how many there were (fewer when the data runs out)."""
    for done in range(steps):
      try:
        next(self._iterator)
      except StopIteration:
        return done
    return steps

  def state_files(self, name: str) -> Optional[dict]:
    """{filename: bytes}: this iterator's state as tf.train.Checkpoint writes it
    with the prefix `name`; None (after one warning) when the pipeline cannot
    be checkpointed."""
    if not self.checkpointable:
      return None
    tmp = tempfile.mkdtemp(prefix="pt-train-data-")
    try:
      tf.train.Checkpoint(ds=self._iterator).write(os.path.join(tmp, name))
      return {f: _read_local(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))
              if f.startswith(name + ".")}
    except (tf.errors.OpError, ValueError, TypeError) as e:
      self.checkpointable = False
      logging.warning(
          "the train data pipeline cannot be checkpointed (%s; a tf.py_function or "
          "Dataset.from_generator source in a custom task): checkpoints "
          "hold no data position, and a resume replays the data stream up to its step",
          _first_line(e))
      return None
    finally:
      shutil.rmtree(tmp, ignore_errors=True)

  def restore(self, name: str, files: Mapping[str, bytes]) -> Optional[str]:
    """Restores the state `state_files(name)` returned; None on success, else
    why not (this iterator must then not be used)."""
    tmp = tempfile.mkdtemp(prefix="pt-train-data-")
    try:
      for filename, data in files.items():
        with open(os.path.join(tmp, filename), "wb") as f:
          f.write(data)
      tf.train.Checkpoint(ds=self._iterator).read(os.path.join(tmp, name)).assert_consumed()
      return None
    except (tf.errors.OpError, ValueError, TypeError, AssertionError) as e:
      return (f"its data state does not fit this input pipeline ({_first_line(e)}); were the "
              "data settings or package versions changed?")
    finally:
      shutil.rmtree(tmp, ignore_errors=True)


def _read_local(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def layout_key(mesh) -> str:
  """The data shards each process reads, e.g. '8:0-3,4-7': a saved data state
  fits only the same layout."""
  spans = []
  for i in range(jax.process_count()):
    shards = partitioning.data_layout(mesh, i).shards
    spans.append(f"{shards[0]}-{shards[-1]}")
  return f"{partitioning.data_layout(mesh).num_shards}:{','.join(spans)}"


def resume(train_ds, start_step: int, directory: Optional[str], saved_layout: Optional[str],
           key: str, batch_size: int) -> Tuple[TrainIterator, int]:
  """(iterator, steps): this process's train batches from `start_step` on.

  The data state of checkpoint `directory` is restored when it was saved for
  this data layout (`key`, as `layout_key` makes it; `saved_layout` is the
  checkpoint's) and fits the pipeline; otherwise the stream is replayed from
  the start, with a warning. `steps` is `start_step`, or fewer when a replay
  ran out of data first.
  """
  name = prefix(jax.process_index(), jax.process_count())
  if not start_step:
    return TrainIterator(train_ds), 0
  files = numpy_checkpoints.load_files(directory, name)
  replay = None
  if files is None:
    why = (f"it holds no data state ({name}.*; written by an older version, or the input "
           "pipeline cannot be checkpointed)")
  elif saved_layout != key:
    why = (f"its data state was saved for another data layout (shards per process "
           f"{saved_layout}, now {key})")
  else:
    # Each new iterator of train_ds draws the next shuffle seeds: the replay
    # fallback must be made first, as an uninterrupted run's iterator was.
    replay = TrainIterator(train_ds)
    restored = TrainIterator(train_ds)
    t = time.time()
    why = restored.restore(name, files)
    if why is None:
      logging.info("restored the data position of step %d from %s in %.2fs (no replay)",
                   start_step, directory, time.time() - t)
      return restored, start_step
  logging.warning("%s: %s; replaying the data stream up to step %d (%d examples), which "
                  "recomputes them", directory, why, start_step, start_step * batch_size)
  iterator = replay or TrainIterator(train_ds)
  t = time.time()
  done = iterator.advance(start_step)
  logging.info("replayed %d steps of data in %.1fs", done, time.time() - t)
  return iterator, done
