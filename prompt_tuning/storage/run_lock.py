"""One pt-train per MODEL_DIR: a lock file that names its holder.

`MODEL_DIR/pt-train.lock` holds JSON: host, pid, process start time, run id,
start and heartbeat times, command line. It is created, refreshed and taken
over only through tensorstore's conditional writes (compare-and-swap on the
key's storage generation): on local disks the `file` driver's own atomic
protocol, on gs:// GCS generation preconditions. So two runs racing for a
folder, on one machine or on several sharing it, never both win.

A lock is taken over only when its holder is gone: on the same host, when its
process no longer exists (or the pid now belongs to a younger process); on
another host, when its heartbeat (refreshed every `heartbeat_s` by a daemon
thread) is older than `stale_s`. A holder that finds its lock taken over
(`lost`) must stop writing.

Written by hand because no maintained library does this across local and
cloud storage: `filelock`/`fcntl` locks are per machine and unreliable on
NFS, and gs:// has no file locks at all.
"""
import datetime
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional

from absl import logging
import tensorstore as ts

from prompt_tuning.storage import file_utils

FILENAME = "pt-train.lock"
SWEEP_FILENAME = "pt-sweep.lock"  # one pt-sweep per SWEEP_DIR, the same way


class LockError(RuntimeError):
  """MODEL_DIR is held by another run; the message names it."""


def _kvstore(directory: str):
  if file_utils.is_remote(directory):
    return file_utils.kvstore(directory)  # the storage layer's bounded retries
  return ts.KvStore.open({"driver": "file", "path": os.path.abspath(directory) + "/"}).result()


def _process_start(pid: int) -> Optional[str]:
  """The process's start time in clock ticks since boot (Linux), to tell a
  reused pid from the holder; None where /proc is not available."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      return f.read().rsplit(b")", 1)[1].split()[19].decode()
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: Optional[str]) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by someone else
  now_start = _process_start(pid)
  return start is None or now_start is None or now_start == start


def _now() -> float:
  return time.time()


def _iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def describe(holder: dict) -> str:
  age = _now() - float(holder.get("heartbeat", 0))
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
          f"{_iso(float(holder.get('started', 0)))}, last heartbeat {age:.0f}s ago")


class RunLock:
  """Owns MODEL_DIR for a run: `acquire()` or LockError; `release()` at the end."""

  def __init__(self, model_dir: str, heartbeat_s: float = 60.0, stale_s: float = 600.0, *,
               filename: str = FILENAME, owner: str = "pt-train", folder: str = "MODEL_DIR"):
    """`filename`, `owner` and `folder` (the folder's name in messages): a
    pt-sweep locks its SWEEP_DIR with SWEEP_FILENAME, "pt-sweep", "--sweep_dir"."""
    self.model_dir = model_dir
    self.filename, self.owner, self.folder = filename, owner, folder
    self.path = os.path.join(model_dir, filename)
    self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
    self.lost = False
    self._store = None
    self._generation = None
    self._stop = threading.Event()
    self._thread = None
    self._record = {"host": socket.gethostname(), "pid": os.getpid(),
                    "process_start": _process_start(os.getpid()), "run_id": uuid.uuid4().hex,
                    "started": _now(), "command": " ".join(sys.argv)}

  def _payload(self) -> bytes:
    return json.dumps(dict(self._record, heartbeat=_now()), sort_keys=True).encode()

  def _holder(self, data: bytes) -> dict:
    """The lock's record; LockError naming the file when it is damaged (a
    holder writes it whole, so damage came from elsewhere: never guessed at)."""
    try:
      holder = json.loads(data.decode("utf-8"))
      if not isinstance(holder, dict):
        raise ValueError("not a JSON object")
      int(holder["pid"])
      for key in ("heartbeat", "started"):
        if not math.isfinite(float(holder.get(key, 0))):
          raise ValueError(f"{key} is not a finite number")
      _iso(float(holder.get("started", 0)))
      str(holder["host"])
    except (ValueError, TypeError, KeyError, OverflowError, OSError) as e:
      reason = " ".join(str(e).split())[:100] or type(e).__name__
      raise LockError(f"{self.path} is damaged ({type(e).__name__}: {reason}): if no "
                      f"{self.owner} is using {self.folder} {self.model_dir}, delete it and "
                      "rerun") from None
    return holder

  def _gone(self, holder: dict) -> bool:
    if holder.get("host") == self._record["host"]:
      return not _alive(int(holder.get("pid", -1)), holder.get("process_start"))
    return _now() - float(holder.get("heartbeat", 0)) > self.stale_s

  def acquire(self) -> "RunLock":
    self._store = _kvstore(self.model_dir)
    for _ in range(5):  # a lost race re-reads the new holder
      current = self._wait(self._store.read(self.filename), "read")
      holder = None
      if current.state == "value":
        holder = self._holder(current.value)
        if not self._gone(holder):
          raise LockError(
              f"{self.folder} {self.model_dir} is in use by another {self.owner} "
              f"({describe(holder)}): wait for it to end or use another {self.folder}; if "
              "that run is gone for good, "
              f"delete {self.path}")
        logging.warning("taking over %s from a run that is gone (%s)", self.path,
                        describe(holder))
      stamp = self._wait(self._store.write(self.filename, self._payload(),
                                           if_equal=current.stamp.generation), "write")
      if stamp.generation:  # empty generation: the condition failed, someone else wrote
        self._generation = stamp.generation
        self._thread = threading.Thread(target=self._beat, daemon=True, name="run-lock")
        self._thread.start()
        return self
    raise LockError(f"could not take {self.path}: other runs keep writing it")

  def _wait(self, future, what: str):
    if file_utils.is_remote(self.model_dir):  # bounded, one-line errors
      return file_utils.wait(future, what, self.path)
    return future.result()

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      try:
        stamp = self._wait(self._store.write(self.filename, self._payload(),
                                             if_equal=self._generation), "write")
      except Exception as e:  # pylint: disable=broad-except
        # Storage that is down fails the run's own next write with one line.
        (logging.info if isinstance(e, file_utils.StorageError) else logging.warning)(
            "could not refresh %s: %s", self.path, e)
        continue
      if not stamp.generation:
        self.lost = True
        logging.error("%s was taken over by another run: this run stops writing", self.path)
        return
      self._generation = stamp.generation

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._generation is not None and not self.lost:
      try:  # deletes only our own lock (conditional on its generation)
        self._wait(self._store.write(self.filename, None, if_equal=self._generation),
                   "delete")
      except Exception as e:  # pylint: disable=broad-except
        # Left behind, it is taken over by the next run (its holder is gone);
        # unreachable storage has already been reported by the failure itself.
        (logging.info if isinstance(e, file_utils.StorageError) else logging.warning)(
            "could not remove %s: %s", self.path, e)
    self._generation = None

  def live_holder(self) -> Optional[dict]:
    """The run holding MODEL_DIR now (its lock record), or None when the lock
    is absent or its holder is gone; only reads. LockError when damaged."""
    current = self._wait(_kvstore(self.model_dir).read(self.filename), "read")
    if current.state != "value":
      return None
    holder = self._holder(current.value)
    return None if self._gone(holder) else holder

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
