"""A sweep as data: its axes, the grid of points (named by their swept
values, each in its own MODEL_DIR), the check of every point's config, and
the manifest SWEEP_DIR/sweep.json (what `pt-sweep report` reads). What the
launchers need, apart from the pt-sweep command (`main`)."""
import ast
import dataclasses
import hashlib
import itertools
import json
import os
import re
from typing import Any, List, Optional, Sequence

PROG = "pt-sweep"
MANIFEST = "sweep.json"
GIN_FILE = "gin_file"


class SweepError(ValueError):
  """Bad sweep input; the message is the one line pt-sweep prints."""


@dataclasses.dataclass
class Axis:
  name: str
  values: list


@dataclasses.dataclass
class Point:
  """One run of the grid: its swept values and everything pt-train needs."""
  name: str
  values: dict  # axis name -> Python value, in axis order
  bindings: List[str]  # the swept bindings, "NAME = value"
  gin_files: List[str]  # base files then the swept ones
  model_dir: str
  train_steps: Optional[int] = None  # from the parsed config


@dataclasses.dataclass
class Outcome:
  name: str
  status: str  # 'done', 'failed' or 'submitted'
  detail: str = ""  # why it failed, or where to follow it
  log: str = ""  # the point's log file


@dataclasses.dataclass
class Sweep:
  """Everything a launcher needs."""
  sweep_dir: str
  launcher: str
  base_files: List[str]
  base_bindings: List[str]
  axes: List[Axis]
  points: List[Point]
  search_paths: List[str] = dataclasses.field(default_factory=list)
  tfds_data_dir: Optional[str] = None
  parallel: int = 1
  dry_run: bool = False
  options: dict = dataclasses.field(default_factory=dict)  # LAUNCHER_FLAGS' values

  def train_args(self, point: Point) -> List[str]:
    """pt-train's flags for a point (launchers add --distributed where needed)."""
    args = [f"--gin_file={f}" for f in point.gin_files]
    args += [f"--gin_bindings={b}" for b in self.base_bindings + point.bindings]
    args.append(f"--gin_bindings=MODEL_DIR = {point.model_dir!r}")
    if self.search_paths:
      args.append("--gin_search_paths=" + ",".join(self.search_paths))
    if self.tfds_data_dir:
      args.append(f"--tfds_data_dir={self.tfds_data_dir}")
    return args


# --- The grid -----------------------------------------------------------------

# A gin macro (upper case), a [scope/]configurable.parameter, or gin_file.
_NAME_RE = re.compile(r"^(?:[A-Z][A-Z0-9_]*|(?:[A-Za-z_]\w*/)*[A-Za-z_][\w.]*\.[A-Za-z_]\w*|"
                      + GIN_FILE + r")$")
_MAX_NAME = 200  # well under the 255 bytes a path component may have


def parse_axis(spec: str) -> Axis:
  """`NAME=[v1, v2, ...]` -> Axis; values are gin/Python literals."""
  if "=" not in spec:
    raise SweepError(f"--sweep={spec}: write NAME=[v1, v2, ...]")
  name, text = (s.strip() for s in spec.split("=", 1))
  if name == "MODEL_DIR":
    raise SweepError("--sweep=MODEL_DIR: pt-sweep sets each point's MODEL_DIR to "
                     "SWEEP_DIR/<point name>; sweep something else")
  if not _NAME_RE.match(name):
    raise SweepError(f"--sweep={name}: NAME must be a gin macro (e.g. PROMPT_LENGTH), a "
                     "configurable.parameter (e.g. optimizers.adafactor.learning_rate) or "
                     "gin_file")
  try:
    values = ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    raise SweepError(f"--sweep={name}: cannot read {text!r} as a list of gin/Python literals "
                     f"(quote strings inside the list: {name}=['a', 'b'])") from None
  if not isinstance(values, list):
    raise SweepError(f"--sweep={name}: {text!r} is not a list: write {name}=[v1, v2, ...]")
  if not values:
    raise SweepError(f"--sweep={name}: the list of values is empty")
  if name == GIN_FILE and not all(isinstance(v, str) and v for v in values):
    raise SweepError(f"--sweep=gin_file: values must be gin file paths (quoted strings), "
                     f"got {text}")
  seen = set()
  for value in values:
    key = (type(value).__name__, repr(value))
    if key in seen:
      raise SweepError(f"--sweep={name}: {value!r} is listed twice")
    seen.add(key)
  return Axis(name, values)


def parse_axes(specs: Sequence[str]) -> List[Axis]:
  if not specs:
    raise SweepError("no --sweep given: add e.g. --sweep='PROMPT_LENGTH=[5, 100]' "
                     "(a single run is pt-train)")
  axes = [parse_axis(spec) for spec in specs]
  names = [axis.name for axis in axes]
  for name in names:
    if names.count(name) > 1:
      raise SweepError(f"--sweep={name} is given twice: list all its values in one --sweep")
  return axes


def _safe(text: str) -> str:
  """Keeps names portable (Linux, macOS, GCS): letters, digits and ._+- only."""
  return re.sub(r"[^A-Za-z0-9._+-]+", "_", text)


def value_label(axis_name: str, value: Any) -> str:
  """How a value reads in a point name: gin files by their stem, strings bare."""
  if axis_name == GIN_FILE:
    return os.path.splitext(os.path.basename(value))[0]
  return value if isinstance(value, str) else repr(value)


def point_name(values: dict) -> str:
  """`PROMPT_LENGTH=5,gin_file=class_labels,RANDOM_SEED=1`: deterministic and
  filesystem-safe; an over-long name is cut and made unique by a hash."""
  name = ",".join(f"{_safe(axis)}={_safe(value_label(axis, value))}"
                  for axis, value in values.items())
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
    name = f"{name[:_MAX_NAME - 11]}-{digest}"
  return name


def gin_literal(value: Any) -> str:
  """A value as gin binding text (gin reads Python literals)."""
  return repr(value)


def grid(axes: Sequence[Axis], base_files: Sequence[str], sweep_dir: str) -> List[Point]:
  """The product of the axes, the first varying slowest."""
  points, names = [], {}
  for combo in itertools.product(*(axis.values for axis in axes)):
    values = {axis.name: value for axis, value in zip(axes, combo)}
    name = point_name(values)
    if name in names:
      raise SweepError(f"two points get the same folder name {name!r} ({names[name]} and "
                       f"{values}): make the values' labels differ (gin files by their stem)")
    names[name] = values
    points.append(Point(
        name=name, values=values,
        bindings=[f"{k} = {gin_literal(v)}" for k, v in values.items() if k != GIN_FILE],
        gin_files=list(base_files) + [v for k, v in values.items() if k == GIN_FILE],
        model_dir=join(sweep_dir, name)))
  return points


def join(root: str, *parts: str) -> str:
  return "/".join([root.rstrip("/")] + list(parts)) if "://" in root else os.path.join(
      root, *parts)


# --- Validation with gin --------------------------------------------------------


def binding_names(bindings: Sequence[str]) -> List[str]:
  return [line.split("=", 1)[0].strip() for b in bindings for line in b.splitlines()
          if "=" in line and not line.lstrip().startswith("#")]


def _resolved(value):
  """Follows %MACRO references to the bound value."""
  import gin  # pylint: disable=g-import-not-at-top
  for _ in range(100):
    if not isinstance(value, gin.config.ConfigurableReference):
      return value
    selector = value.scoped_selector
    if not selector.endswith("/gin.macro"):
      return value
    value = gin.query_parameter(f"%{selector[:-len('/gin.macro')].split('/')[-1]}")
  return value


def _train_steps(point: Point) -> int:
  import gin  # pylint: disable=g-import-not-at-top
  try:
    steps = _resolved(gin.query_parameter("train.train_steps"))
  except ValueError:
    raise SweepError(f"point {point.name}: train.train_steps is not set: is this a pt-train "
                     "config (runs/prompt_finetune.gin)?") from None
  if not isinstance(steps, int) or isinstance(steps, bool):
    raise SweepError(f"point {point.name}: TRAIN_STEPS must be an integer, got {steps!r}")
  return steps


def validate(sweep: Sweep) -> None:
  """Parses every point's config as pt-train would (in this process: no JAX
  backend starts) and records its TRAIN_STEPS; the first bad point is the error."""
  import gin  # pylint: disable=g-import-not-at-top
  from prompt_tuning import command  # pylint: disable=g-import-not-at-top
  command.load_tensorflow()  # the configurables import seqio, which imports it: quietly
  # pylint: disable=g-import-not-at-top
  from prompt_tuning import configurables
  from prompt_tuning import gin_utils
  from prompt_tuning.model import weights
  # pylint: enable=g-import-not-at-top
  swept = {axis.name for axis in sweep.axes}
  for point in sweep.points:
    gin.clear_config()
    try:
      gin_utils.parse(point.gin_files, sweep.base_bindings + point.bindings
                      + [f"MODEL_DIR = {point.model_dir!r}", configurables.MODEL_BINDING],
                      sweep.search_paths)
      point.train_steps = _train_steps(point)
      # The model and its method, traced abstractly (no backend): a value they
      # refuse (PROMPT_LENGTH=[2, -5]) fails here, before point 1 trains.
      weights.check_builds(configurables.configured_model())
    except (ValueError, TypeError) as e:  # ConfigError, MethodError, PromptInitError, ...
      if not isinstance(e, gin_utils.ConfigError):
        text = str(e).strip()
        raise SweepError(f"{text.splitlines()[0] if text else type(e).__name__} "
                         f"(point {point.name})") from None
      message = str(e).strip().splitlines()[0]
      macro = re.match(r"--gin\.(\w+): no config uses", message)
      if macro and macro.group(1) in swept:
        # The check is pt-train's; the flag to fix is the --sweep.
        raise SweepError(f"--sweep={message[len('--gin.'):]}"
                         + (f" (point {point.name})" if GIN_FILE in swept else "")) from None
      raise SweepError(f"{message} (point {point.name})") from None
    finally:
      gin.clear_config()


# --- The manifest ---------------------------------------------------------------


def json_value(value: Any) -> Any:
  """A value as JSON where JSON holds it exactly, else its gin text."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, list):
    items = [json_value(v) for v in value]
    if all(isinstance(i, str) == isinstance(v, str) for i, v in zip(items, value)):
      return items
  if isinstance(value, dict) and all(isinstance(k, str) for k in value):
    items = {k: json_value(v) for k, v in value.items()}
    if all(isinstance(items[k], str) == isinstance(v, str) for k, v in value.items()):
      return items
  return gin_literal(value)


def manifest(sweep: Sweep) -> dict:
  """SWEEP_DIR/sweep.json for this grid (what `pt-sweep report` reads)."""
  return {
      "version": 1,
      "sweep_dir": sweep.sweep_dir,
      "launcher": sweep.launcher,
      "base": {"gin_files": list(sweep.base_files), "gin_bindings": list(sweep.base_bindings)},
      "axes": [{"name": a.name, "values": [json_value(v) for v in a.values]}
               for a in sweep.axes],
      "points": [{"name": p.name, "model_dir": p.model_dir,
                  "values": {k: json_value(v) for k, v in p.values.items()},
                  "bindings": list(p.bindings), "gin_files": list(p.gin_files),
                  "train_steps": p.train_steps} for p in sweep.points],
  }


def _without_train_steps(bindings):
  # A larger TRAIN_STEPS continues finished points (as pt-train does), so it
  # may change between reruns; any other base change would mix experiments.
  return [b for b in bindings if binding_names([b]) != ["TRAIN_STEPS"]]


def merge(old: dict, new: dict, path: str) -> dict:
  """Adds the new grid's points to an existing manifest; a name must keep
  meaning the same config, else SweepError (nothing is mixed silently)."""
  if old.get("version") != 1:
    raise SweepError(f"{path}: unknown manifest version {old.get('version')!r}")
  old_base, new_base = old.get("base", {}), new["base"]
  if old_base.get("gin_files") != new_base["gin_files"]:
    raise SweepError(f"{path} holds a sweep with other base gin files "
                     f"({old_base.get('gin_files')}): use another --sweep_dir")
  old_b = _without_train_steps(old_base.get("gin_bindings", []))
  new_b = _without_train_steps(new_base["gin_bindings"])
  if old_b != new_b:
    changed = sorted(set(old_b) ^ set(new_b)) or ["their order"]
    raise SweepError(f"{path} holds a sweep with other base bindings (differing: "
                     f"{'; '.join(changed)}): use another --sweep_dir")
  points = {p["name"]: p for p in old.get("points", [])}
  for point in new["points"]:
    before = points.get(point["name"])
    if before is not None:
      for key in ("values", "bindings", "gin_files"):
        if before.get(key) != point[key]:
          raise SweepError(f"point {point['name']} is already in {path} with other {key} "
                           f"({before.get(key)} vs {point[key]}): use another --sweep_dir")
    points[point["name"]] = dict(before or {}, **point)  # keeps its last status and log
  axes = {a["name"]: list(a["values"]) for a in old.get("axes", [])}
  for axis in new["axes"]:
    values = axes.setdefault(axis["name"], [])
    values.extend(v for v in axis["values"] if v not in values)
  return dict(new, axes=[{"name": k, "values": v} for k, v in axes.items()],
              points=list(points.values()))


def record_outcomes(merged: dict, skipped: Sequence[Point], outcomes: Sequence[Outcome]) -> None:
  """Adds each point's last status ('done', 'failed', 'submitted'), log and
  error to the manifest, so the report can say why a point has no results."""
  latest = {p.name: Outcome(p.name, "done") for p in skipped}
  latest.update((o.name, o) for o in outcomes)
  for point in merged["points"]:
    outcome = latest.get(point["name"])
    if outcome is None:
      continue
    point["status"] = outcome.status
    point.pop("error", None)
    if outcome.status == "failed":
      point["error"] = outcome.detail
    if outcome.log:
      point["log"] = outcome.log


def read_manifest(path: str) -> Optional[dict]:
  from prompt_tuning.storage import file_utils  # pylint: disable=g-import-not-at-top
  if not file_utils.exists(path):
    return None
  try:
    return json.loads(file_utils.read_bytes(path).decode("utf-8"))
  except ValueError as e:
    raise SweepError(f"{path} is not valid JSON ({e}): move it away or use another "
                     "--sweep_dir") from None


# --- Running --------------------------------------------------------------------


def is_finished(point: Point) -> bool:
  from prompt_tuning.storage import numpy_checkpoints  # pylint: disable=g-import-not-at-top
  latest = numpy_checkpoints.latest_step(point.model_dir)
  return latest is not None and latest >= point.train_steps


