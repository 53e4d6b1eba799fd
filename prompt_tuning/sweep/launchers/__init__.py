"""Launchers: how pt-sweep runs its points, one small module each, looked up by
name (`--launcher=tpu-vm` is `prompt_tuning.sweep.launchers.tpu_vm`).

A launcher module has:
  FLAGS_USED   the pt-sweep launcher flags it reads (setting another is an error)
  BLOCKING     True when run() returns after the points ended (pt-sweep then
               writes the report); False when it only submits them
  check(sweep) raises sweep.SweepError on bad input, before anything is written
  run(sweep, points) -> [sweep.Outcome]: runs (or with sweep.dry_run, prints)
               the unfinished points; never initialises a JAX backend here

This file holds what they share: the lookup, a pool of N points at a time, and
per-point log files (SWEEP_DIR/logs/<name>.log, uploaded when SWEEP_DIR is remote).
"""
import concurrent.futures
import contextlib
import hashlib
import importlib
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time

from prompt_tuning import progress

_PRINT_LOCK = threading.Lock()


def names():
  return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__))


def get(name: str):
  """The launcher module called `name` (big_vision style registry by name)."""
  from prompt_tuning.sweep import grid as sweep  # pylint: disable=g-import-not-at-top
  module_name = f"{__name__}.{name.replace('-', '_')}"
  if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
    raise sweep.SweepError(f"--launcher={name}: not a launcher (known: {', '.join(names())})")
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise
    raise sweep.SweepError(f"--launcher={name}: unknown launcher (known: "
                           f"{', '.join(names())})") from None


def say(*lines: str) -> None:
  """Prints whole lines from concurrent points without interleaving."""
  with _PRINT_LOCK:
    for line in lines:
      print(line)
    sys.stdout.flush()


def resource_name(sweep_dir: str, point_name: str, prefix: str = "pt") -> str:
  """A cloud resource name for a point (TPU node, queued resource, managed job):
  lower-case letters, digits and hyphens, at most 60 characters, the same on
  every rerun and unique per sweep folder and point."""
  digest = hashlib.sha1(f"{sweep_dir}\n{point_name}".encode()).hexdigest()[:8]
  slug = re.sub(r"[^a-z0-9]+", "-", point_name.lower()).strip("-")
  return f"{prefix}-{slug[:60 - len(prefix) - 10]}".rstrip("-") + f"-{digest}"


def run_pool(points, parallel: int, run_one, slots=None):
  """Runs `run_one(point, slot)` for each point, `parallel` at a time; `slots`
  (one per concurrent run, e.g. a device set) are handed out and taken back."""
  import queue  # pylint: disable=g-import-not-at-top
  free = queue.Queue()
  for slot in (slots if slots is not None else [None] * parallel):
    free.put(slot)
  total = len(points)
  start, ended, lock = time.time(), [], threading.Lock()

  def task(index, point):
    slot = free.get()
    try:
      return run_one(point, slot, f"[{index + 1}/{total}]")
    finally:
      free.put(slot)
      with lock:  # the sweep's overall progress: points ended, elapsed, ETA
        ended.append(index)
        elapsed = time.time() - start
        eta = elapsed / len(ended) * (total - len(ended))
        say(f"{len(ended)} of {total} points ended, {progress.format_eta(elapsed)} elapsed"
            + (f", ETA {progress.format_eta(eta)}" if len(ended) < total else ""))

  with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    return list(pool.map(task, range(total), points))


@contextlib.contextmanager
def log_file(sweep, point):
  """Yields (binary file, shown path) for a point's log, appended to on every
  attempt. A remote SWEEP_DIR gets the file when the attempt ends."""
  from prompt_tuning.storage import file_utils  # pylint: disable=g-import-not-at-top
  from prompt_tuning.sweep import grid as sweep_lib  # pylint: disable=g-import-not-at-top
  final = sweep_lib.join(sweep.sweep_dir, "logs", f"{point.name}.log")
  if not file_utils.is_remote(final):
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with open(final, "ab") as f:
      yield f, final
    return
  fd, local = tempfile.mkstemp(prefix="pt-sweep-", suffix=".log")
  try:
    with os.fdopen(fd, "wb") as f:
      if file_utils.exists(final):
        f.write(file_utils.read_bytes(final))
      yield f, final
    with open(local, "rb") as f:
      file_utils.write_bytes_atomic(final, f.read())
  finally:
    os.remove(local)


def quote(arg: str) -> str:
  """shlex.quote, but an argument holding single quotes (gin strings) and no
  characters special inside double quotes is double-quoted: same meaning to
  the shell, far easier to read than '"'"' chains."""
  quoted = shlex.quote(arg)
  if "'" in arg and not re.search(r'[$`"\\!]', arg):
    return f'"{arg}"'
  return quoted


def shell_join(argv) -> str:
  """shlex.join with `quote`: a command line to print or to run in a shell."""
  return " ".join(quote(a) for a in argv)


def call(command, log, env=None) -> int:
  """Runs one command with its output appended to the open log; its exit status."""
  log.write(f"\n$ {shell_join(command)}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
  log.flush()
  # No stdin: an unattended command must not wait on a prompt nobody sees.
  return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        env=env, check=False).returncode


_ERROR_LINE = re.compile(r"^(pt-[\w-]+: error: .*)$", re.MULTILINE)


def error_line(log_path: str, fallback: str) -> str:
  """The last `pt-train: error: ...` line of a log (the reason a point
  failed), else `fallback`."""
  from prompt_tuning.storage import file_utils  # pylint: disable=g-import-not-at-top
  try:
    tail = file_utils.read_bytes(log_path)[-(1 << 16):].decode("utf-8", "replace")
  except OSError:
    return fallback
  found = _ERROR_LINE.findall(tail)
  return found[-1].strip() if found else fallback


def check_remote_sweep_dir(sweep, launcher: str, schemes=("gs://",)) -> None:
  from prompt_tuning.sweep import grid as sweep_lib  # pylint: disable=g-import-not-at-top
  if not sweep.sweep_dir.startswith(tuple(schemes)):
    raise sweep_lib.SweepError(
        f"--launcher={launcher} needs a bucket --sweep_dir ({' or '.join(schemes)}...): the "
        f"machines' disks vanish with them, got {sweep.sweep_dir}")


def check_setup(sweep, launcher: str) -> None:
  """A real (not --dry_run) cloud launch needs --setup: prompt-tuning-jax is not
  on PyPI, so only the user knows where the hosts install it from. A dry run
  shows the default command in its place."""
  if sweep.dry_run or sweep.options.get("setup"):
    return
  from prompt_tuning.sweep import grid as sweep_lib  # pylint: disable=g-import-not-at-top
  raise sweep_lib.SweepError(
      f"--launcher={launcher} needs --setup, the command that installs JAX and this package "
      "on each host (prompt-tuning-jax is not on PyPI), e.g. --setup=\"pip install "
      "'jax[tpu]' 'prompt-tuning-jax @ git+https://github.com/ORG/REPO'\"")
