"""Preemption: on SIGTERM (how Cloud TPU and most schedulers announce it),
pt-train finishes the step in flight, writes a checkpoint and exits, so a
preempted run loses no step.

One process: a SIGTERM handler sets a flag that the loop checks after each
step. Several processes: SIGTERM may reach only some of them, so they agree on
the step to stop at through JAX's preemption sync point (the coordination
service of jax.distributed), as T5X does.
"""
import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
  """The run stopped early on SIGTERM, with a checkpoint of its last step."""


class Watcher:
  """`with Watcher() as preempted:` ... `if preempted(step): ...`."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._flag.set()

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self.preempted

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def preempted(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # no preemption service in this jax.distributed setup
        return False
    return self._flag.is_set()
