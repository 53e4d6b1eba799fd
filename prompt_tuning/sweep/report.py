"""Results table and figures for a sweep of runs: `pt-sweep report ROOT`.

ROOT is a sweep folder (ROOT/sweep.json lists the points, each run in
ROOT/<point name>/), any folder of run folders (found by their run.json up to
two levels down), or one run folder. For every run, `collect` joins

  run.json                               the run record: every gin macro, versions, start
  inference_eval/{task}-metrics.jsonl    seqio's JSONLogger, a line per evaluation (rank/
                                         when the top level has none: EVAL_DECODING='both')
  train/events.out.tfevents.*            tf.summary scalars: loss, examples_per_second, ...
  numpy_checkpoints/checkpoint_{step}/   steps done = the largest step

into one row: the swept values, status, steps, and for each metric its final
value, its best (max; min for loss-like metrics) and the step of the best.
`aggregate` reduces the rows over RANDOM_SEED (mean, sample std, n per column).
`write_report` writes ROOT/results.csv (full precision; missing = empty cell),
ROOT/results.md (rounded; missing = '–') and the figures of
prompt_tuning.sweep.plots under ROOT/plots/.

Run folders are only read, so a report of a running sweep is safe. A damaged
file of one run gives a warning and missing values, not a failed report.
"""
import ast
import collections
import csv
import dataclasses
import io
import json
import logging
import math
import os
import posixpath
import re
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.storage import file_utils
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.sweep import plots as plots_lib
from prompt_tuning import tables

MANIFEST = "sweep.json"
RUN_RECORD = "run.json"
EVAL_DIR = "inference_eval"
TRAIN_DIR = "train"
PLOTS_DIR = "plots"
CSV_FILE = "results.csv"
MD_FILE = "results.md"
SEED_AXIS = "RANDOM_SEED"
MISSING = "–"  # a missing markdown cell (never 0)
PROG = "pt-sweep"

_METRICS_SUFFIX = "-metrics.jsonl"
_DECODING_DIRS = ("rank", "greedy")  # EVAL_DECODING='both' logs under these
_IGNORED_MACROS = ("MODEL_DIR",)  # differs between runs by construction
# Words of a metric name that make lower better (best = min).
_LOWER_IS_BETTER = frozenset(
    ("loss", "nll", "perplexity", "ppl", "error", "err", "wer", "cer", "mse", "mae", "rmse"))
_LOG_X_AXES = re.compile(r"PROMPT_LENGTH|SIZE|PARAMS|PARAMETERS", re.IGNORECASE)
_MODEL_SIZES = ("small", "base", "large", "xl", "xxl")
_ERROR_LINE = re.compile(r"^(pt-[\w-]+): error: (.*)$", re.MULTILINE)
_GIN_MACRO = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*$", re.MULTILINE)
_RUN_NUMBERS = ("steps_done", "train_steps", "train_loss", "examples_per_second")
_METRIC_PARTS = ("final", "best", "best_step")
# Aggregates and the ablation use these runs only: a running run's latest value
# is not its final one ('unknown': a run from before run.json, finished or not).
_FINISHED = ("done", "unknown")
_LOG_TAIL_BYTES = 1 << 16


class ReportError(Exception):
  """Bad input to the report; printed as one `pt-sweep: error: ...` line."""


Series = List[Tuple[int, float]]  # (step, value), steps ascending and unique


@dataclasses.dataclass
class Run:
  """What one run folder holds (None/empty where a file is absent or damaged)."""
  name: str
  model_dir: str
  point: Optional[dict] = None  # its sweep.json point
  record: Optional[dict] = None  # run.json
  settings: Dict[str, Any] = dataclasses.field(default_factory=dict)  # gin macros
  values: Dict[str, Any] = dataclasses.field(default_factory=dict)  # swept axis -> value
  metrics: Dict[str, Series] = dataclasses.field(default_factory=dict)  # 'task/metric'
  main_metric: Optional[str] = None
  train: Dict[str, Series] = dataclasses.field(default_factory=dict)  # tag -> series
  steps_done: Optional[int] = None
  train_steps: Optional[int] = None
  error: Optional[str] = None
  status: str = "not started"


@dataclasses.dataclass
class Sweep:
  root: str
  runs: List[Run]
  axes: List[str]  # swept axes, RANDOM_SEED last when inferred
  axis_values: Dict[str, list]  # each axis' values in the manifest's order
  metrics: List[str]  # metric columns, the main metric first
  main_metric: Optional[str]
  warnings: List[str]


# Small helpers.


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _key(value) -> str:
  """A hashable, order-stable identity of a JSON value (lists and dicts included)."""
  return json.dumps(value, sort_keys=True)


def _is_dir(path: str) -> bool:
  return file_utils.isdir(path)


def _basename(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[-1] or path


def _first_int(*candidates) -> Optional[int]:
  for candidate in candidates:
    if isinstance(candidate, int) and not isinstance(candidate, bool):
      return candidate
    if isinstance(candidate, float) and candidate.is_integer():
      return int(candidate)
  return None


def _same_dir(path: str) -> str:
  """A key under which two spellings of one folder compare equal."""
  return path.rstrip("/") if file_utils.is_remote(path) else os.path.abspath(path)


def _read_json(path: str):
  """Parsed JSON of a file; ValueError (with the reason) when it is damaged."""
  try:
    return json.loads(file_utils.read_bytes(path).decode("utf-8"))
  except UnicodeDecodeError as e:
    raise ValueError(f"not UTF-8 text: {e.reason}") from None


def _label(value) -> str:
  """A swept value as tables and legends show it (a gin file by its stem)."""
  if value is None:
    return MISSING
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, str) and value.endswith(".gin"):
    return "+".join(posixpath.splitext(posixpath.basename(p))[0] for p in value.split("+"))
  if isinstance(value, (list, tuple)):
    return "+".join(_label(v) for v in value)
  if isinstance(value, dict):
    return json.dumps(value, sort_keys=True)
  return str(value)


# Finding the runs.


def _is_run_folder(path: str) -> bool:
  # numpy_checkpoints/ also marks runs from before run.json existed.
  return (file_utils.exists(os.path.join(path, RUN_RECORD)) or
          _is_dir(os.path.join(path, numpy_checkpoints.DIRNAME)))


def _run_folders(root: str) -> List[str]:
  """Run folders one or two levels below root (not inside another run folder)."""
  found = []
  for child in sorted(file_utils.listdir(root)):
    path = os.path.join(root, child.rstrip("/"))
    if not _is_dir(path):
      continue
    if _is_run_folder(path):
      found.append(path)
      continue
    for grandchild in sorted(file_utils.listdir(path)):
      inner = os.path.join(path, grandchild.rstrip("/"))
      if _is_dir(inner) and _is_run_folder(inner):
        found.append(inner)
  return found


def _load_manifest(path: str) -> dict:
  try:
    manifest = _read_json(path)
  except (OSError, ValueError) as e:
    raise ReportError(f"{path} is damaged: {e}") from None
  points = manifest.get("points") if isinstance(manifest, dict) else None
  if not isinstance(points, list) or not all(
      isinstance(p, dict) and isinstance(p.get("name"), str) for p in points):
    raise ReportError(f"{path} is damaged: expected an object whose 'points' are "
                      "objects with a 'name'")
  return manifest


def _point_dir(root: str, point: dict) -> str:
  """ROOT/<name> (where the sweep puts it, and where it is if ROOT was moved),
  else the manifest's model_dir."""
  local = os.path.join(root, point["name"])
  model_dir = point.get("model_dir")
  if _is_dir(local) or not isinstance(model_dir, str) or not model_dir:
    return local
  return model_dir if _is_dir(model_dir) else local


def _relative(path: str, root: str) -> str:
  return path[len(root):].strip("/") if path.startswith(root) else path


def _discover(root: str) -> Tuple[Optional[dict], List[Run]]:
  if not file_utils.exists(root):
    raise ReportError(f"{root} does not exist")
  if not _is_dir(root):
    raise ReportError(f"{root} is not a folder (expected a sweep or run folder)")
  manifest_path = os.path.join(root, MANIFEST)
  if file_utils.exists(manifest_path):
    manifest = _load_manifest(manifest_path)
    runs = [Run(p["name"], _point_dir(root, p), point=p) for p in manifest["points"]]
    listed = {_same_dir(r.model_dir) for r in runs}
    # Run folders added by hand beside the sweep's points are reported too.
    runs += [Run(_relative(d, root), d) for d in _run_folders(root)
             if _same_dir(d) not in listed]
    return manifest, runs
  if _is_run_folder(root):
    return None, [Run(_basename(root), root)]
  found = _run_folders(root)
  if not found:
    raise ReportError(f"nothing to report under {root}: no {MANIFEST}, and no {RUN_RECORD} "
                      "up to 2 levels down")
  return None, [Run(_relative(d, root), d) for d in found]


# Reading one run.


def _read_record(model_dir: str, warnings: List[str]) -> Optional[dict]:
  path = os.path.join(model_dir, RUN_RECORD)
  if not file_utils.exists(path):
    return None
  try:
    record = _read_json(path)
    if not isinstance(record, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError) as e:
    warnings.append(f"{path} is damaged ({e}): the run's settings are missing")
    return None
  return record


def _gin_literal(text: str):
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    return text  # a reference (@fn, %MACRO) or a multi-line value: keep gin's text
  try:
    json.dumps(value)
  except (TypeError, ValueError):
    return text
  return value


def _config_macros(model_dir: str) -> dict:
  """Macros of config.gin (the operative config): the settings of runs that
  predate run.json."""
  path = os.path.join(model_dir, "config.gin")
  if not file_utils.exists(path):
    return {}
  text = file_utils.read_bytes(path).decode("utf-8", "replace")
  return {name: _gin_literal(value) for name, value in _GIN_MACRO.findall(text)}


def _jsonl(path: str, warnings: List[str]):
  """The JSON objects of a .jsonl file; a damaged line is a warning and skipped."""
  try:
    text = file_utils.read_bytes(path).decode("utf-8")
  except (OSError, UnicodeDecodeError) as e:
    warnings.append(f"{path} cannot be read ({e}): skipped")
    return
  for number, line in enumerate(text.split("\n"), 1):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
    except ValueError as e:
      warnings.append(f"{path} line {number} is damaged ({e}): skipped")
      continue
    if not isinstance(entry, dict) or not _is_number(entry.get("step")):
      warnings.append(f"{path} line {number} has no 'step': skipped")
      continue
    yield entry


def _metrics_folder(model_dir: str) -> Optional[str]:
  base = os.path.join(model_dir, EVAL_DIR)
  for folder in [base] + [os.path.join(base, d) for d in _DECODING_DIRS]:
    if any(f.endswith(_METRICS_SUFFIX) for f in file_utils.listdir(folder)):
      return folder
  return None


def _metric_part(column: str) -> str:
  return column.split("/", 1)[-1]


def _read_metrics(model_dir: str, task: Optional[str],
                  warnings: List[str]) -> Tuple[Dict[str, Series], Optional[str]]:
  """({'task/metric': series}, the run's main metric) from its *-metrics.jsonl.

  A mixture's `{mixture}-metrics.jsonl` keys are already 'task/metric' (the
  tasks have their own files beside it, with the same values) plus 'average'.
  SMoP's routing/* shares are diagnostics, not results: left out.
  """
  folder = _metrics_folder(model_dir)
  if folder is None:
    return {}, None
  files = sorted(f for f in file_utils.listdir(folder) if f.endswith(_METRICS_SUFFIX))
  tasks = {f[:-len(_METRICS_SUFFIX)] for f in files}
  by_step, first = {}, {}
  for filename in files:
    file_task = filename[:-len(_METRICS_SUFFIX)]
    for entry in _jsonl(os.path.join(folder, filename), warnings):
      for key, value in entry.items():
        if key == "step" or not _is_number(value):
          continue
        qualified = "/" in key and key.split("/", 1)[0] in tasks - {file_task}
        column = key if qualified else f"{file_task}/{key}"
        if _metric_part(column).startswith("routing/"):
          continue
        # A step evaluated twice (a resumed run, pt-eval): the later line wins.
        by_step.setdefault(column, {})[int(entry["step"])] = value
        first.setdefault(file_task, column)
  metrics = {c: sorted(steps.items()) for c, steps in by_step.items()}
  if task and f"{task}/average" in metrics:
    main = f"{task}/average"
  else:
    main = first.get(task) or next(iter(metrics), None)
  return metrics, main


def _replayed(events) -> Series:
  """Events in the order written; a rerun that resumed from an earlier
  checkpoint logs its steps again, and those replace the killed run's."""
  out = []
  for step, value in events:
    while out and out[-1][0] >= step:
      out.pop()
    out.append((step, value))
  return out


def _read_train(model_dir: str, warnings: List[str]) -> Dict[str, Series]:
  """Scalar series of train/events.out.tfevents.* (TF2 stores scalars as tensors)."""
  log_dir = os.path.join(model_dir, TRAIN_DIR)
  names = [f for f in file_utils.listdir(log_dir) if ".tfevents." in f]
  if not names:
    return {}
  if not file_utils.is_remote(log_dir):
    return _read_events(log_dir, log_dir, warnings)
  # TensorBoard's reader goes through TensorFlow's file system: the event
  # files come through the storage layer into a local folder first.
  with tempfile.TemporaryDirectory(prefix="pt-report-") as local:
    for name in names:
      with open(os.path.join(local, name), "wb") as f:
        f.write(file_utils.read_bytes(f"{log_dir.rstrip('/')}/{name}"))
    return _read_events(local, log_dir, warnings)


def _read_events(local_dir: str, log_dir: str, warnings: List[str]) -> Dict[str, Series]:
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  # pylint: enable=g-import-not-at-top
  # The reader logs an INFO line per event file ("No path found after ..."): noise here.
  logging.getLogger("tensorboard").setLevel(logging.WARNING)
  accumulator = event_accumulator.EventAccumulator(
      local_dir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})
  try:
    accumulator.Reload()
  except Exception as e:  # pylint: disable=broad-except
    # The reader raises TF's own error types; one bad event file must not sink the report.
    warnings.append(f"{log_dir}: event files cannot be read ({e}): train values missing")
    return {}
  tags = accumulator.Tags()
  series = {}
  for tag in tags.get(event_accumulator.TENSORS, []):
    events = []
    for event in accumulator.Tensors(tag):
      array = tensor_util.make_ndarray(event.tensor_proto)
      if array.size == 1 and np.issubdtype(array.dtype, np.number):
        events.append((event.step, float(array.reshape(()))))
    if events:
      series[tag] = _replayed(events)
  for tag in tags.get(event_accumulator.SCALARS, []):  # TF1-style summaries
    series[tag] = _replayed((e.step, float(e.value)) for e in accumulator.Scalars(tag))
  return series


def _failure(run: Run) -> Optional[str]:
  """Why the run failed, where that can be told: the manifest point's status or
  exit code, or a `pt-...: error:` line in a *.log file of the run folder."""
  point = run.point or {}
  status = point.get("status")
  if isinstance(status, str) and status.lower() in ("failed", "error"):
    return str(point.get("error") or f"{MANIFEST} marks it {status}")
  for key in ("returncode", "exit_status", "exit_code"):
    code = point.get(key)
    if _is_number(code) and code != 0:
      return f"exit status {code}"
  for name in sorted(file_utils.listdir(run.model_dir)):
    if name.endswith(".log") or name in ("stderr", "stderr.txt"):
      try:
        text = file_utils.read_bytes(os.path.join(run.model_dir, name))[-_LOG_TAIL_BYTES:]
      except OSError:
        continue
      errors = _ERROR_LINE.findall(text.decode("utf-8", "replace"))
      if errors:
        return f"{errors[-1][0]}: error: {errors[-1][1]}"
  return None


def _status(run: Run) -> str:
  started = run.record is not None or run.steps_done is not None or run.train or run.metrics
  if run.train_steps is not None and run.steps_done is not None:
    last_eval = max((s[-1][0] for s in run.metrics.values()), default=None)
    # The final evaluation runs after the last checkpoint is written.
    if run.steps_done >= run.train_steps and (last_eval is None or
                                              last_eval >= run.train_steps):
      return "done"
  if run.error:
    return "failed"
  if not started:
    return "not started"
  return "running" if run.train_steps is not None else "unknown"


def _read_run(run: Run, warnings: List[str]) -> None:
  point = run.point or {}
  run.record = _read_record(run.model_dir, warnings)
  record = run.record or {}
  macros = record.get("macros")
  run.settings = dict(macros) if isinstance(macros, dict) else _config_macros(run.model_dir)
  task = next((t for t in (record.get("mixture_or_task_name"),
                           run.settings.get("MIXTURE_OR_TASK_NAME"),
                           point.get("mixture_or_task_name")) if isinstance(t, str)), None)
  run.metrics, run.main_metric = _read_metrics(run.model_dir, task, warnings)
  run.train = _read_train(run.model_dir, warnings)
  run.steps_done = numpy_checkpoints.latest_step(run.model_dir)
  run.train_steps = _first_int(record.get("train_steps"), run.settings.get("TRAIN_STEPS"),
                               point.get("train_steps"))
  run.error = _failure(run)
  run.status = _status(run)


# The swept axes.


def _manifest_axes(manifest: dict) -> Tuple[List[str], Dict[str, list]]:
  axes, values = [], {}
  for axis in manifest.get("axes") or []:
    if isinstance(axis, dict) and isinstance(axis.get("name"), str):
      axes.append(axis["name"])
      values[axis["name"]] = list(axis.get("values") or [])
  if not axes:  # a manifest without axes: the points' value names
    for point in manifest["points"]:
      for name in point.get("values") or {}:
        if name not in values:
          axes.append(name)
          values[name] = []
  return axes, values


def _gin_file_values(runs: Sequence[Run]) -> Optional[List[Any]]:
  """Per run, its gin files that not every run has (None where it has none)."""
  lists = [(r.record or {}).get("gin_files") for r in runs]
  if not all(isinstance(files, list) for files in lists) or len({_key(f) for f in lists}) < 2:
    return None
  common = set.intersection(*(set(map(str, files)) for files in lists))
  extra = [[str(f) for f in files if str(f) not in common] for files in lists]
  return ["+".join(files) or None for files in extra]


def _trivially_differs(value, run: Run) -> bool:
  """A path inside the run's own folder (EVAL_OUTPUT_DIR = MODEL_DIR/...)."""
  if not isinstance(value, str):
    return False
  own = {run.model_dir.rstrip("/"), str(run.settings.get("MODEL_DIR") or "").rstrip("/")}
  if not file_utils.is_remote(run.model_dir):
    own.add(os.path.abspath(run.model_dir))
  return any(d and d in value for d in own)


def _infer_axes(runs: Sequence[Run]) -> List[str]:
  """Without a manifest: the gin files and macros whose values differ between
  the runs that have settings (a macro some run lacks is not an axis)."""
  recorded = [r for r in runs if r.settings]
  if len(recorded) < 2:
    return []
  candidates = [dict(r.settings) for r in recorded]
  gin_files = _gin_file_values(recorded)
  if gin_files is not None:
    candidates = [{"gin_file": g, **c} for g, c in zip(gin_files, candidates)]
  axes = []
  for name in dict.fromkeys(n for c in candidates for n in c):
    if name in _IGNORED_MACROS or any(name not in c for c in candidates):
      continue
    values = [c[name] for c in candidates]
    if len({_key(v) for v in values}) > 1 and not any(
        _trivially_differs(v, r) for v, r in zip(values, recorded)):
      axes.append(name)
  for run, found in zip(recorded, candidates):
    run.values = {a: found[a] for a in axes}
  return sorted(axes, key=lambda a: a == SEED_AXIS)  # stable: the seed goes last


def _order_key(value):
  if value is None:
    return (2, 0, "")
  if _is_number(value):
    return (0, value, "")
  return (1, 0, _key(value))


def _axis_order(sweep: Sweep, axis: str) -> list:
  """Distinct values of an axis among the runs: the manifest's order, else sorted."""
  present = {_key(r.values.get(axis)): r.values.get(axis) for r in sweep.runs
             if r.values.get(axis) is not None}
  listed = [v for v in sweep.axis_values.get(axis, []) if _key(v) in present]
  rest = sorted((v for k, v in present.items() if k not in {_key(x) for x in listed}),
                key=_order_key)
  return listed + rest


def _metric_columns(runs: Sequence[Run]) -> Tuple[List[str], Optional[str]]:
  mains = collections.Counter(r.main_metric for r in runs if r.main_metric)
  main = mains.most_common(1)[0][0] if mains else None
  seen = dict.fromkeys(c for r in runs for c in r.metrics)
  return ([main] if main else []) + [c for c in seen if c != main], main


def load(root: str) -> Sweep:
  """Reads every run under root (see the module docstring)."""
  manifest, runs = _discover(root)
  warnings = []
  for run in runs:
    _read_run(run, warnings)
  if manifest is not None:
    axes, axis_values = _manifest_axes(manifest)
    for run in runs:
      values = (run.point or {}).get("values")
      source = values if isinstance(values, dict) else run.settings
      run.values = {a: source.get(a) for a in axes}
  else:
    axes, axis_values = _infer_axes(runs), {}
    runs.sort(key=lambda r: (tuple(_order_key(r.values.get(a)) for a in axes), r.name))
  metrics, main = _metric_columns(runs)
  return Sweep(root, runs, axes, axis_values, metrics, main, warnings)


# Rows.


def _lower_is_better(column: str) -> bool:
  words = set(re.split(r"[^a-z0-9]+", _metric_part(column).lower()))
  return bool(words & _LOWER_IS_BETTER)


def _final_best(series: Optional[Series], lower: bool):
  """(final value, best value, step of the best: the first step reaching it)."""
  if not series:
    return None, None, None
  valid = [(s, v) for s, v in series if not math.isnan(v)]
  if not valid:
    return series[-1][1], None, None
  step, best = (min if lower else max)(valid, key=lambda sv: sv[1])
  return series[-1][1], best, step


def _throughput(series: Optional[Series]) -> Optional[float]:
  """Mean examples/s after the first logged point (it includes compilation)."""
  if not series:
    return None
  values = [v for _, v in series]
  return float(np.mean(values[1:] if len(values) > 1 else values))


def _row(run: Run, sweep: Sweep) -> Dict[str, Any]:
  row = {"row": "run", "name": run.name}
  row.update({a: run.values.get(a) for a in sweep.axes})
  row.update(status=run.status, steps_done=run.steps_done, train_steps=run.train_steps)
  for metric in sweep.metrics:
    cells = _final_best(run.metrics.get(metric), _lower_is_better(metric))
    row.update({f"{metric} {part}": v for part, v in zip(_METRIC_PARTS, cells)})
  loss = run.train.get("loss")
  row["train_loss"] = loss[-1][1] if loss else None
  row["examples_per_second"] = _throughput(run.train.get("examples_per_second"))
  row["start_time"] = (run.record or {}).get("start_time")
  row["error"] = run.error
  row["model_dir"] = run.model_dir
  return row


def collect(root: str) -> List[Dict[str, Any]]:
  """One row per run under root: {column: value}, None where missing.

  Columns: row ('run'), name, each swept axis, status (done / running /
  not started / failed / unknown), steps_done, train_steps, for each metric
  'task/metric' its '... final', '... best', '... best_step', train_loss
  (last logged), examples_per_second, start_time, error, model_dir.
  """
  sweep = load(root)
  return [_row(run, sweep) for run in sweep.runs]


def _numeric_columns(row: Dict[str, Any]) -> List[str]:
  return [c for c in row if c in _RUN_NUMBERS or c.rsplit(" ", 1)[-1] in _METRIC_PARTS]


def _mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
  if not values:
    return None, None
  array = np.asarray(values, dtype=np.float64)
  return float(np.mean(array)), (float(np.std(array, ddof=1)) if len(array) > 1 else None)


def _group_axes(axes: Sequence[str]) -> List[str]:
  return [a for a in axes if a != SEED_AXIS]


def _groups(rows: Sequence[Dict[str, Any]], axes: Sequence[str]) -> List[List[Dict[str, Any]]]:
  groups = {}
  for row in rows:
    groups.setdefault(tuple(_key(row.get(a)) for a in _group_axes(axes)), []).append(row)
  return list(groups.values())


def _status_summary(rows: Sequence[Dict[str, Any]]) -> str:
  counts = collections.Counter(r["status"] for r in rows)
  return ", ".join(f"{n} {status}" for status, n in counts.items())


def aggregate(rows: Sequence[Dict[str, Any]], axes: Sequence[str]) -> List[Dict[str, Any]]:
  """Rows over seeds: for each setting of the axes other than RANDOM_SEED, a
  'mean', a 'std' (sample, ddof=1; None when n < 2) and an 'n' row, in the
  columns of the run rows. They count the finished runs that have a value
  (per column); the status column counts every run of the setting."""
  out = []
  for members in _groups(rows, axes):
    base = {a: members[0].get(a) for a in _group_axes(axes)}
    name = ", ".join(f"{a}={_label(v)}" for a, v in base.items()) or "all runs"
    stats = {kind: {"row": kind, "name": name, **base, "status": _status_summary(members)}
             for kind in ("mean", "std", "n")}
    finished = [r for r in members if r["status"] in _FINISHED]
    for column in _numeric_columns(members[0]):
      values = [r[column] for r in finished if r.get(column) is not None]
      stats["mean"][column], stats["std"][column] = _mean_std(values)
      stats["n"][column] = len(values)
    out.extend(stats.values())
  return out


def _has_repeats(rows: Sequence[Dict[str, Any]], axes: Sequence[str]) -> bool:
  return SEED_AXIS in axes or any(len(g) > 1 for g in _groups(rows, axes))


# The files.


def _csv_cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, (list, dict)):
    return json.dumps(value)
  return str(value)  # a float's shortest repr: reads back as the same float


def csv_text(rows: Sequence[Dict[str, Any]]) -> str:
  columns = list(dict.fromkeys(c for row in rows for c in row))
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(columns)
  for row in rows:
    writer.writerow([_csv_cell(row.get(c)) for c in columns])
  return buf.getvalue()


def _fmt(value, like: Optional[float] = None) -> str:
  """A cell for display: 2 decimals from 1 up (accuracy 87.50), 4 below
  (loss 0.4960), 3 significant digits below 0.001; `like` sets the decimals
  (a std is shown to its mean's)."""
  if value is None:
    return MISSING
  if not isinstance(value, float) or not math.isfinite(value):
    return str(value)
  scale = abs(value if like is None else like)
  if scale >= 1 or scale == 0:
    return f"{value:.2f}"
  return f"{value:.4f}" if scale >= 1e-3 else f"{value:.3g}"


def _metric_names(metrics: Sequence[str]) -> Dict[str, str]:
  """Shown names: without the task when the sweep has a single task."""
  tasks = {m.split("/", 1)[0] for m in metrics}
  return {m: _metric_part(m) if len(tasks) == 1 else m for m in metrics}


def _steps_cell(row) -> str:
  if row["steps_done"] is None and row["train_steps"] is None:
    return MISSING
  return f"{_fmt(row['steps_done'])}/{_fmt(row['train_steps'])}"


def _runs_table(sweep: Sweep, rows) -> str:
  names = _metric_names(sweep.metrics)
  header = ["name"] + sweep.axes + ["status", "steps"]
  for metric in sweep.metrics:
    header += [f"{names[metric]} final", f"{names[metric]} best (step)"]
  header += ["train loss", "examples/s"]
  body = []
  for row in rows:
    cells = [row["name"]] + [_label(row[a]) for a in sweep.axes]
    cells += [row["status"], _steps_cell(row)]
    for metric in sweep.metrics:
      best, step = row[f"{metric} best"], row[f"{metric} best_step"]
      cells += [_fmt(row[f"{metric} final"]),
                MISSING if best is None else f"{_fmt(best)} (@{step})"]
    cells += [_fmt(row["train_loss"]), _fmt(row["examples_per_second"])]
    body.append(cells)
  return tables.markdown(header, body)


def _mean_cell(stats, column: str, size: int) -> str:
  n = stats["n"][column]
  if not n:
    return MISSING
  mean = stats["mean"][column]
  text = _fmt(mean)
  if stats["std"][column] is not None:
    text += f" ± {_fmt(stats['std'][column], like=mean)}"
  return text + (f" (n={n})" if n != size else "")


def _aggregate_table(sweep: Sweep, rows, aggregates) -> str:
  names = _metric_names(sweep.metrics)
  axes = _group_axes(sweep.axes)
  columns = [f"{m} {part}" for m in sweep.metrics for part in ("final", "best")]
  columns += ["train_loss", "examples_per_second"]
  shown = {"train_loss": "train loss", "examples_per_second": "examples/s"}
  shown.update({f"{m} {part}": f"{names[m]} {part}" for m in sweep.metrics
                for part in ("final", "best")})
  header = axes + ["runs", "status"] + [shown[c] for c in columns]
  body = []
  sizes = [len(g) for g in _groups(rows, sweep.axes)]
  for size, i in zip(sizes, range(0, len(aggregates), 3)):
    stats = {a["row"]: a for a in aggregates[i:i + 3]}
    cells = [_label(stats["mean"][a]) for a in axes] + [str(size), stats["mean"]["status"]]
    body.append(cells + [_mean_cell(stats, c, size) for c in columns])
  return tables.markdown(header, body)


def _caption(name: str) -> str:
  doc = (plots_lib.FIGURES[name].__doc__ or name).strip()
  return doc.splitlines()[0].rstrip(".")


def render_markdown(sweep: Sweep, rows, aggregates, figures: Sequence[str]) -> str:
  counts = _status_summary(rows) if rows else "none"
  main = f"`{sweep.main_metric}`" if sweep.main_metric else "none yet"
  parts = [
      f"# Results: {_basename(sweep.root)}",
      f"{len(rows)} runs ({counts}) under `{sweep.root}`. Main metric: {main}. "
      "Per metric: the final value and the best (max; min for loss-like metrics) with its "
      f"step. `{MISSING}` = no value yet. Full precision: `{CSV_FILE}`.",
      "## Runs", _runs_table(sweep, rows)]
  if aggregates:
    parts += ["## Over seeds",
              f"Mean ± sample std (ddof=1) over {SEED_AXIS} of the finished runs; "
              "(n=k) where fewer than all runs of the setting count (unfinished, or no "
              "value).",
              _aggregate_table(sweep, rows, aggregates)]
  if figures:
    parts += ["## Figures"] + [f"![{_caption(f)}]({PLOTS_DIR}/{f}.png)" for f in figures]
  failed = [r for r in rows if r["status"] == "failed" and r["error"]]
  if failed:
    parts += ["## Failed runs", "\n".join(f"- {r['name']}: {r['error']}" for r in failed)]
  if sweep.warnings:
    parts += ["## Warnings", "\n".join(f"- {w}" for w in sweep.warnings)]
  return "\n\n".join(parts) + "\n"


# Figures.


def _plot_axes(sweep: Sweep) -> List[str]:
  """Axes a figure can show: swept (2+ values among the runs) and not the seed."""
  return [a for a in _group_axes(sweep.axes) if len(_axis_order(sweep, a)) > 1]


def _is_numeric_axis(sweep: Sweep, axis: str) -> bool:
  return all(_is_number(v) for v in _axis_order(sweep, axis))


def resolve_metric(sweep: Sweep, name: str) -> str:
  """'task/metric', or a name that ends exactly one metric column ('average')."""
  if name in sweep.metrics:
    return name
  matches = [m for m in sweep.metrics if m.endswith("/" + name)]
  if len(matches) == 1:
    return matches[0]
  choices = ", ".join(sweep.metrics) or "none (no run has metrics yet)"
  raise ReportError(f"unknown --metric {name!r}: the metrics are {choices}")


def choose_axes(sweep: Sweep, x: Optional[str] = None,
                hue: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
  """(x, hue) of the ablation: by default x = the numeric swept axis with the
  most values (any swept axis if none is numeric), hue = the next one."""
  for flag, name in (("--x", x), ("--hue", hue)):
    if name is None:
      continue
    if name == SEED_AXIS:
      raise ReportError(f"{flag} {SEED_AXIS}: the figures average over seeds; choose one of "
                        f"{', '.join(_group_axes(sweep.axes)) or 'none'}")
    if name not in sweep.axes:
      raise ReportError(f"unknown {flag} {name!r}: the swept axes are "
                        f"{', '.join(sweep.axes) or 'none'}")
  if x is not None and x == hue:
    raise ReportError(f"--x and --hue both name {x}")
  candidates = _plot_axes(sweep)
  if x is None:
    pool = [a for a in candidates if _is_numeric_axis(sweep, a)] or candidates
    pool = [a for a in pool if a != hue]
    x = max(pool, key=lambda a: len(_axis_order(sweep, a)), default=None)
  if hue is None:
    hue = next((a for a in candidates if a != x), None)
  return x, hue


def _size_rank(value) -> int:
  words = set(re.split(r"[^a-z0-9]+", str(value).lower()))
  return next((i for i, s in enumerate(_MODEL_SIZES) if s in words), len(_MODEL_SIZES))


def _ablation(sweep: Sweep, rows, metric: str, x: Optional[str], hue: Optional[str],
              best: bool) -> Optional[plots_lib.Ablation]:
  if x is None or metric is None:
    return None
  column = f"{metric} {'best' if best else 'final'}"
  x_order = _axis_order(sweep, x)
  numeric = _is_numeric_axis(sweep, x)
  if not numeric and all(_size_rank(v) < len(_MODEL_SIZES) for v in x_order):
    x_order.sort(key=_size_rank)  # model sizes, small to xxl
  position = {_key(v): (float(v) if numeric else float(i)) for i, v in enumerate(x_order)}
  facets = [a for a in _plot_axes(sweep) if a not in (x, hue)]
  hue_order = {_key(v): i for i, v in enumerate(_axis_order(sweep, hue))} if hue else {}
  cells = {}  # facet -> hue -> x -> values
  for row in rows:
    if row.get(x) is None:
      continue
    facet = ", ".join(f"{a}={_label(row.get(a))}" for a in facets)
    line = _label(row.get(hue)) if hue else _metric_names(sweep.metrics)[metric]
    values = cells.setdefault(facet, {}).setdefault(
        (hue_order.get(_key(row.get(hue)), len(hue_order)), line), {}).setdefault(
            _key(row[x]), [])
    if row.get(column) is not None and row["status"] in _FINISHED:
      values.append(row[column])
  panels = []
  for facet, lines in cells.items():
    panel = plots_lib.Panel(facet, [])
    for (_, label), by_x in sorted(lines.items()):
      points = []
      for key, values in sorted(by_x.items(), key=lambda kv: position[kv[0]]):
        mean, std = _mean_std(values)
        points.append(plots_lib.Point(position[key], values, mean, std))
      panel.lines.append(plots_lib.Line(label, points))
    panels.append(panel)
  xs = [float(v) for v in x_order] if numeric else []
  log_x = numeric and min(xs) > 0 and (bool(_LOG_X_AXES.search(x)) or max(xs) >= 10 * min(xs))
  return plots_lib.Ablation(x=x, hue=hue, metric=_metric_names(sweep.metrics)[metric],
                            best=best, log_x=log_x,
                            panels=panels,
                            x_labels=None if numeric else [_label(v) for v in x_order],
                            seeds=SEED_AXIS in sweep.axes)


def _plot_data(sweep: Sweep, rows, metric, x, hue, best) -> plots_lib.PlotData:
  axes = _group_axes(sweep.axes)

  def group(run):
    return ", ".join(f"{a}={_label(run.values.get(a))}" for a in axes) or run.name

  train = [plots_lib.Curve(r.name, group(r), [s for s, _ in r.train["loss"]],
                           [v for _, v in r.train["loss"]])
           for r in sweep.runs if r.train.get("loss")]
  evals = [plots_lib.Curve(r.name, group(r), [s for s, _ in r.metrics[metric]],
                           [v for _, v in r.metrics[metric]])
           for r in sweep.runs if metric and r.metrics.get(metric)]
  shown = _metric_names(sweep.metrics).get(metric, metric)
  subtitle = metric.split("/", 1)[0] if metric and shown != metric else ""
  return plots_lib.PlotData(_basename(sweep.root), subtitle, train, shown, evals,
                            _ablation(sweep, rows, metric, x, hue, best))


def draw_figures(sweep: Sweep, rows, metric, x, hue, best) -> List[str]:
  """Draws every registered figure into ROOT/plots; returns the names drawn."""
  data = _plot_data(sweep, rows, metric, x, hue, best)
  out_dir = os.path.join(sweep.root, PLOTS_DIR)
  drawn = []
  for name, draw in plots_lib.FIGURES.items():
    fig = draw(data)
    if fig is None:
      plots_lib.remove(out_dir, name)  # an earlier report's figure would be stale
      continue
    plots_lib.save(fig, out_dir, name)
    drawn.append(name)
  return drawn


def _report(root: str, plots: bool, metric: Optional[str], x: Optional[str],
            hue: Optional[str], best: bool) -> Tuple[str, Sweep]:
  sweep = load(root)
  metric = resolve_metric(sweep, metric) if metric else sweep.main_metric
  x, hue = choose_axes(sweep, x, hue)
  rows = [_row(run, sweep) for run in sweep.runs]
  aggregates = aggregate(rows, sweep.axes) if _has_repeats(rows, sweep.axes) else []
  figures = draw_figures(sweep, rows, metric, x, hue, best) if plots else []
  text = render_markdown(sweep, rows, aggregates, figures)
  file_utils.write_text_atomic(os.path.join(root, CSV_FILE), csv_text(rows + aggregates))
  file_utils.write_text_atomic(os.path.join(root, MD_FILE), text)
  return text, sweep


def write_report(root: str, plots: bool = True, *, metric: Optional[str] = None,
                 x: Optional[str] = None, hue: Optional[str] = None,
                 best: bool = False) -> str:
  """Writes ROOT/results.csv, ROOT/results.md and (plots=True) ROOT/plots/*.png|svg;
  returns the markdown. Raises ReportError for bad input."""
  return _report(root, plots, metric, x, hue, best)[0]


# The command line.

USAGE = "ROOT [--noplots] [--metric=M] [--x=AXIS] [--hue=AXIS] [--best]"


def _define_flags():
  """The report's own flags, defined when `pt-sweep report` runs."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if "metric" in flags.FLAGS:  # a second run in one process
    return
  flags.DEFINE_bool("plots", True, "Draw the figures (--noplots: the tables only).")
  flags.DEFINE_string("metric", None, "task/metric of the figures (default: the mixture's "
                      "average, else the task's first metric).")
  flags.DEFINE_string("x", None, "Swept axis on the ablation's x axis (default: the numeric "
                      "axis with most values).")
  flags.DEFINE_string("hue", None, "Swept axis with one line per value (default: the next).")
  flags.DEFINE_bool("best", False, "Ablation of the best value of each run instead of the "
                    "final one.")


_OWN_FLAGS = ("plots", "metric", "x", "hue", "best")


def _report_command(root: str) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from prompt_tuning import command  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  # pt-sweep's own flags (and pt-train's, which it takes) do nothing here.
  for name, flag in values.flags_by_module_dict().items():
    if name.startswith("prompt_tuning.") and name != __name__:
      given = [f"--{f.name}" for f in flag if f.present]
      if given:
        command.fail(PROG, f"{given[0]} is not a flag of {PROG} report: usage: {PROG} report "
                     f"{USAGE}")
  try:
    text, sweep = _report(root, values.plots, values.metric, values.x, values.hue, values.best)
  except ReportError as e:
    command.fail(PROG, e)
  except OSError as e:  # results cannot be written (permissions, full disk)
    command.fail(PROG, e)
  for warning in sweep.warnings:
    sys.stderr.write(f"{PROG}: warning: {warning}\n")
  sys.stdout.write(text)
  print(f"wrote {os.path.join(root, CSV_FILE)}, {os.path.join(root, MD_FILE)}"
        + ("" if not values.plots else f" and figures in {os.path.join(root, PLOTS_DIR)}"))


def console_main(argv: Optional[Sequence[str]] = None) -> int:
  """`pt-sweep report ROOT [--noplots] [--metric M] [--x AXIS] [--hue AXIS] [--best]`.

  argv: the arguments after `report` (a leading 'report' is dropped too);
  sys.argv's when None. Returns the exit status.
  """
  from prompt_tuning import command  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["report"]:
    argv = argv[1:]
  _define_flags()
  return command.call(PROG, _report_command, argv, positional=1, usage=f"report {USAGE}")
