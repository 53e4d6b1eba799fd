"""pt-sweep: the grid and its point names, the manifest, one clear error line
for each kind of bad input (with nothing written), the Cloud TPU and SkyPilot
dry runs, and a real 2-point local sweep of the tiny model that a rerun skips."""
import json
import os
import shlex
import subprocess
import sys
import time

import pytest
import yaml

import helpers  # pylint: disable=g-bad-import-order
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.sweep import grid
from prompt_tuning.sweep import main as sweep

FILES = helpers.TINY_FILES + ["runs/prompt_finetune.gin"]
BASE = (["--gin_file=" + f for f in FILES]
        + helpers.as_flags(helpers.TINY_BINDINGS + ["INITIAL_CHECKPOINT_PATH = None"]))


@pytest.fixture(autouse=True)
def _fresh_flags():
  yield
  sweep.FLAGS.unparse_flags()  # absl flags are per process: leave them as found


def run_in_process(capsys, *args):
  """pt-sweep in this process: (exit status, stdout, stderr)."""
  status = sweep.main(["pt-sweep", *args])
  out, err = capsys.readouterr()
  return status, out, err


def run_cli(*args, timeout=300):
  env = {k: v for k, v in os.environ.items() if k not in ("PT_VOCABULARY_PATH",
                                                          "SUPERGLUE_DATA_DIR")}
  env.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(helpers.TESTS), os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-m", "prompt_tuning.sweep", *args], capture_output=True,
                        text=True, env=env, timeout=timeout, check=False)


def one_error_line(status, err, *needles):
  assert status == 1, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith("pt-sweep: error:")]
  assert len(lines) == 1, err[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def commands(out):
  """The command lines a dry run printed (not its comments and summary)."""
  return [l for l in out.splitlines() if l and not l.startswith(("#", "pt-sweep:"))]


def bash_argv(command_line, env=None):
  """The argv `python3` gets when bash runs `command_line` (python3 stubbed)."""
  script = 'python3() { printf "%s\\0" "$@"; }\n' + command_line
  out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                       env=dict(os.environ, **(env or {}))).stdout
  return out.split("\0")[:-1]


# --- The grid -------------------------------------------------------------------


def test_parse_axis_reads_gin_literals():
  assert grid.parse_axis("PROMPT_LENGTH=[1, 5, 100]") == grid.Axis("PROMPT_LENGTH", [1, 5, 100])
  assert grid.parse_axis(" MIXTURE_OR_TASK_NAME = ['taskless_a', 'b'] ").values == [
      "taskless_a", "b"]
  assert grid.parse_axis("optimizers.adafactor.learning_rate=[0.3, 1e-2]").values == [0.3, 0.01]
  assert grid.parse_axis("TASK_FEATURE_LENGTHS=[{'inputs': 512, 'targets': 8}]").values == [
      {"inputs": 512, "targets": 8}]
  axis = grid.parse_axis("gin_file=['prompts/random_uniform.gin', 'prompts/class_labels.gin']")
  assert axis.name == "gin_file" and len(axis.values) == 2


def test_grid_is_the_product_first_axis_slowest(tmp_path):
  axes = grid.parse_axes(["PROMPT_LENGTH=[1, 5]",
                           "gin_file=['prompts/random_uniform.gin', 'prompts/class_labels.gin']",
                           "RANDOM_SEED=[0, 1]"])
  points = grid.grid(axes, FILES, str(tmp_path))
  assert [p.name for p in points[:3]] == [
      "PROMPT_LENGTH=1,gin_file=random_uniform,RANDOM_SEED=0",
      "PROMPT_LENGTH=1,gin_file=random_uniform,RANDOM_SEED=1",
      "PROMPT_LENGTH=1,gin_file=class_labels,RANDOM_SEED=0"]
  assert len(points) == 8 and len({p.name for p in points}) == 8
  last = points[-1]
  assert last.values == {"PROMPT_LENGTH": 5, "gin_file": "prompts/class_labels.gin",
                         "RANDOM_SEED": 1}
  assert last.bindings == ["PROMPT_LENGTH = 5", "RANDOM_SEED = 1"]
  assert last.gin_files == FILES + ["prompts/class_labels.gin"]
  assert last.model_dir == str(tmp_path / last.name)
  gs = grid.grid(axes, FILES, "gs://bucket/sweep/")
  assert gs[0].model_dir == "gs://bucket/sweep/" + gs[0].name


def test_point_names_are_deterministic_safe_and_bounded():
  strings = grid.point_name({"MIXTURE_OR_TASK_NAME": "a b/c:d", "CLASS_LABELS": ["x", "y"]})
  assert strings == "MIXTURE_OR_TASK_NAME=a_b_c_d,CLASS_LABELS=_x_y_"
  long_a = grid.point_name({"PROMPT_STRING": "w" * 300 + "a"})
  long_b = grid.point_name({"PROMPT_STRING": "w" * 300 + "b"})
  assert len(long_a) <= 200 and len(long_b) <= 200 and long_a != long_b
  assert long_a == grid.point_name({"PROMPT_STRING": "w" * 300 + "a"})
  assert grid.point_name({"optimizers.adafactor.learning_rate": 0.3}) == (
      "optimizers.adafactor.learning_rate=0.3")


def test_json_values_and_gin_text():
  assert grid.json_value(5) == 5 and grid.json_value("x") == "x"
  assert grid.json_value(None) is None and grid.json_value([1, "a"]) == [1, "a"]
  assert grid.json_value({"inputs": 512}) == {"inputs": 512}
  assert grid.json_value((1, 2)) == "(1, 2)"
  assert grid.json_value([(1, 2)]) == "[(1, 2)]"


# --- The manifest ---------------------------------------------------------------


def _manifest(values, bindings=("BATCH_SIZE = 32", "TRAIN_STEPS = 300"), steps=300):
  axes = [grid.Axis("PROMPT_LENGTH", values)]
  points = grid.grid(axes, FILES, "/sweep")
  for point in points:
    point.train_steps = steps
  return grid.manifest(grid.Sweep("/sweep", "local", FILES, list(bindings), axes, points))


def test_manifest_schema():
  m = _manifest([1, 5])
  assert set(m) == {"version", "sweep_dir", "launcher", "base", "axes", "points"}
  assert m["base"] == {"gin_files": FILES, "gin_bindings": ["BATCH_SIZE = 32",
                                                            "TRAIN_STEPS = 300"]}
  assert m["axes"] == [{"name": "PROMPT_LENGTH", "values": [1, 5]}]
  assert m["points"][1] == {"name": "PROMPT_LENGTH=5", "model_dir": "/sweep/PROMPT_LENGTH=5",
                            "values": {"PROMPT_LENGTH": 5}, "bindings": ["PROMPT_LENGTH = 5"],
                            "gin_files": FILES, "train_steps": 300}
  json.dumps(m)


def test_manifest_merge_adds_points_and_refuses_to_mix():
  merged = grid.merge(_manifest([1, 5]), _manifest([5, 20]), "sweep.json")
  assert [p["name"] for p in merged["points"]] == ["PROMPT_LENGTH=1", "PROMPT_LENGTH=5",
                                                   "PROMPT_LENGTH=20"]
  assert merged["axes"] == [{"name": "PROMPT_LENGTH", "values": [1, 5, 20]}]
  # A larger TRAIN_STEPS continues the runs (as pt-train does): not a conflict.
  longer = grid.merge(_manifest([1]), _manifest([1], ("BATCH_SIZE = 32", "TRAIN_STEPS = 900"),
                                                 900), "sweep.json")
  assert longer["points"][0]["train_steps"] == 900
  with pytest.raises(grid.SweepError, match="other base bindings.*BATCH_SIZE = 16"):
    grid.merge(_manifest([1]), _manifest([1], ("BATCH_SIZE = 16", "TRAIN_STEPS = 300")), "s")
  clash = _manifest([1])
  clash["points"][0]["values"] = {"PROMPT_LENGTH": "1"}
  with pytest.raises(grid.SweepError, match="PROMPT_LENGTH=1 is already in s with other values"):
    grid.merge(clash, _manifest([1]), "s")


# --- Bad input: one line, exit status 1, nothing written ------------------------

BAD_SWEEPS = {
    "unknown_macro": (["--sweep=PROMPT_LENGHT=[1, 5]"], ["--sweep=PROMPT_LENGHT",
                                                         "did you mean", "PROMPT_LENGTH"]),
    "macro_no_config_uses": (["--sweep=SMOP_NUM_PROMPTS=[2, 4]"],
                             ["--sweep=SMOP_NUM_PROMPTS", "no config uses"]),
    "empty_list": (["--sweep=PROMPT_LENGTH=[]"], ["PROMPT_LENGTH", "empty"]),
    "unparsable": (["--sweep=MIXTURE_OR_TASK_NAME=[taskless_x]"], ["quote strings"]),
    "not_a_list": (["--sweep=PROMPT_LENGTH=5"], ["not a list"]),
    "no_equals": (["--sweep=PROMPT_LENGTH"], ["NAME=[v1, v2, ...]"]),
    "swept_twice": (["--sweep=PROMPT_LENGTH=[1]", "--sweep=PROMPT_LENGTH=[2]"], ["twice"]),
    "value_twice": (["--sweep=PROMPT_LENGTH=[1, 1]"], ["listed twice"]),
    "clashing_names": (["--sweep=MIXTURE_OR_TASK_NAME=['a b', 'a_b']"], ["same folder name"]),
    "model_dir_swept": (["--sweep=MODEL_DIR=['/a', '/b']"], ["MODEL_DIR"]),
    "model_dir_in_base": (["--sweep=PROMPT_LENGTH=[1]", "--gin.MODEL_DIR='/x'"], ["MODEL_DIR"]),
    "bad_name": (["--sweep=prompt_length=[1]"], ["gin macro"]),
    "no_sweep": ([], ["no --sweep"]),
    "no_sweep_dir": (["--sweep=PROMPT_LENGTH=[1]", "--sweep_dir="], ["--sweep_dir"]),
    "malformed_gin_value": (["--sweep=PROMPT_LENGTH=[1]", "--gin.BATCH_SIZE=[8"],
                            ["gin config error"]),
    "gin_flag_without_value": (["--sweep=PROMPT_LENGTH=[1]", "--gin.BATCH_SIZE"],
                               ["--gin.BATCH_SIZE has no value"]),
    "missing_gin_file": (["--sweep=gin_file=['prompts/nope.gin']"], ["nope.gin"]),
    "non_integer_steps": (["--sweep=TRAIN_STEPS=['x']"], ["TRAIN_STEPS must be an integer"]),
    # Every point is checked as pt-train would before the first one runs.
    "bad_value_in_a_later_point": (["--sweep=PROMPT_LENGTH=[2, -5]"],
                                   ["PROMPT_LENGTH must be a positive integer, got -5",
                                    "(point PROMPT_LENGTH=-5)"]),
    "unknown_flag": (["--sweep=PROMPT_LENGTH=[1]", "--swep=1"], ["swep"]),
    "unknown_launcher": (["--sweep=PROMPT_LENGTH=[1]", "--launcher=slurm"],
                         ["unknown launcher", "tpu-vm"]),
    "option_of_other_launcher": (["--sweep=PROMPT_LENGTH=[1]", "--zone=us-central2-b"],
                                 ["--zone", "--launcher=local"]),
    "tpu_vm_local_dir": (["--sweep=PROMPT_LENGTH=[1]", "--launcher=tpu-vm", "--zone=z"],
                         ["gs://"]),
    "tpu_vm_no_zone": (["--sweep=PROMPT_LENGTH=[1]", "--launcher=tpu-vm",
                        "--sweep_dir=gs://bucket/sweep"], ["--zone"]),
    "skypilot_no_accelerator": (["--sweep=PROMPT_LENGTH=[1]", "--launcher=skypilot",
                                 "--sweep_dir=gs://bucket/sweep"], ["--accelerator"]),
    "tpu_vm_no_setup": (["--sweep=PROMPT_LENGTH=[1]", "--launcher=tpu-vm", "--zone=z",
                         "--sweep_dir=gs://bucket/sweep"], ["needs --setup", "not on PyPI"]),
    "skypilot_no_setup": (["--sweep=PROMPT_LENGTH=[1]", "--launcher=skypilot",
                           "--accelerator=A100:8", "--sweep_dir=gs://bucket/sweep"],
                          ["needs --setup"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_bad_input_is_one_error_line_and_writes_nothing(case, tmp_path, capsys):
  args, needles = BAD_SWEEPS[case]
  sweep_dir = tmp_path / "sweep"
  dir_flag = [] if any(a.startswith("--sweep_dir") for a in args) else [f"--sweep_dir={sweep_dir}"]
  status, _, err = run_in_process(capsys, *BASE, *dir_flag, *args)
  one_error_line(status, err, *needles)
  assert not sweep_dir.exists()


def test_one_sweep_per_folder(tmp_path, capsys):
  """A second pt-sweep on a folder another one is running is refused (the
  holder named) and writes nothing: not even the manifest."""
  from prompt_tuning.storage import run_lock  # pylint: disable=g-import-not-at-top
  sweep_dir = tmp_path / "sweep"
  held = run_lock.RunLock(str(sweep_dir), filename=run_lock.SWEEP_FILENAME, owner="pt-sweep",
                          folder="--sweep_dir").acquire()
  try:
    status, _, err = run_in_process(capsys, *BASE, "--sweep=PROMPT_LENGTH=[1]",
                                    f"--sweep_dir={sweep_dir}")
  finally:
    held.release()
  one_error_line(status, err, f"--sweep_dir {sweep_dir} is in use by another pt-sweep",
                 f"pid {os.getpid()}")
  assert os.listdir(sweep_dir) == []


def test_sweep_dir_that_is_a_file_is_one_line(tmp_path, capsys):
  (tmp_path / "a_file").write_text("mine")
  for where in (tmp_path / "a_file", tmp_path / "a_file" / "sweep"):
    status, _, err = run_in_process(capsys, *BASE, "--sweep=PROMPT_LENGTH=[1]",
                                    f"--sweep_dir={where}")
    one_error_line(status, err, "--sweep_dir: ", "is a file, not a folder", "give a folder")
    sweep.FLAGS.unparse_flags()
  assert (tmp_path / "a_file").read_text() == "mine"


def test_bad_input_from_the_command_line(tmp_path):
  """The console path: absl, gin validation in the process, one line."""
  result = run_cli(*BASE, "--sweep=PROMPT_LENGHT=[1, 5]", f"--sweep_dir={tmp_path / 's'}")
  one_error_line(result.returncode, result.stderr, "did you mean", "PROMPT_LENGTH")
  result = run_cli(*BASE, "--sweep=PROMPT_LENGTH=[1]", "--parallel=0",
                   f"--sweep_dir={tmp_path / 's'}")
  one_error_line(result.returncode, result.stderr, "parallel")
  assert not (tmp_path / "s").exists()


def test_report_subcommand_is_dispatched(monkeypatch):
  calls = []
  fake = type(sys)("prompt_tuning.sweep.report")
  fake.console_main = lambda argv: calls.append(argv) or 3
  monkeypatch.setitem(sys.modules, "prompt_tuning.sweep.report", fake)
  monkeypatch.setattr("prompt_tuning.sweep.report", fake, raising=False)
  monkeypatch.setattr(sys, "argv", ["pt-sweep", "report", "/runs/a", "--noplots"])
  with pytest.raises(SystemExit) as exit_info:
    sweep.console_main()
  assert exit_info.value.code == 3 and calls == [["/runs/a", "--noplots"]]


def test_parent_never_starts_a_jax_backend(tmp_path):
  """Validation imports the library (and JAX) but must leave the accelerators
  to the points: on a TPU VM a backend here would hold every chip."""
  probe = ("import sys; from prompt_tuning.sweep import main as sweep; "
           "from jax._src import xla_bridge;"
           f"status = sweep.main(['pt-sweep', *{BASE!r}, '--sweep=PROMPT_LENGTH=[1, 2]',"
           f" '--sweep_dir={tmp_path}', '--dry_run']);"
           "started = getattr(xla_bridge, 'backends_are_initialized',"
           " lambda: bool(xla_bridge._backends))();"
           "print('STATUS', status, 'BACKENDS', started)")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                       timeout=300, check=False)
  assert "STATUS 0 BACKENDS False" in out.stdout, out.stderr[-3000:]
  assert "-m prompt_tuning.train" in out.stdout


# --- Cloud TPU and SkyPilot dry runs ---------------------------------------------

SWEEP_2X2 = ["--sweep=PROMPT_LENGTH=[1, 5]",
             "--sweep=gin_file=['prompts/random_uniform.gin', 'prompts/sampled_vocab.gin']"]


def test_tpu_vm_dry_run_prints_the_gcloud_commands(capsys):
  status, out, err = run_in_process(
      capsys, *BASE, *SWEEP_2X2, "--sweep_dir=gs://bucket/sweep", "--launcher=tpu-vm",
      "--zone=us-central2-b", "--project=my-project", "--accelerator=v4-32", "--spot",
      "--dry_run")
  assert status == 0, err
  lines = [shlex.split(l) for l in commands(out)]
  assert len(lines) == 4 * 5  # create, describe, setup, train, delete per point
  where = ["--zone=us-central2-b", "--project=my-project"]
  create, describe, setup, train, delete = lines[:5]
  name = create[5]
  assert name.startswith("pt-prompt-length-1-gin-file-random-uniform-") and len(name) <= 60
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", name,
                    f"--node-id={name}", *where, "--accelerator-type=v4-32",
                    "--runtime-version=tpu-ubuntu2204-base", "--spot"]
  assert describe == ["gcloud", "compute", "tpus", "queued-resources", "describe", name, *where,
                      "--format=value(state.state)"]
  for ssh in (setup, train):
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name]
    assert ssh[6:10] == [*where, "--worker=all", "--quiet"]
    assert ssh[10].startswith("--command=")
  assert "pip install" in setup[10]
  argv = bash_argv(train[10][len("--command="):])
  model_dir = "gs://bucket/sweep/PROMPT_LENGTH=1,gin_file=random_uniform"
  assert argv[:3] == ["-m", "prompt_tuning.train", "--distributed"]
  assert argv[-2:] == ["--gin_bindings=PROMPT_LENGTH = 1",
                       f"--gin_bindings=MODEL_DIR = '{model_dir}'"]
  assert [a for a in argv if a.startswith("--gin_file=")] == (
      ["--gin_file=" + f for f in FILES] + ["--gin_file=prompts/random_uniform.gin"])
  assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", name, *where,
                    "--force", "--quiet"]
  assert len({l[5] for l in lines}) == 4  # a slice per point

  status, out, err = run_in_process(
      capsys, *BASE, "--sweep=PROMPT_LENGTH=[1]", "--sweep_dir=gs://bucket/sweep",
      "--launcher=tpu-vm", "--zone=us-central2-b", "--noqueued", "--preemptible", "--dry_run")
  assert status == 0, err
  create, setup, train, delete = [shlex.split(l) for l in commands(out)]
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert create[6:] == ["--zone=us-central2-b", "--accelerator-type=v4-8",
                        "--version=tpu-ubuntu2204-base", "--preemptible"]
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", create[5],
                    "--zone=us-central2-b", "--quiet"]


def test_skypilot_dry_run_writes_task_yaml(tmp_path, capsys):
  status, out, err = run_in_process(
      capsys, *BASE, *SWEEP_2X2, "--sweep_dir=gs://bucket/sweep", "--launcher=skypilot",
      "--accelerator=A100:8", "--num_nodes=2", "--spot", "--infra=gcp",
      f"--task_dir={tmp_path}", "--dry_run")
  assert status == 0, err
  launches = [shlex.split(l) for l in commands(out)]
  assert len(launches) == 4 and len(list(tmp_path.glob("*.yaml"))) == 4
  cmd = launches[0]
  assert cmd[:5] == ["sky", "jobs", "launch", "-n", cmd[4]] and cmd[6:] == ["--yes",
                                                                            "--detach-run"]
  task = yaml.safe_load(open(cmd[5], encoding="utf-8"))
  # Keys of SkyPilot's task schema (sky/utils/schemas.py: get_task_schema).
  assert set(task) == {"name", "resources", "num_nodes", "setup", "run"}
  assert task["name"] == cmd[4]
  assert task["resources"] == {"accelerators": "A100:8", "infra": "gcp", "use_spot": True}
  assert task["num_nodes"] == 2 and "pip install" in task["setup"]
  argv = bash_argv(task["run"], {"SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8",
                                 "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1"})
  assert argv[:6] == ["-m", "prompt_tuning.train", "--distributed",
                      "--coordinator_address=10.0.0.7:8476", "--num_processes=2",
                      "--process_id=1"]
  assert argv[-1] == ("--gin_bindings=MODEL_DIR = "
                      "'gs://bucket/sweep/PROMPT_LENGTH=1,gin_file=random_uniform'")

  status, out, err = run_in_process(
      capsys, *BASE, "--sweep=PROMPT_LENGTH=[1]", "--sweep_dir=gs://bucket/sweep",
      "--launcher=skypilot", "--accelerator=tpu-v4-32", "--runtime_version=tpu-vm-base",
      f"--task_dir={tmp_path / 'tpu'}", "--dry_run")
  assert status == 0, err
  (path,) = (tmp_path / "tpu").glob("*.yaml")
  task = yaml.safe_load(path.read_text())
  assert task["resources"] == {"accelerators": "tpu-v4-32",
                               "accelerator_args": {"runtime_version": "tpu-vm-base"}}
  assert "num_nodes" not in task and "jax[tpu]" in task["setup"]
  assert bash_argv(task["run"])[:3] == ["-m", "prompt_tuning.train", "--distributed"]


# --- A real local sweep -----------------------------------------------------------


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, frozen_ckpt):
  """A finished 2-point sweep (PROMPT_LENGTH 2 and 3, 2 steps, 2 at a time)."""
  root = tmp_path_factory.mktemp("sweep")
  ckpt = frozen_ckpt
  args = (["--gin_file=" + f for f in FILES]
          + helpers.as_flags(helpers.TINY_BINDINGS + [
              f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", "TRAIN_STEPS = 2", "EVAL_PERIOD = None"])
          + ["--sweep=PROMPT_LENGTH=[2, 3]", f"--sweep_dir={root / 'sweep'}", "--parallel=2",
             "--noreport"])
  return root / "sweep", args, run_cli(*args)


def test_local_sweep_trains_every_point(local_sweep):
  sweep_dir, _, result = local_sweep
  assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
  assert "2 done, 0 skipped (finished), 0 failed" in result.stdout
  manifest = json.loads((sweep_dir / "sweep.json").read_text())
  assert manifest["axes"] == [{"name": "PROMPT_LENGTH", "values": [2, 3]}]
  for point, length in zip(manifest["points"], [2, 3]):
    assert point["name"] == f"PROMPT_LENGTH={length}" and point["train_steps"] == 2
    assert point["status"] == "done" and "error" not in point
    assert point["model_dir"] == str(sweep_dir / point["name"])
    assert numpy_checkpoints.steps(point["model_dir"]) == [0, 2]
    prompt = numpy_checkpoints.load_params(
        numpy_checkpoints.checkpoint_dir(point["model_dir"], 2), ["encoder/prompt/prompt"])
    assert prompt["encoder"]["prompt"]["prompt"].shape == (length, 32)
    assert "Training finished" in (sweep_dir / "logs" / f"{point['name']}.log").read_text()


def test_rerun_skips_finished_points(local_sweep):
  sweep_dir, args, first = local_sweep
  assert first.returncode == 0, first.stderr[-3000:]
  before = helpers.snapshot(sweep_dir)
  start = time.time()
  result = run_cli(*args)
  took = time.time() - start
  assert result.returncode == 0, result.stderr[-3000:]
  assert "0 done, 2 skipped (finished), 0 failed" in result.stdout
  assert helpers.snapshot(sweep_dir) == before  # no pt-train ran, no log grew
  assert took < 30, took


def test_changed_base_into_same_sweep_dir_is_an_error(local_sweep, capsys):
  sweep_dir, args, first = local_sweep
  assert first.returncode == 0, first.stderr[-3000:]
  before = helpers.snapshot(sweep_dir)
  status, _, err = run_in_process(capsys, *args, "--gin.BATCH_SIZE=4")
  one_error_line(status, err, "other base bindings", "BATCH_SIZE = 4", "another --sweep_dir")
  # A bigger grid adds points: the dry run shows only the new one to run.
  status, out, err = run_in_process(capsys, *[a for a in args if not a.startswith("--sweep=")],
                                    "--sweep=PROMPT_LENGTH=[2, 3, 4]", "--dry_run")
  assert status == 0, err
  assert "2 finished (skipped), 1 to run" in out
  assert [shlex.split(l)[-1] for l in commands(out)] == [
      f"--gin_bindings=MODEL_DIR = '{sweep_dir / 'PROMPT_LENGTH=4'}'"]
  assert helpers.snapshot(sweep_dir) == before


def test_failing_points_do_not_stop_the_others(tmp_path):
  result = run_cli(*BASE, "--sweep=MIXTURE_OR_TASK_NAME=['no_such_task', 'nor_this_one']",
                   f"--sweep_dir={tmp_path}", "--noreport")
  line = one_error_line(result.returncode, result.stderr, "2 of 2 points failed",
                        "MIXTURE_OR_TASK_NAME=no_such_task", "pt-train: error:")
  assert "unknown task or mixture 'no_such_task'" in line, line
  points = json.loads((tmp_path / "sweep.json").read_text())["points"]
  for point, task in zip(points, ("no_such_task", "nor_this_one")):
    log = tmp_path / "logs" / f"MIXTURE_OR_TASK_NAME={task}.log"
    assert point["status"] == "failed" and point["log"] == str(log)
    assert point["error"].startswith("pt-train: error:") and task in point["error"]
    assert f"unknown task or mixture '{task}'" in log.read_text()
    assert f"FAILED MIXTURE_OR_TASK_NAME={task}" in result.stdout


SKYPILOT = "skypilot>=0.14,<0.15"


def _skypilot_python():
  """A virtualenv with SkyPilot (not a dependency of ours: 90-odd packages),
  made once on this machine and kept (PT_TEST_SKYPILOT_VENV, default
  ~/.cache/prompt-tuning-jax/skypilot-0.14); its python. Skips with the reason
  where it cannot be installed (no package registry)."""
  venv = os.environ.get("PT_TEST_SKYPILOT_VENV") or os.path.join(
      os.path.expanduser("~"), ".cache", "prompt-tuning-jax", "skypilot-0.14")
  python = os.path.join(venv, "bin", "python")
  ready = os.path.join(venv, "installed")
  if not os.path.exists(ready):
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", venv], capture_output=True,
                          text=True, check=False)
    # --no-compile: byte-compiling 90-odd packages is most of the CPU an install takes.
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "--no-compile",
                          "--disable-pip-version-check", SKYPILOT], capture_output=True,
                         text=True, timeout=900, check=False) if made.returncode == 0 else made
    if pip.returncode != 0:
      pytest.skip(f"cannot install {SKYPILOT} into {venv}: {pip.stderr.strip()[-300:]}")
    open(ready, "w").close()
  return python


def test_skypilot_loads_the_task_yaml_with_its_own_loader(tmp_path, capsys):
  """The task files pt-sweep writes, read by SkyPilot itself (sky.Task.from_yaml,
  which validates them against its schema): a GPU multi-node spot task and a
  TPU pod task."""
  for name, extra in (("gpu", ["--accelerator=A100:8", "--num_nodes=2", "--spot", "--infra=gcp"]),
                      ("tpu", ["--accelerator=tpu-v4-32", "--runtime_version=tpu-vm-base"])):
    status, _, err = run_in_process(
        capsys, *BASE, "--sweep=PROMPT_LENGTH=[1]", "--sweep_dir=gs://bucket/sweep",
        "--launcher=skypilot", *extra, f"--task_dir={tmp_path / name}", "--dry_run")
    assert status == 0, err
    sweep.FLAGS.unparse_flags()
  script = ("import json, sys, sky\n"
            "for path in sys.argv[1:]:\n"
            "  task = sky.Task.from_yaml(path)\n"
            "  (r,) = task.resources\n"
            "  print(json.dumps([task.name, task.num_nodes, r.accelerators, r.use_spot,\n"
            "                    str(r.cloud), r.accelerator_args, task.run, task.setup]))\n")
  paths = [str(next((tmp_path / name).glob("*.yaml"))) for name in ("gpu", "tpu")]
  result = subprocess.run([_skypilot_python(), "-c", script, *paths], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  (gpu, tpu) = [json.loads(line) for line in result.stdout.splitlines()]
  mine = [yaml.safe_load(open(p, encoding="utf-8")) for p in paths]
  assert gpu[:6] == [mine[0]["name"], 2, {"A100": 8}, True, "GCP", None]
  assert tpu[:6] == [mine[1]["name"], 1, {"tpu-v4-32": 1}, False, "GCP",
                     {"runtime_version": "tpu-vm-base"}]
  assert [gpu[6], gpu[7]] == [mine[0]["run"], mine[0]["setup"]]
  assert [tpu[6], tpu[7]] == [mine[1]["run"], mine[1]["setup"]]
