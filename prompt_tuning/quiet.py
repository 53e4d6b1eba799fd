"""Muting file descriptor 2 for a moment: C++ libraries (TensorFlow at import,
tensorstore when it first picks credentials) write lines there, below
Python's sys.stderr, that are not the command's own output."""
import contextlib
import os
import sys


@contextlib.contextmanager
def muted_stderr():
  """Within it, file descriptor 2 goes to /dev/null (for every thread)."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w", encoding="utf-8") as devnull:
      os.dup2(devnull.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
