"""seqio DataSources for (Super)GLUE that fail clearly when data is missing.

`SuperGlueSource` reads TFDS `super_glue/<config>:1.0.2`, or the unzipped
official SuperGLUE release (JSONL) in the folder given as its `data_dir`. Both
give identical examples (see `superglue_jsonl`). The shipped tasks pass the
configured folder (`registration.configure`, i.e. SUPERGLUE_DATA_DIR in gin);
the `SUPERGLUE_DATA_DIR` environment variable is only the user-facing default
of that configuration (`default_superglue_data_dir`); likewise `SQUAD_DATA_DIR`
and `MRQA_DATA_DIR` for the question-answering sources of `qa_data`.

`PreparedTfdsSource` is a TfdsDataSource that never tries to download: when the
TFDS dataset is not prepared it raises an error that says how to prepare it.
"""
import os
from typing import Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.storage import file_utils
from prompt_tuning.tasks import superglue_jsonl

SUPERGLUE_DATA_DIR_ENV = "SUPERGLUE_DATA_DIR"
SQUAD_DATA_DIR_ENV = "SQUAD_DATA_DIR"
MRQA_DATA_DIR_ENV = "MRQA_DATA_DIR"
SUPERGLUE_TFDS_VERSION = "1.0.2"
# How a user points the tasks at the release, for error messages.
_SET_DATA_DIR = (f"--gin.SUPERGLUE_DATA_DIR (or ${SUPERGLUE_DATA_DIR_ENV}, or "
                 "registration.configure(superglue_data_dir=...))")


def default_superglue_data_dir() -> Optional[str]:
  """The user's default SuperGLUE release folder: $SUPERGLUE_DATA_DIR, else None (TFDS)."""
  return os.environ.get(SUPERGLUE_DATA_DIR_ENV) or None


def default_squad_data_dir() -> Optional[str]:
  """The user's default SQuAD v1.1 folder (train-v1.1.json, dev-v1.1.json):
  $SQUAD_DATA_DIR, else None (TFDS)."""
  return os.environ.get(SQUAD_DATA_DIR_ENV) or None


def default_mrqa_data_dir() -> Optional[str]:
  """The user's default MRQA 2019 folder (train/*.jsonl.gz, dev/*.jsonl.gz):
  $MRQA_DATA_DIR, else None (TFDS)."""
  return os.environ.get(MRQA_DATA_DIR_ENV) or None


class PreparedTfdsSource(seqio.TfdsDataSource):
  """A TfdsDataSource that raises a clear error instead of downloading."""

  def __init__(self, tfds_name: str, splits: Union[Sequence[str], Mapping[str, str]],
               tfds_data_dir: Optional[str] = None, hint: str = ""):
    """Constructor.

    Args:
      tfds_name: e.g. 'glue/sst2:2.0.0'.
      splits: the split names, or a mapping from the names the source
        exposes to the TFDS split names (e.g. {'validation': 'test'}).
      tfds_data_dir: optional TFDS data dir (else seqio's override / TFDS's).
      hint: appended to the error raised when the dataset is not prepared.
    """
    super().__init__(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir,
                     splits=splits)
    self._tfds_name = tfds_name
    self._hint = hint

  def _absent(self) -> bool:
    """Whether the dataset's folder is missing from the TFDS data dir. Then it
    is surely not prepared, and the TFDS builder is not made: making one for
    a dataset that is not there asks Google's bucket for its metadata over
    the network and leaves an empty /tmp/tmp*tfds folder behind."""
    loader = self.tfds_dataset
    data_dir = os.path.expanduser(loader.data_dir or tfds.core.constants.DATA_DIR)
    name = self._tfds_name.split(":")[0]
    return not file_utils.isdir(os.path.join(data_dir, *name.split("/")))

  def _check_prepared(self) -> None:
    loader = self.tfds_dataset
    if self._absent() or not loader.builder.is_prepared():
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
    if self._absent() or not self.tfds_dataset.builder.is_prepared():
      return None
    return super().num_input_examples(split)


class SuperGlueSource(seqio.DataSource):
  """SuperGLUE from the JSONL release in `data_dir`, or from TFDS without one."""

  def __init__(self, config: str, splits: Optional[Sequence[str]] = None,
               tfds_data_dir: Optional[str] = None,
               data_dir: Optional[Union[str, os.PathLike]] = None):
    """Constructor.

    Args:
      config: the TFDS super_glue config, e.g. 'rte', 'wsc.fixed', 'axb'.
      splits: the splits to expose (default all: train, validation, test; only
        test for the diagnostics axb/axg).
      tfds_data_dir: optional TFDS data dir (else seqio's override / TFDS's).
      data_dir: the unzipped official SuperGLUE release (holding
        `RTE/train.jsonl`, ...); None reads TFDS.
    """
    all_splits = superglue_jsonl.splits(config)
    splits = tuple(splits or all_splits)
    unknown = set(splits) - set(all_splits)
    if unknown:
      raise ValueError(f"SuperGLUE {config} has no splits {sorted(unknown)}.")
    self._config = config
    self._data_dir = os.fspath(data_dir) if data_dir else None
    self._tfds_name = f"super_glue/{config}:{SUPERGLUE_TFDS_VERSION}"
    files = ", ".join(superglue_jsonl.split_path("", config, s) for s in splits)
    self._tfds = PreparedTfdsSource(
        self._tfds_name, splits=splits,
        tfds_data_dir=tfds_data_dir,
        hint=(f"; or, without TFDS, set {_SET_DATA_DIR} to the unzipped official "
              f"SuperGLUE release (with {files})"))
    super().__init__(splits=splits)

  @property
  def config(self) -> str:
    return self._config

  @property
  def data_dir(self) -> Optional[str]:
    """The JSONL release folder read, or None when reading TFDS."""
    return self._data_dir

  @property
  def tfds_name(self) -> str:
    return self._tfds_name

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def __repr__(self):
    return (f"{self.__class__.__name__}(config={self._config!r}, "
            f"data_dir={self._data_dir!r}, tfds={self._tfds_name})")

  def jsonl_path(self, split: str, data_dir: Optional[str] = None) -> str:
    """The release file of `split` (under `data_dir`, else this source's)."""
    data_dir = data_dir or self._data_dir
    if not data_dir:
      raise ValueError(f"No SuperGLUE data dir: set {_SET_DATA_DIR}.")
    return superglue_jsonl.split_path(data_dir, self._config, split)

  def _read_jsonl(self, split: str) -> tf.data.Dataset:
    path = self.jsonl_path(split)
    if not file_utils.exists(path):
      raise FileNotFoundError(
          f"SuperGLUE file {path} not found: set {_SET_DATA_DIR} to the unzipped "
          f"official SuperGLUE release, or prepare TFDS {self._tfds_name} with "
          "`tfds build` and --tfds_data_dir (and leave SUPERGLUE_DATA_DIR unset).")
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
    if self._data_dir is None:
      return self._tfds.get_dataset(split=split, shuffle=shuffle, seed=seed,
                                    shard_info=shard_info)
    # The JSONL examples come in file order; seqio's Task shuffles examples.
    ds = self._read_jsonl(split)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds

  def list_shards(self, split: str) -> Sequence[str]:
    if self._data_dir is None:
      return self._tfds.list_shards(split)
    return [self.jsonl_path(split)]

  def num_input_examples(self, split: str) -> Optional[int]:
    if self._data_dir is None:
      return self._tfds.num_input_examples(split)
    return None  # Unknown without reading the file (MultiRC/ReCoRD expand).
