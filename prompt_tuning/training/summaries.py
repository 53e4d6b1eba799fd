"""Training summaries: TensorBoard through clu's metric writers (what T5X
uses), and the metrics a prompt module reports through Flax's
`intermediates` collection."""
import json
from typing import Mapping, Optional

from clu import metric_writers
import gin

from prompt_tuning.storage import file_utils


def writer(log_dir: Optional[str], *, asynchronous: bool = True) -> metric_writers.MetricWriter:
  """A clu writer of TensorBoard event files under `log_dir` (T5X writes
  MODEL_DIR/train), also logging each value at INFO; None writes no files.
  Asynchronous: a write does not wait for the file system. `close()` flushes.
  A gs:// `log_dir` is written through the storage layer (file_utils.Mirror):
  each `flush()` copies the event files there."""
  if log_dir is not None and file_utils.is_remote(log_dir):
    mirror = file_utils.Mirror(log_dir)
    return _Mirrored(writer(mirror.local, asynchronous=asynchronous), mirror)
  return metric_writers.create_default_writer(log_dir, just_logging=log_dir is None,
                                              asynchronous=asynchronous)


class _Mirrored(metric_writers.MultiWriter):
  """A writer into a local mirror of a gs:// folder, synced on flush and close."""

  def __init__(self, inner, mirror):
    super().__init__([inner])
    self._mirror = mirror

  def flush(self):
    super().flush()
    self._mirror.sync()

  def close(self):
    super().close()
    self._mirror.close()


def write_config(metric_writer, step: int, macros: Mapping[str, object]) -> None:
  """The operative gin config as TensorBoard text (`config`, as T5X shows it)
  and the run's scalar macros as HParams (a sweep's points compare in
  TensorBoard's HParams tab)."""
  metric_writer.write_texts(step, {"config": gin.markdown(gin.operative_config_str())})
  hparams = {}
  for name, value in macros.items():
    if isinstance(value, (bool, int, float, str)) and not (isinstance(value, str) and
                                                          len(value) > 200):
      hparams[name] = value
    elif value is None or isinstance(value, (list, dict)):
      hparams[name] = json.dumps(value)
  metric_writer.write_hparams(hparams)
