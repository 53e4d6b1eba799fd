"""`run.json`: a machine-readable record of a run, written at its start beside
`config.gin` (config.gin is for gin; this is for tools such as `pt-sweep
report`).

    {"version": 1, "macros": {every gin macro: its value}, "gin_files": [...],
     "gin_bindings": [...], "random_seed": 0, "package_version": "0.1.0",
     "jax_version": ..., "platform": "cpu", "device_kind": "cpu",
     "device_count": 8, "process_count": 2, "mixture_or_task_name": ...,
     "train_steps": 300, "batch_size": 32, "data_shards": 8,
     "frozen_checkpoint": {"path": ..., "sha256": ...},
     "start_time": "2026-11-24T10:00:00+00:00"}

Macro values are JSON where they can be (numbers, strings, booleans, null,
lists, dicts) and gin's own text otherwise (`@models.EncoderDecoderModel()`).
`bindings` holds every binding of the operative config as gin text
(`{"PROMPT_LENGTH": "6", "optimizers.adafactor.learning_rate": "0.3",
"data.DataConfig.batch_size": "%BATCH_SIZE", ...}`):
what a resume is compared against (`changes`). `frozen_checkpoint` is the
sha256 of the frozen T5X checkpoint's msgpack file (`fingerprint`): a resume,
and pt-eval of the run against the same path, refuse a checkpoint that
changed since. A resume keeps the first record and appends `{"step", "time",
"changed"}` to its `resumes`.
"""
import datetime
import importlib.metadata
import json
import os

from absl import flags
import gin
import jax

from prompt_tuning import gin_utils
from prompt_tuning.storage import file_utils
from prompt_tuning.storage import run_json

VERSION = 1


def _jsonable(value):
  try:
    json.dumps(value)
    return value
  except (TypeError, ValueError):
    return gin_utils.format_value(value)


def macro_values() -> dict:
  """{MACRO: value} for every macro of the parsed gin config."""
  return {name: _jsonable(gin.query_parameter(f"%{name}"))
          for name in sorted(gin_utils.defined_macros())}


def bindings() -> dict:
  """{'MACRO' or 'selector.param': gin text} for every binding of the parsed config."""
  return gin_utils.bindings()


# Settings a run may change when resumed: they do not change what it trains.
# (TRAIN_STEPS may change too, but not below the steps already done.)
RESUMABLE = frozenset([
    "TRAIN_STEPS", "EVAL_PERIOD", "LOG_PERIOD", "CHECKPOINT_PERIOD", "KEEP_CHECKPOINTS",
    "EVAL_DECODING", "USE_CACHED_TASKS", "MIXTURE_OR_TASK_MODULE", "SUPERGLUE_DATA_DIR",
    "SQUAD_DATA_DIR", "MRQA_DATA_DIR",
    "MODEL_DIR", "NUM_PARTITIONS", "partitioning.make_mesh.num_partitions",
    # The input shard count changes the data order from the resume on (a
    # replay warns); it is how many hosts read, as the device count is.
    "DATA_SHARDS", "partitioning.configured_data_shards.data_shards",
    # How batches are padded, what the backward pass recomputes and how greedy
    # decoding runs change float rounding, memory and speed, not what trains.
    "PADDING", "PADDING_BUCKETS", "data.configured_padding.mode",
    "data.configured_padding.buckets", "REMAT_POLICY", "t5.T5Config.remat_policy",
    "models.EncoderDecoderModel.cached_decoding"] + [
        f"trainer.train.{param}" for param in (
            "train_steps", "eval_period", "log_period", "checkpoint_period", "keep_checkpoints",
            "eval_decoding", "eval_split", "eval_batch_size", "model_dir", "stop_after_step")] + [
        f"data.DataConfig.{param}" for param in (
            "use_cached_tasks", "mixture_or_task_module", "superglue_data_dir", "squad_data_dir",
            "mrqa_data_dir")])


def _current_names(bindings: dict) -> dict:
  """Bindings under today's names: a record written before DataConfig holds
  the data settings as `trainer.train.batch_size`, ..., today's as
  `data.DataConfig.batch_size` (with `trainer.train.data_config` pointing
  there), so that an old run resumes unchanged."""
  from prompt_tuning.data import config  # pylint: disable=g-import-not-at-top
  out = {}
  for key, value in bindings.items():
    selector, _, param = key.rpartition(".")
    if selector == "trainer.train" and param in config.FIELDS:
      key = f"data.DataConfig.{param}"
    elif key == "trainer.train.data_config" and value == "@data.DataConfig()":
      continue
    out[key] = value
  return out


def changes(previous: dict, current: dict) -> tuple:
  """(meaningful, harmless): {name: (old, new)} between two records' bindings.

  A binding present in one only counts as changed from/to `None`.
  """
  old = _current_names(previous.get("bindings", {}))
  new = _current_names(current.get("bindings", {}))
  diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)}
  meaningful = {k: v for k, v in diff.items() if k not in RESUMABLE}
  harmless = {k: v for k, v in diff.items() if k in RESUMABLE}
  return meaningful, harmless


def resumed(previous: dict, current: dict, step: int, harmless: dict) -> dict:
  """The record of a resumed run: the first one, plus this resume."""
  out = dict(previous)
  out["resumes"] = list(previous.get("resumes", [])) + [{
      "step": step, "time": current["start_time"],
      "changed": {k: list(v) for k, v in harmless.items()}}]
  for key in ("macros", "bindings", "train_steps", "gin_files", "gin_bindings",
              "package_version", "jax_version", "platform", "device_kind", "device_count",
              "process_count", "data_shards"):
    out[key] = current[key]  # what the run now continues with
  if current.get("frozen_checkpoint"):  # the same sha256 (checked), maybe moved
    out["frozen_checkpoint"] = current["frozen_checkpoint"]
  return out


def _command_line():
  """The gin files and bindings of the command line (empty when not run from one)."""
  if not flags.FLAGS.is_parsed() or "gin_file" not in flags.FLAGS:
    return [], []
  return list(flags.FLAGS.gin_file), list(flags.FLAGS.gin_bindings)


def _package_version():
  try:
    return importlib.metadata.version("prompt-tuning-jax")
  except importlib.metadata.PackageNotFoundError:
    return None


def build(*, mixture_or_task_name, train_steps, batch_size, random_seed, data_shards,
          frozen_checkpoint=None) -> dict:
  """`frozen_checkpoint`: {"path", "sha256"} of the frozen T5X checkpoint
  (t5x_checkpoints.fingerprint), or None for a random frozen model."""
  gin_files, gin_bindings = _command_line()
  devices = jax.devices()
  return {
      "frozen_checkpoint": frozen_checkpoint,
      "version": VERSION,
      "macros": macro_values(),
      "bindings": bindings(),
      "gin_files": gin_files,
      "gin_bindings": gin_bindings,
      "random_seed": random_seed,
      "package_version": _package_version(),
      "jax_version": jax.__version__,
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "process_count": jax.process_count(),
      "mixture_or_task_name": mixture_or_task_name,
      "train_steps": train_steps,
      "batch_size": batch_size,
      "data_shards": data_shards,
      "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def write(model_dir: str, record: dict) -> None:
  """Writes MODEL_DIR/run.json (storage/run_json.py reads and checks it)."""
  file_utils.write_text_atomic(os.path.join(model_dir, run_json.FILENAME),
                               json.dumps(record, indent=1, sort_keys=True) + "\n")
