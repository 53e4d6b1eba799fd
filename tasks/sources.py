"""seqio DataSources for (Super)GLUE that fail clearly when data is missing.

`SuperGlueSource` reads TFDS `super_glue/<config>:1.0.2` by default, or the
unzipped official SuperGLUE release (JSONL) when a data dir is configured
through `set_superglue_data_dir(path)` or the `SUPERGLUE_DATA_DIR` environment
variable. The choice is made each time a dataset is built, so the same
registered task works either way. Both give identical examples (see
`superglue_jsonl`).

`PreparedTfdsSource` is a TfdsDataSource that never tries to download: when the
TFDS dataset is not prepared it raises an error that says how to prepare it.
"""
import os
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.tasks import superglue_jsonl

SUPERGLUE_DATA_DIR_ENV = "SUPERGLUE_DATA_DIR"
SUPERGLUE_TFDS_VERSION = "1.0.2"

_superglue_data_dir: Optional[str] = None


def set_superglue_data_dir(path: Optional[str]) -> None:
  """Reads SuperGLUE from the unzipped official release at `path`.

  Takes precedence over $SUPERGLUE_DATA_DIR; `None` goes back to the
  environment variable (and to TFDS when that is unset too).

  Args:
    path: folder holding `BoolQ/train.jsonl`, `RTE/val.jsonl`, ...
  """
  global _superglue_data_dir
  _superglue_data_dir = os.fspath(path) if path is not None else None


def get_superglue_data_dir() -> Optional[str]:
  """The configured SuperGLUE release folder, or None to read TFDS."""
  return _superglue_data_dir or os.environ.get(SUPERGLUE_DATA_DIR_ENV) or None


class PreparedTfdsSource(seqio.TfdsDataSource):
  """A TfdsDataSource that raises a clear error instead of downloading."""

  def __init__(self, tfds_name: str, splits: Sequence[str],
               tfds_data_dir: Optional[str] = None, hint: str = ""):
    """Constructor.

    Args:
      tfds_name: e.g. 'glue/sst2:2.0.0'.
      splits: the split names.
      tfds_data_dir: optional TFDS data dir (else seqio's override / TFDS's).
      hint: appended to the error raised when the dataset is not prepared.
    """
    super().__init__(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir,
                     splits=splits)
    self._tfds_name = tfds_name
    self._hint = hint

  def _check_prepared(self) -> None:
    loader = self.tfds_dataset
    if not loader.builder.is_prepared():
      data_dir = loader.data_dir or tfds.core.constants.DATA_DIR
      raise FileNotFoundError(
          f"TFDS dataset {self._tfds_name} is not prepared in {data_dir}. "
          f"Prepare it with `tfds build {self._tfds_name.split(':')[0]} "
          "--data_dir=<dir>` on a machine with network access, copy <dir> "
          "here and pass it as --tfds_data_dir (or set $TFDS_DATA_DIR)"
          f"{self._hint}.")

  def get_dataset(self, split: Optional[str] = None, shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  **kwargs) -> tf.data.Dataset:
    self._check_prepared()
    return super().get_dataset(split=split, shuffle=shuffle, seed=seed,
                               shard_info=shard_info, **kwargs)

  def list_shards(self, split: str) -> Sequence[str]:
    self._check_prepared()
    return super().list_shards(split)

  def num_input_examples(self, split: str) -> Optional[int]:
    if not self.tfds_dataset.builder.is_prepared():
      return None
    return super().num_input_examples(split)


class SuperGlueSource(seqio.DataSource):
  """SuperGLUE from TFDS, or from the JSONL release when a data dir is set."""

  def __init__(self, config: str, splits: Optional[Sequence[str]] = None,
               tfds_data_dir: Optional[str] = None):
    """Constructor.

    Args:
      config: the TFDS super_glue config, e.g. 'rte', 'wsc.fixed', 'axb'.
      splits: the splits to expose (default all: train, validation, test; only
        test for the diagnostics axb/axg).
      tfds_data_dir: optional TFDS data dir (else seqio's override / TFDS's).
    """
    all_splits = superglue_jsonl.splits(config)
    splits = tuple(splits or all_splits)
    unknown = set(splits) - set(all_splits)
    if unknown:
      raise ValueError(f"SuperGLUE {config} has no splits {sorted(unknown)}.")
    self._config = config
    self._tfds_name = f"super_glue/{config}:{SUPERGLUE_TFDS_VERSION}"
    files = ", ".join(superglue_jsonl.split_path("", config, s) for s in splits)
    self._tfds = PreparedTfdsSource(
        self._tfds_name, splits=splits,
        tfds_data_dir=tfds_data_dir,
        hint=(f"; or, without TFDS, set {SUPERGLUE_DATA_DIR_ENV} (or call "
              "set_superglue_data_dir) to the unzipped official SuperGLUE "
              f"release (with {files})"))
    super().__init__(splits=splits)

  @property
  def config(self) -> str:
    return self._config

  @property
  def tfds_name(self) -> str:
    return self._tfds_name

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def __repr__(self):
    return (f"{self.__class__.__name__}(config={self._config!r}, "
            f"data_dir={get_superglue_data_dir()!r}, tfds={self._tfds_name})")

  def jsonl_path(self, split: str, data_dir: Optional[str] = None) -> str:
    """The release file of `split` (under `data_dir` or the configured dir)."""
    data_dir = data_dir or get_superglue_data_dir()
    if not data_dir:
      raise ValueError(
          f"No SuperGLUE data dir: set {SUPERGLUE_DATA_DIR_ENV} or call "
          "set_superglue_data_dir().")
    return superglue_jsonl.split_path(data_dir, self._config, split)

  def _read_jsonl(self, split: str, data_dir: str) -> tf.data.Dataset:
    path = self.jsonl_path(split, data_dir)
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(
          f"SuperGLUE file {path} not found: set {SUPERGLUE_DATA_DIR_ENV} to "
          "the unzipped official SuperGLUE release, or prepare TFDS "
          f"{self._tfds_name} with `tfds build` and --tfds_data_dir (and "
          f"unset {SUPERGLUE_DATA_DIR_ENV}).")
    examples = superglue_jsonl.read_examples(path, self._config)
    return superglue_jsonl.examples_to_dataset(examples, self._config)

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # Unused.
    if split not in self.splits:
      raise ValueError(
          f"SuperGLUE {self._config} has no split {split!r}; splits: "
          f"{self.splits}.")
    data_dir = get_superglue_data_dir()
    if data_dir is None:
      return self._tfds.get_dataset(split=split, shuffle=shuffle, seed=seed,
                                    shard_info=shard_info)
    # The JSONL examples come in file order; seqio's Task shuffles examples.
    ds = self._read_jsonl(split, data_dir)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds

  def list_shards(self, split: str) -> Sequence[str]:
    if get_superglue_data_dir() is None:
      return self._tfds.list_shards(split)
    return [self.jsonl_path(split)]

  def num_input_examples(self, split: str) -> Optional[int]:
    if get_superglue_data_dir() is None:
      return self._tfds.num_input_examples(split)
    return None  # Unknown without reading the file (MultiRC/ReCoRD expand).
