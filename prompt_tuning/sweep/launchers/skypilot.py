"""`--launcher=skypilot`: each point as a SkyPilot managed job.

A task YAML per point (resources: accelerators, infra, use_spot; num_nodes;
setup; run: the point's pt-train) goes to --task_dir and is submitted with
`sky jobs launch -n NAME TASK.yaml --yes --detach-run`; SkyPilot's managed jobs
recover preempted spot capacity and rerun `run`, and pt-train resumes from the
point's last checkpoint in SWEEP_DIR (a bucket: nodes come and go). Submitting
returns at once: follow with `sky jobs queue`, then `pt-sweep report SWEEP_DIR`.
Rerun the sweep only after its jobs ended (it skips the finished points; a
point still running would be submitted twice).

Needs the `sky` command (SkyPilot, installed apart: `pip install "skypilot[gcp]"`
in its own environment) and pyyaml; --dry_run writes the YAML files and prints
the commands without SkyPilot.
"""
import os
import tempfile

from prompt_tuning.sweep import grid as sweep_lib
from prompt_tuning.sweep import launchers

FLAGS_USED = ("accelerator", "infra", "spot", "num_nodes", "setup", "runtime_version",
              "task_dir", "coordinator_port")
BLOCKING = False  # managed jobs run on after submission

_TPU_SETUP = "python3 -m pip install -U 'jax[tpu]' prompt-tuning-jax"
_GPU_SETUP = "python3 -m pip install -U 'jax[cuda12]' prompt-tuning-jax"


def check(sweep) -> None:
  launchers.check_remote_sweep_dir(sweep, "skypilot", ("gs://", "s3://", "r2://"))
  if not sweep.options.get("accelerator"):
    raise sweep_lib.SweepError("--launcher=skypilot needs --accelerator (e.g. A100:8 or "
                               "tpu-v4-8)")
  launchers.check_setup(sweep, "skypilot")


def _is_tpu(accelerator: str) -> bool:
  return accelerator.lower().startswith("tpu-")


def run_command(sweep, point) -> str:
  """The task's `run`: pt-train, spread over the nodes when there are several."""
  o = sweep.options
  train = ["python3", "-m", "prompt_tuning.train"]
  if o.get("num_nodes", 1) > 1:
    # The first of SkyPilot's node IPs hosts the jax.distributed coordinator.
    head = (f'--coordinator_address="$(echo "$SKYPILOT_NODE_IPS" | head -n1)"'
            f":{o.get('coordinator_port') or 8476}")
    return " ".join([launchers.shell_join(train + ["--distributed"]), head,
                     '--num_processes="$SKYPILOT_NUM_NODES"', '--process_id="$SKYPILOT_NODE_RANK"',
                     launchers.shell_join(sweep.train_args(point))])
  if _is_tpu(o["accelerator"]):
    train.append("--distributed")  # a TPU pod slice's hosts find each other by themselves
  return launchers.shell_join(train + sweep.train_args(point))


def task(sweep, point) -> dict:
  """The SkyPilot task (its YAML schema) of one point."""
  o = sweep.options
  resources = {"accelerators": o["accelerator"]}
  if o.get("infra"):
    resources["infra"] = o["infra"]
  if o.get("spot"):
    resources["use_spot"] = True
  if o.get("runtime_version") and _is_tpu(o["accelerator"]):
    resources["accelerator_args"] = {"runtime_version": o["runtime_version"]}
  out = {"name": launchers.resource_name(sweep.sweep_dir, point.name), "resources": resources}
  if o.get("num_nodes", 1) > 1:
    out["num_nodes"] = o["num_nodes"]
  out["setup"] = o.get("setup") or (_TPU_SETUP if _is_tpu(o["accelerator"]) else _GPU_SETUP)
  out["run"] = run_command(sweep, point)
  return out


def _yaml(data: dict) -> str:
  import yaml  # pylint: disable=g-import-not-at-top

  class Dumper(yaml.SafeDumper):
    pass

  def text(dumper, value):  # shell scripts stay readable as literal blocks
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

  Dumper.add_representer(str, text)
  return yaml.dump(data, Dumper=Dumper, sort_keys=False, width=1 << 16)


def write_task(sweep, point, task_dir: str) -> tuple:
  """Writes the point's task YAML; (path, the sky command)."""
  spec = task(sweep, point)
  path = os.path.join(task_dir, f"{spec['name']}.yaml")
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"# pt-sweep point {point.name} -> {point.model_dir}\n" + _yaml(spec))
  return path, ["sky", "jobs", "launch", "-n", spec["name"], path, "--yes", "--detach-run"]


def run(sweep, points) -> list:
  task_dir = sweep.options.get("task_dir") or tempfile.mkdtemp(prefix="pt-sweep-sky-")
  os.makedirs(task_dir, exist_ok=True)
  launched = [(point,) + write_task(sweep, point, task_dir) for point in points]
  if sweep.dry_run:
    for point, path, cmd in launched:
      launchers.say(f"# {point.name}: {path}", launchers.shell_join(cmd))
    return []

  def submit(item, _, tag):
    point, path, cmd = item
    with launchers.log_file(sweep, point) as (log, log_path):
      launchers.say(f"{tag} submitting {point.name} ({path})")
      status = launchers.call(cmd, log)
    if status != 0:
      return sweep_lib.Outcome(point.name, "failed", f"sky jobs launch: exit status {status}",
                               log_path)
    return sweep_lib.Outcome(point.name, "submitted", f"follow: sky jobs logs -n {cmd[4]}",
                             log_path)

  return launchers.run_pool(launched, sweep.parallel, submit)
