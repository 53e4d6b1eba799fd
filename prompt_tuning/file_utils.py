"""Atomic file writes, locally and on gs:// (through tf.io.gfile).

Every file the runner writes into MODEL_DIR goes through here: it is written
under a temporary name and renamed into place, so a crash never leaves a
half-written file where a complete one is expected.
"""
import os
import uuid

import numpy as np


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def is_remote(path: str) -> bool:
  return "://" in path


def exists(path):
  return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def makedirs(path):
  if is_remote(path):
    _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


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
  makedirs(os.path.dirname(path) or ".")
  tmp = temp_sibling(path)
  if is_remote(path):
    with _gfile().GFile(tmp, "wb") as f:
      f.write(data)
  else:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  rename(tmp, path, overwrite=True)


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
