"""`--launcher=tpu-vm`: a Cloud TPU slice per point, made and removed with gcloud.

For each point, `--parallel` at a time:
  1. create the slice: a queued resource (the default; waits in Cloud TPU's
     queue, then polled until ACTIVE) or, with --noqueued, `tpu-vm create`;
  2. on every worker (`tpu-vm ssh --worker=all`): the --setup command, then the
     point's pt-train with --distributed (jax.distributed.initialize() finds the
     slice's hosts by itself on Cloud TPU);
  3. delete the slice, also when a step failed.
SWEEP_DIR must be a gs:// folder (the workers' disks vanish with the slice). A
preempted (--spot) point fails; rerunning the sweep resumes it from its last
checkpoint. --dry_run prints the gcloud commands and runs nothing.
"""
import subprocess
import time

from prompt_tuning.sweep import grid as sweep_lib
from prompt_tuning.sweep import launchers

FLAGS_USED = ("zone", "project", "accelerator", "runtime_version", "queued", "spot",
              "preemptible", "setup", "poll_seconds")
BLOCKING = True

DEFAULT_ACCELERATOR = "v4-8"
DEFAULT_RUNTIME = "tpu-ubuntu2204-base"
DEFAULT_SETUP = "python3 -m pip install -U 'jax[tpu]' prompt-tuning-jax"
_FAILED_STATES = ("FAILED", "SUSPENDED", "SUSPENDING", "DELETING")


def check(sweep) -> None:
  launchers.check_remote_sweep_dir(sweep, "tpu-vm")
  if not sweep.options.get("zone"):
    raise sweep_lib.SweepError("--launcher=tpu-vm needs --zone (e.g. --zone=us-central2-b)")
  if sweep.options.get("preemptible") and sweep.options.get("queued", True):
    raise sweep_lib.SweepError("--preemptible is for --noqueued (tpu-vm create); queued "
                               "resources take --spot")
  launchers.check_setup(sweep, "tpu-vm")


def _where(options) -> list:
  return [f"--zone={options['zone']}"] + (
      [f"--project={options['project']}"] if options.get("project") else [])


def commands(sweep, point) -> dict:
  """The gcloud commands of one point: create, wait (queued only), setup,
  train, delete; each an argv list."""
  o = sweep.options
  name = launchers.resource_name(sweep.sweep_dir, point.name)
  where = _where(o)
  accelerator = o.get("accelerator") or DEFAULT_ACCELERATOR
  runtime = o.get("runtime_version") or DEFAULT_RUNTIME
  # --quiet: no prompts (a first ssh-keygen takes gcloud's defaults).
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name] + where + ["--worker=all", "--quiet"]
  train = ["python3", "-m", "prompt_tuning.train", "--distributed"] + sweep.train_args(point)
  out = {"name": name}
  if o.get("queued", True):
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    out["create"] = (qr + ["create", name, f"--node-id={name}"] + where
                     + [f"--accelerator-type={accelerator}", f"--runtime-version={runtime}"]
                     + (["--spot"] if o.get("spot") else []))
    out["wait"] = qr + ["describe", name] + where + ["--format=value(state.state)"]
    out["delete"] = qr + ["delete", name] + where + ["--force", "--quiet"]
  else:
    vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    out["create"] = (vm + ["create", name] + where
                     + [f"--accelerator-type={accelerator}", f"--version={runtime}"]
                     + (["--spot"] if o.get("spot") else [])
                     + (["--preemptible"] if o.get("preemptible") else []))
    out["delete"] = vm + ["delete", name] + where + ["--quiet"]
  out["setup"] = ssh + [f"--command={o.get('setup') or DEFAULT_SETUP}"]
  out["train"] = ssh + [f"--command={launchers.shell_join(train)}"]
  return out


def _wait_active(wait_cmd, log, poll_seconds) -> str:
  """Polls the queued resource until ACTIVE or a state it will not leave."""
  while True:
    result = subprocess.run(wait_cmd, capture_output=True, text=True, check=False)
    state = result.stdout.strip()
    log.write(f"queued resource state: {state or result.stderr.strip()}\n".encode())
    log.flush()
    if result.returncode != 0:
      return f"describe failed: {result.stderr.strip()[-300:]}"
    if state == "ACTIVE":
      return ""
    if state in _FAILED_STATES:
      return f"queued resource {state}"
    time.sleep(poll_seconds)


def _run_point(sweep, point, tag):
  cmds = commands(sweep, point)
  with launchers.log_file(sweep, point) as (log, log_path):
    launchers.say(f"{tag} creating {cmds['name']} for {point.name} (log: {log_path})")
    problem = ""
    try:
      if launchers.call(cmds["create"], log) != 0:
        problem = "create failed"
      elif "wait" in cmds:
        problem = _wait_active(cmds["wait"], log, sweep.options.get("poll_seconds") or 30)
      if not problem:
        launchers.say(f"{tag} {cmds['name']} is up: setup and pt-train on all workers")
        if launchers.call(cmds["setup"], log) != 0:
          problem = "setup failed"
        elif launchers.call(cmds["train"], log) != 0:
          problem = "pt-train failed (or the slice was preempted)"
    finally:
      # Always give the slice back: an idle slice costs as much as a busy one.
      if launchers.call(cmds["delete"], log) != 0:
        problem = (problem + "; " if problem else "") + f"delete of {cmds['name']} failed"
  if problem:
    launchers.say(f"{tag} FAILED {point.name}: {problem}: see {log_path}")
    return sweep_lib.Outcome(point.name, "failed", launchers.error_line(log_path, problem),
                             log_path)
  launchers.say(f"{tag} done {point.name}")
  return sweep_lib.Outcome(point.name, "done", log=log_path)


def run(sweep, points) -> list:
  if sweep.dry_run:
    for point in points:
      cmds = commands(sweep, point)
      lines = [f"# {point.name} -> {point.model_dir}", launchers.shell_join(cmds["create"])]
      if "wait" in cmds:
        lines += [f"# repeat every {sweep.options.get('poll_seconds') or 30}s until it prints "
                  "ACTIVE:", launchers.shell_join(cmds["wait"])]
      lines += [launchers.shell_join(cmds[k]) for k in ("setup", "train", "delete")]
      launchers.say(*lines)
    return []
  return launchers.run_pool(points, sweep.parallel,
                            lambda point, _, tag: _run_point(sweep, point, tag))
