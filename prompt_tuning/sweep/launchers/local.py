"""`--launcher=local`: the points as pt-train subprocesses on this machine,
`--parallel` at a time, each one's output in SWEEP_DIR/logs/<name>.log.

With several GPUs each running point gets its own (CUDA_VISIBLE_DEVICES, from
--visible_devices, the parent's CUDA_VISIBLE_DEVICES or `nvidia-smi -L`). The
devices are found without importing JAX: initialising a backend in this parent
process would hold the accelerators (on a TPU VM, all chips) for itself. A TPU
VM's chips go to one process, so there --parallel must be 1.
"""
import glob
import os
import shutil
import subprocess
import sys
import time

from prompt_tuning.sweep import grid as sweep_lib
from prompt_tuning.sweep import launchers

FLAGS_USED = ("visible_devices", "devices_per_point")
BLOCKING = True


def _gpus(options) -> list:
  if options.get("visible_devices"):
    return list(options["visible_devices"])
  if "CUDA_VISIBLE_DEVICES" in os.environ:
    return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
  if not shutil.which("nvidia-smi"):
    return []
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60,
                         check=False).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [line.split(":")[0].split()[1] for line in out.splitlines()
          if line.startswith("GPU ")]


def _has_tpu() -> bool:
  # TPU chips appear as /dev/accel* (v2-v5e) or /dev/vfio/<n> (v5p, v6e).
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def device_slots(sweep) -> list:
  """One environment per concurrent point: {} or {'CUDA_VISIBLE_DEVICES': ...}."""
  gpus, parallel = _gpus(sweep.options), sweep.parallel
  per_point = sweep.options.get("devices_per_point")
  if not gpus:
    if per_point or sweep.options.get("visible_devices"):
      raise sweep_lib.SweepError("--devices_per_point: no GPUs found (nvidia-smi -L) to give "
                                 "the points")
    if parallel > 1 and _has_tpu():
      raise sweep_lib.SweepError("a TPU VM's chips go to one process: use --parallel=1 here "
                                 "(or --launcher=tpu-vm for a slice per point)")
    return [{} for _ in range(parallel)]
  per_point = per_point or max(1, len(gpus) // parallel)
  if parallel * per_point > len(gpus):
    raise sweep_lib.SweepError(f"--parallel={parallel} points of {per_point} GPU(s) need "
                               f"{parallel * per_point} GPUs; {len(gpus)} found "
                               f"({','.join(gpus)})")
  return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per_point:(i + 1) * per_point])}
          for i in range(parallel)]


def command(sweep, point) -> list:
  return [sys.executable, "-m", "prompt_tuning.train"] + sweep.train_args(point)


def check(sweep) -> None:
  device_slots(sweep)


def run(sweep, points) -> list:
  slots = device_slots(sweep)
  if sweep.dry_run:
    for point, slot in zip(points, slots * len(points)):
      env = [f"{k}={v}" for k, v in slot.items()]
      launchers.say(f"# {point.name}", launchers.shell_join(env + command(sweep, point)))
    return []

  def run_one(point, slot, tag):
    start = time.time()
    with launchers.log_file(sweep, point) as (log, log_path):
      launchers.say(f"{tag} start {point.name}"
                    + (f" on GPU {slot['CUDA_VISIBLE_DEVICES']}" if slot else "")
                    + f" (log: {log_path})")
      status = launchers.call(command(sweep, point), log, env=dict(os.environ, **slot))
    took = f"{time.time() - start:.0f}s"
    if status == 0:
      launchers.say(f"{tag} done {point.name} in {took}")
      return sweep_lib.Outcome(point.name, "done", log=log_path)
    launchers.say(f"{tag} FAILED {point.name} (exit {status}) after {took}: see {log_path}")
    return sweep_lib.Outcome(point.name, "failed",
                             launchers.error_line(log_path, f"exit status {status}"), log_path)

  return launchers.run_pool(points, sweep.parallel, run_one, slots)
