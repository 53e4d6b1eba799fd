"""Atomic file writes, locally and on gs:// (through tf.io.gfile).

Every file the runner writes into MODEL_DIR goes through here: it is written
under a temporary name and renamed into place, so a crash never leaves a
half-written file where a complete one is expected. A full disk (or an
exhausted quota) is reported as DiskFullError naming the file, and the
partial temporary file is removed.
"""
import errno
import os
from typing import Optional
import uuid

import numpy as np

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
  """No space left (disk full or quota exhausted) while writing; says where."""


def is_disk_full(e: BaseException) -> bool:
  return isinstance(e, OSError) and e.errno in _NO_SPACE


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def is_remote(path: str) -> bool:
  return "://" in path


def exists(path):
  return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path):
  return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def folder_problem(path: str) -> Optional[str]:
  """Why `path` cannot be used (or created) as a folder, or None.

  Local paths only (a gs:// path is always usable as a folder): the path is
  an existing file, or an existing ancestor of it is a file.
  """
  if is_remote(path):
    return None
  path = os.path.abspath(path)
  if os.path.exists(path):
    return None if os.path.isdir(path) else f"{path} is a file, not a folder"
  parent = os.path.dirname(path)
  while parent and not os.path.exists(parent) and parent != os.path.dirname(parent):
    parent = os.path.dirname(parent)
  if parent and os.path.exists(parent) and not os.path.isdir(parent):
    return f"{path} cannot be created: {parent} is a file, not a folder"
  return None


def file_problem(path: str) -> Optional[str]:
  """Why `path` cannot be written as a file, or None: it is a folder, or a
  local ancestor of it is a file (local paths; gs:// paths only when the
  object store says it is a folder)."""
  if is_remote(path):
    return f"{path} is a folder, not a file" if isdir(path) else None
  if os.path.isdir(path):
    return f"{path} is a folder, not a file"
  return folder_problem(os.path.dirname(os.path.abspath(path)))


def disk_full_error(path: str) -> DiskFullError:
  return DiskFullError(f"disk full: no space left on the device to write {path}")


def makedirs(path):
  try:
    if is_remote(path):
      _gfile().makedirs(path)
    else:
      os.makedirs(path, exist_ok=True)
  except OSError as e:
    if is_disk_full(e):
      raise disk_full_error(path) from None
    raise


def listdir(path):
  if not exists(path):
    return []
  return _gfile().listdir(path) if is_remote(path) else os.listdir(path)


def temp_sibling(path: str) -> str:
  return f"{path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"


def rename(src, dst, overwrite=False):
  if is_remote(src):
    _gfile().rename(src, dst, overwrite=overwrite)
  else:
    os.replace(src, dst) if overwrite else os.rename(src, dst)


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes `path` through a temporary sibling renamed into place.

  Raises:
    DiskFullError: no space was left; the temporary file is removed and `path`
      is as it was.
  """
  makedirs(os.path.dirname(path) or ".")
  tmp = temp_sibling(path)
  try:
    if is_remote(path):
      with _gfile().GFile(tmp, "wb") as f:
        f.write(data)
    else:
      with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    rename(tmp, path, overwrite=True)
  except OSError as e:
    if not is_disk_full(e):
      raise
    try:
      if exists(tmp):
        (_gfile().remove if is_remote(tmp) else os.remove)(tmp)
    except OSError:
      pass
    raise disk_full_error(path) from None


def write_text_atomic(path: str, text: str) -> None:
  write_bytes_atomic(path, text.encode("utf-8"))


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    with _gfile().GFile(path, "rb") as f:
      return f.read()
  with open(path, "rb") as f:
    return f.read()


def save_npy(path: str, array) -> None:
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.save(buf, np.asarray(array), allow_pickle=False)
  write_bytes_atomic(path, buf.getvalue())


def load_npy(path: str) -> np.ndarray:
  import io  # pylint: disable=g-import-not-at-top
  return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)


def remove_tree(path: str) -> None:
  if is_remote(path):
    _gfile().rmtree(path)
  else:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(path, ignore_errors=True)
