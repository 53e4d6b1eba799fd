"""pt-sweep: one command for a grid of pt-train runs.

    pt-sweep --gin_file=models/t5_1_1_base_prompt.gin --gin_file=runs/prompt_finetune.gin \
             --gin.INITIAL_CHECKPOINT_PATH="'...'" ... \
             --sweep='PROMPT_LENGTH=[1, 5, 20, 100]' \
             --sweep="gin_file=['prompts/random_uniform.gin', 'prompts/class_labels.gin']" \
             --sweep='RANDOM_SEED=[0, 1, 2]' --sweep_dir=/runs/ablation --parallel=4

The base flags are pt-train's; each `--sweep='NAME=[v1, ...]'` is an axis (a gin
macro, a `configurable.parameter`, or `gin_file`: extra gin files appended after
the base ones) and the grid is their product, the first axis varying slowest.
Every point trains in its own MODEL_DIR, SWEEP_DIR/<name>, named by its swept
values; SWEEP_DIR/sweep.json lists the points (the manifest `pt-sweep report`
reads). Every point's config is parsed with gin before anything runs or is
written. Rerunning skips finished points (a numpy checkpoint at TRAIN_STEPS)
and resumes the others (pt-train resumes by itself). A launcher
(prompt_tuning/sweep/launchers/) runs the points: `local` (subprocesses), `tpu-vm`
(a Cloud TPU slice per point), `skypilot` (managed jobs).

`pt-sweep report ROOT ...` is the report command (prompt_tuning/sweep/report.py).
"""
import json
import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from prompt_tuning import cli  # pylint: disable=unused-import  (pt-train's flags: --gin_file, ...)
from prompt_tuning.sweep.grid import (MANIFEST, Outcome, Point, Sweep, SweepError, binding_names,
                                      grid, is_finished, join, manifest, merge, parse_axes,
                                      read_manifest, record_outcomes, validate)

PROG = "pt-sweep"

flags.DEFINE_multi_string("sweep", [], "An axis of the grid: NAME=[v1, v2, ...], NAME a gin "
                          "macro, a configurable.parameter or gin_file; values are gin/Python "
                          "literals. Repeat for a product (the first varies slowest).")
flags.DEFINE_string("sweep_dir", None, "Root folder: one MODEL_DIR per point, sweep.json, logs/.")
flags.DEFINE_string("launcher", "local", "How the points run: local, tpu-vm, skypilot "
                    "(a module of prompt_tuning.sweep.launchers).")
flags.DEFINE_bool("dry_run", False, "Print what would run (and write SkyPilot task files); "
                  "run and write nothing else.")
flags.DEFINE_bool("report", True, "After the points, print and write the report "
                  "(pt-sweep report SWEEP_DIR).")
flags.DEFINE_integer("parallel", 1, "Points at a time (local: pt-train processes; tpu-vm: "
                     "slices; skypilot: submissions).", lower_bound=1)
# Launcher options: each launcher lists the ones it reads (FLAGS_USED); setting
# one that the chosen launcher ignores is an error rather than a silent no-op.
flags.DEFINE_list("visible_devices", None, "local: GPU ids to share among the running points "
                  "(default: $CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`).")
flags.DEFINE_integer("devices_per_point", None, "local: GPUs per point (default: the GPUs "
                     "split evenly over --parallel).", lower_bound=1)
flags.DEFINE_string("zone", None, "tpu-vm: the Cloud TPU zone, e.g. us-central2-b.")
flags.DEFINE_string("project", None, "tpu-vm: the Google Cloud project (default: gcloud's).")
flags.DEFINE_string("accelerator", None, "tpu-vm: the accelerator type (default v4-8); "
                    "skypilot: the accelerators, e.g. A100:8 or tpu-v4-8.")
flags.DEFINE_string("runtime_version", None, "tpu-vm, skypilot (TPUs): the TPU VM software "
                    "version (tpu-vm default tpu-ubuntu2204-base).")
flags.DEFINE_bool("queued", True, "tpu-vm: create slices as queued resources (else "
                  "`tpu-vm create`).")
flags.DEFINE_bool("spot", False, "tpu-vm, skypilot: Spot capacity (preemptible; a preempted "
                  "point resumes when the sweep is rerun, or by SkyPilot's recovery).")
flags.DEFINE_bool("preemptible", False, "tpu-vm with --noqueued: a preemptible TPU VM.")
flags.DEFINE_string("setup", None, "tpu-vm, skypilot: the shell command that installs "
                    "prompt-tuning-jax and JAX on each host.")
flags.DEFINE_integer("poll_seconds", 30, "tpu-vm: seconds between queued-resource state "
                     "checks.", lower_bound=1)
flags.DEFINE_integer("num_nodes", 1, "skypilot: nodes per point (multi-host GPU runs).",
                     lower_bound=1)
flags.DEFINE_string("infra", None, "skypilot: where to run, e.g. gcp, aws/us-east-1, k8s.")
flags.DEFINE_string("task_dir", None, "skypilot: local folder for the task YAML files "
                    "(default: a new temporary folder).")
flags.DEFINE_integer("coordinator_port", 8476, "skypilot, num_nodes > 1: the "
                     "jax.distributed coordinator port on the first node.")

LAUNCHER_FLAGS = ("visible_devices", "devices_per_point", "zone", "project", "accelerator",
                  "runtime_version", "queued", "spot", "preemptible", "setup", "poll_seconds",
                  "num_nodes", "infra", "task_dir", "coordinator_port")

FLAGS = flags.FLAGS


def _sweep_from_flags() -> Sweep:
  from prompt_tuning.storage import file_utils  # pylint: disable=g-import-not-at-top
  if not FLAGS.sweep_dir:
    raise SweepError("--sweep_dir is required: the folder that gets one MODEL_DIR per point")
  for name in ("distributed", "coordinator_address", "num_processes", "process_id"):
    if FLAGS[name].present:
      raise SweepError(f"--{name} is pt-train's; the launcher passes it where runs span hosts")
  if "MODEL_DIR" in binding_names(FLAGS.gin_bindings):
    raise SweepError("--gin.MODEL_DIR: pt-sweep sets each point's MODEL_DIR to "
                     "SWEEP_DIR/<point name>; give --sweep_dir instead")
  sweep_dir = FLAGS.sweep_dir
  problem = file_utils.folder_problem(sweep_dir)
  if problem:
    raise SweepError(f"--sweep_dir: {problem}: give a folder")
  if not file_utils.is_remote(sweep_dir):
    sweep_dir = os.path.abspath(sweep_dir)  # the manifest's paths work from anywhere
  axes = parse_axes(FLAGS.sweep)
  return Sweep(sweep_dir=sweep_dir, launcher=FLAGS.launcher, base_files=list(FLAGS.gin_file),
               base_bindings=list(FLAGS.gin_bindings), axes=axes,
               points=grid(axes, FLAGS.gin_file, sweep_dir),
               search_paths=list(FLAGS.gin_search_paths), tfds_data_dir=FLAGS.tfds_data_dir,
               parallel=FLAGS.parallel, dry_run=FLAGS.dry_run,
               options={name: FLAGS[name].value for name in LAUNCHER_FLAGS})


def _check_launcher_flags(module, launcher: str) -> None:
  used = set(getattr(module, "FLAGS_USED", ()))
  for name in LAUNCHER_FLAGS:
    if FLAGS[name].present and name not in used:
      raise SweepError(f"--{name} is not an option of --launcher={launcher}")


def run_sweep(sweep: Sweep, launcher_module, report: bool) -> int:
  """Validates, writes the manifest, runs what is unfinished; returns the exit status."""
  validate(sweep)
  launcher_module.check(sweep)
  if sweep.dry_run:
    return _run_locked(sweep, launcher_module, None)
  # One pt-sweep per folder (as one pt-train per MODEL_DIR): a second one would
  # launch the same points and overwrite the manifest with stale statuses.
  from prompt_tuning.storage import run_lock  # pylint: disable=g-import-not-at-top
  lock = run_lock.RunLock(sweep.sweep_dir, filename=run_lock.SWEEP_FILENAME, owner="pt-sweep",
                          folder="--sweep_dir")
  try:
    lock.acquire()
  except run_lock.LockError as e:
    raise SweepError(str(e)) from None
  try:
    return _run_locked(sweep, launcher_module, report)
  finally:
    lock.release()


def _run_locked(sweep: Sweep, launcher_module, report: Optional[bool]) -> int:
  """run_sweep's work, holding the folder (report None: a dry run)."""
  from prompt_tuning.storage import file_utils  # pylint: disable=g-import-not-at-top
  path = join(sweep.sweep_dir, MANIFEST)
  # A dry run reads nothing remote (no credentials needed to see the commands).
  look = not (sweep.dry_run and file_utils.is_remote(sweep.sweep_dir))
  new = manifest(sweep)
  old = read_manifest(path) if look else None
  merged = merge(old, new, path) if old is not None else new
  todo = [p for p in sweep.points if not (look and is_finished(p))]
  skipped = [p for p in sweep.points if p not in todo]
  print(f"{PROG}: {len(sweep.points)} points in {sweep.sweep_dir}: {len(skipped)} finished "
        f"(skipped), {len(todo)} to run with --launcher={sweep.launcher}"
        + (" (dry run)" if sweep.dry_run else ""), flush=True)
  if sweep.dry_run:
    launcher_module.run(sweep, todo)
    return 0
  file_utils.write_text_atomic(path, json.dumps(merged, indent=2) + "\n")
  outcomes = launcher_module.run(sweep, todo) if todo else []
  record_outcomes(merged, skipped, outcomes)
  file_utils.write_text_atomic(path, json.dumps(merged, indent=2) + "\n")
  if not getattr(launcher_module, "BLOCKING", True):
    print(f"{PROG}: when the jobs have ended: {PROG} report {sweep.sweep_dir}")
  elif report:
    from prompt_tuning.sweep import report as report_lib  # pylint: disable=g-import-not-at-top
    print(report_lib.write_report(sweep.sweep_dir))
  return _summary(sweep, skipped, outcomes)


def _summary(sweep: Sweep, skipped: List[Point], outcomes: List[Outcome]) -> int:
  by_status = {s: [o for o in outcomes if o.status == s] for s in ("done", "submitted", "failed")}
  print(f"{PROG}: {len(by_status['done'])} done, {len(skipped)} skipped (finished), "
        + (f"{len(by_status['submitted'])} submitted, " if by_status["submitted"] else "")
        + f"{len(by_status['failed'])} failed", flush=True)
  for outcome in by_status["submitted"]:
    print(f"  submitted {outcome.name}: {outcome.detail}")
  for outcome in by_status["failed"]:
    print(f"  FAILED {outcome.name}: {outcome.detail}" + (f" (log: {outcome.log})"
                                                          if outcome.log else ""))
  sys.stdout.flush()
  failed = by_status["failed"]
  if failed:
    first = failed[0]
    sys.stderr.write(f"{PROG}: error: {len(failed)} of {len(sweep.points)} points failed, first "
                     f"{first.name}: {first.detail} (log: {first.log}); rerun to retry them\n")
    return 1
  return 0


# --- Command line ---------------------------------------------------------------


def _parse_flags(argv: Sequence[str]) -> List[str]:
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  try:
    return FLAGS(gin_utils.rewrite_gin_args(list(argv)))
  except gin_utils.ConfigError as e:
    raise SweepError(str(e)) from None
  except flags.Error as e:
    raise SweepError(str(e).strip().splitlines()[0]) from None


def _run_parsed(argv: Sequence[str]) -> int:
  from prompt_tuning.sweep import launchers  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise SweepError(f"unexpected arguments: {' '.join(argv[1:])} (did you mean "
                     f"{PROG} report ROOT?)")
  module = launchers.get(FLAGS.launcher)  # SweepError when unknown
  _check_launcher_flags(module, FLAGS.launcher)
  return run_sweep(_sweep_from_flags(), module, FLAGS.report)


def _error(e: Exception) -> int:
  """One line for a SweepError, or an OSError (storage unreachable, a
  permission, a full disk: the machine's, its message names the path)."""
  text = str(e).strip()
  sys.stderr.write(f"{PROG}: error: {text.splitlines()[0] if text else type(e).__name__}\n")
  return 1


def main(argv: Sequence[str]) -> int:
  """The sweep command without absl's app.run (for tests): returns the exit status."""
  FLAGS.unparse_flags()
  try:
    return _run_parsed(_parse_flags(argv))
  except (SweepError, OSError) as e:
    return _error(e)


def console_main():
  if sys.argv[1:2] == ["report"]:
    from prompt_tuning.sweep import report  # pylint: disable=g-import-not-at-top
    sys.exit(report.console_main(sys.argv[2:]))
  from prompt_tuning import command  # pylint: disable=g-import-not-at-top
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top

  def rewrite(argv):
    try:
      return gin_utils.rewrite_gin_args(list(argv))
    except gin_utils.ConfigError as e:
      command.fail(PROG, e)

  def run(*args):
    try:
      return _run_parsed([PROG, *args])
    except (SweepError, OSError) as e:
      return _error(e)
    except KeyboardInterrupt:
      sys.stderr.write(f"{PROG}: interrupted: rerun the same command to resume\n")
      return 130

  command.run(PROG, run, rewrite=rewrite, positional=None)
