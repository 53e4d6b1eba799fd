"""The one storage layer: every file the runner itself reads or writes, on a
local disk or in a Cloud Storage bucket (gs://).

Local paths go through `os` (files written under a temporary name, fsynced
and renamed into place, so a crash never leaves a half-written file where a
complete one is expected). gs:// paths go through tensorstore's `gcs`
key-value store: a dependency already (it reads and writes the T5X arrays and
takes the run lock), it speaks the GCS JSON API to Google or to any endpoint
named by the standard `STORAGE_EMULATOR_HOST` (a local fake-gcs-server in the
tests), and it retries transient errors (429 and 5xx) with exponential
backoff itself. TensorFlow's tf.io.gfile is not used: its GCS client cannot
be pointed at any endpoint but Google's, so nothing written through it could
be tested offline, and without credentials it retries for minutes.

An object store has no folders and no rename: a "folder" is a key prefix, a
single object write is atomic (so files need no temporary name there), and
a folder rename is copy-then-delete. Checkpoints on gs:// are therefore
committed by writing their checksums.json last (numpy_checkpoints), not by
a rename.

Every gs:// operation is bounded: `MAX_RETRIES` attempts with backoff (at
most `MAX_RETRY_DELAY_S` apart), and a deadline of `TIMEOUT_S` seconds for
the whole operation (environment: PT_GCS_MAX_RETRIES, PT_GCS_TIMEOUT_S).
An unreachable endpoint fails after about 30 s with the defaults (34 s
measured for pt-train, start-up included). A
failure is a StorageError naming the bucket, what failed and what to check.
A full disk (or an exhausted quota) is reported as DiskFullError naming the
file, and the partial temporary file is removed.
"""
import contextlib
import errno
import functools
import os
import threading
from typing import Optional
import uuid

from absl import logging
import numpy as np

from prompt_tuning import quiet

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_GS = "gs://"


MAX_RETRIES = 6  # attempts per request; PT_GCS_MAX_RETRIES changes it
MAX_RETRY_DELAY_S = 8.0  # backoff from 0.5 s, doubling up to this
TIMEOUT_S = 120.0  # seconds per operation; PT_GCS_TIMEOUT_S changes it


def _env_number(name: str, default, cast):
  """The positive number in environment variable `name` (unset: `default`);
  StorageError (one line) for anything else, never silently the default."""
  text = os.environ.get(name)
  if text is None:
    return default
  try:
    value = cast(text)
  except ValueError:
    value = None
  if value is None or not value > 0 or value == float("inf"):
    kind = "an integer" if cast is int else "a number of seconds"
    raise StorageError(f"{name} must be {kind} > 0, got {text!r}")
  return value


def max_retries() -> int:
  return _env_number("PT_GCS_MAX_RETRIES", MAX_RETRIES, int)


def timeout_s() -> float:
  return _env_number("PT_GCS_TIMEOUT_S", TIMEOUT_S, float)


class DiskFullError(OSError):
  """No space left (disk full or quota exhausted) while writing; says where."""


class StorageError(OSError):
  """A gs:// operation failed (unreachable endpoint, no credentials, access
  denied, missing bucket, deadline passed); the message is one line naming
  the bucket, what failed and what to check."""


def is_disk_full(e: BaseException) -> bool:
  return isinstance(e, OSError) and e.errno in _NO_SPACE


def is_remote(path: str) -> bool:
  return "://" in path


# ------------------------------------------------------------------ gs://


def _split(path: str) -> tuple:
  """gs://bucket/a/b -> ('bucket', 'a/b')."""
  if not path.startswith(_GS):
    raise StorageError(f"{path}: only gs:// (Cloud Storage) remote paths are supported")
  bucket, _, key = path[len(_GS):].partition("/")
  if not bucket:
    raise StorageError(f"{path} names no bucket: use gs://BUCKET/PATH")
  return bucket, key.strip("/")


def emulator_endpoint() -> Optional[str]:
  """The GCS endpoint named by STORAGE_EMULATOR_HOST (the variable Google's
  client libraries honour), as a URL; None when unset."""
  host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
  if not host:
    return None
  return host if "://" in host else f"http://{host}"


def configure_gcs_environment() -> None:
  """Points tensorstore at STORAGE_EMULATOR_HOST when it is set (the standard
  variable wins over tensorstore's own TENSORSTORE_GCS_HTTP_URL); an emulator
  takes no credentials, so a placeholder token stands in for them, as
  Google's client libraries use anonymous credentials there. Called before
  any gs:// store is opened (tensorstore reads the variables then)."""
  endpoint = emulator_endpoint()
  if endpoint:
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = endpoint
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")


def gcs_context() -> dict:
  """tensorstore context resources for every gs:// store: bounded retries."""
  return {"gcs_request_retries": {"max_retries": max_retries(),
                                  "initial_delay": "0.5s",
                                  "max_delay": f"{MAX_RETRY_DELAY_S}s"}}


def gcs_kvstore_spec(path: str) -> dict:
  """tensorstore's kvstore spec of a gs:// folder or object (its context
  bounds the retries)."""
  configure_gcs_environment()
  bucket, key = _split(path)
  return {"driver": "gcs", "bucket": bucket, "path": key, "context": gcs_context()}


_quiet_lock = threading.Lock()
_quieted = set()


@contextlib.contextmanager
def _first_contact_quiet(bucket: str):
  """tensorstore's C++ logs one line to stderr (file descriptor 2) when it
  first picks credentials ('Using GOOGLE_AUTH_TOKEN_FOR_TESTING', 'Could not
  find the credentials file...'); a command's output is its own, so the first
  request of a process runs with descriptor 2 muted, unless logs were asked
  for (absl at INFO)."""
  with _quiet_lock:
    first = not _quieted and not logging.level_info()
    _quieted.add(bucket)
    with quiet.muted_stderr() if first else contextlib.nullcontext():
      yield


def _store(bucket: str):
  configure_gcs_environment()
  timeout_s()  # both settings checked before anything is asked of GCS
  return _open_store(bucket, emulator_endpoint(), max_retries())


@functools.lru_cache(maxsize=None)
def _open_store(bucket: str, endpoint, retries):
  """One open store per bucket, endpoint and retry setting (a process that
  changes STORAGE_EMULATOR_HOST, as the tests do, gets a new one)."""
  del endpoint, retries  # the cache key; gcs_context and the environment carry them
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  return ts.KvStore.open({"driver": "gcs", "bucket": bucket,
                          "context": gcs_context()}).result()


def kvstore(path: str):
  """An open tensorstore KvStore rooted at the gs:// folder `path` (keys are
  relative to it), with the layer's bounded retries: the run lock's."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  configure_gcs_environment()
  timeout_s()  # checked before anything is asked of GCS (gcs_kvstore_spec checks the retries)
  spec = gcs_kvstore_spec(path)
  spec["path"] = spec["path"] + "/" if spec["path"] else ""
  with _first_contact_quiet(_split(path)[0]):
    return wait(ts.KvStore.open(spec), "open", path)


def _reason(e: BaseException) -> str:
  text = " ".join(str(e).split())
  text = text.split(" [http_response_body=")[0].split(" [source locations=")[0]
  return text[:300] or type(e).__name__


def _hint(reason: str) -> str:
  """What to check, from tensorstore's status name or the HTTP code (never a
  bare number: a port such as 40421 is not an HTTP 404)."""
  def says(status, code):
    return status in reason or f"http_response_code='{code}'" in reason
  if says("PERMISSION_DENIED", 403):
    return "check that your account may use this bucket (IAM)"
  if says("UNAUTHENTICATED", 401) or "credential" in reason.lower():
    return ("check your credentials (gcloud auth application-default login, or "
            "GOOGLE_APPLICATION_CREDENTIALS)")
  if says("NOT_FOUND", 404) or "bucket name" in reason.lower():
    return "check the bucket name"
  return ("check the network, the bucket name and your credentials"
          + (f"; STORAGE_EMULATOR_HOST points at {emulator_endpoint()}"
             if emulator_endpoint() else ""))


def _gcs(what: str, path: str, start):
  """Runs `start(store, key)` (a tensorstore future) for the gs:// `path`
  within the deadline; failures become one-line StorageErrors."""
  bucket, key = _split(path)
  with _first_contact_quiet(bucket):
    try:
      store = _store(bucket)
    except (ValueError, RuntimeError) as e:
      raise _storage_error(what, path, e) from None
    return wait(start(store, key), what, path)


def _storage_error(what: str, path: str, e: BaseException) -> StorageError:
  bucket, _ = _split(path)
  if isinstance(e, TimeoutError):
    return StorageError(f"gs://{bucket}: could not {what} {path} within {timeout_s():g} s "
                        f"(PT_GCS_TIMEOUT_S); {_hint('')}")
  reason = _reason(e)
  return StorageError(f"gs://{bucket}: could not {what} {path}: {reason}; {_hint(reason)}")


def wait(future, what: str, path: str):
  """The result of a tensorstore future for the gs:// `path` (what: 'read',
  'write', ...), within TIMEOUT_S; a failure is a one-line StorageError."""
  try:
    return future.result(timeout=timeout_s())
  except StorageError:
    raise
  except (TimeoutError, ValueError, RuntimeError, OSError) as e:
    raise _storage_error(what, path, e) from None


def _prefix_range(prefix: str):
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  if not prefix:
    return ts.KvStore.KeyRange()
  end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
  return ts.KvStore.KeyRange(prefix, end)


def _keys_under(path: str) -> list:
  """The object keys (str) under the gs:// folder `path`, relative to it."""
  _, key = _split(path)
  prefix = f"{key}/" if key else ""
  keys = _gcs("list", path, lambda store, _: store.list(_prefix_range(prefix)))
  return sorted(k.decode("utf-8")[len(prefix):] for k in keys)


def _read_object(path: str) -> Optional[bytes]:
  result = _gcs("read", path, lambda store, key: store.read(key))
  return result.value if result.state == "value" else None


def _write_object(path: str, data: bytes) -> None:
  _gcs("write", path, lambda store, key: store.write(key, data))


def _delete_tree(path: str) -> None:
  """Deletes the object `path` and every object under `path/`."""
  _, key = _split(path)
  _gcs("delete", path, lambda store, _: store.delete_range(_prefix_range(f"{key}/")))
  if key:
    _gcs("delete", path, lambda store, key: store.delete_range(_exact_range(key)))


def _exact_range(key: str):
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  return ts.KvStore.KeyRange(key, key + "\x00")


def _object_exists(path: str) -> bool:
  result = _gcs("read", path, lambda store, key: store.read(key, byte_range=slice(0, 0)))
  return result.state == "value"


def list_tree(path: str) -> list:
  """Every file under the folder `path` (relative names with '/'), sorted:
  one listing on gs://, a walk on a local disk."""
  if is_remote(path):
    return _keys_under(path)
  found = []
  for root, _, files in os.walk(path):
    rel = os.path.relpath(root, path)
    found.extend(f if rel == "." else f"{rel}/{f}" for f in files)
  return sorted(found)


# ------------------------------------------------------------------ both


def exists(path):
  if not is_remote(path):
    return os.path.exists(path)
  _, key = _split(path)
  return bool(key and _object_exists(path)) or bool(_keys_under(path))


def isdir(path):
  if not is_remote(path):
    return os.path.isdir(path)
  return bool(_keys_under(path))


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
  """Creates a local folder (and its parents); nothing on gs://, where a
  folder is only the prefix of the objects in it."""
  if is_remote(path):
    _split(path)
    return
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    if is_disk_full(e):
      raise disk_full_error(path) from None
    raise


def listdir(path):
  """Names in the folder `path` (sub-folders without a trailing '/'); [] when
  it does not exist."""
  if is_remote(path):
    return sorted({k.split("/", 1)[0] for k in _keys_under(path)})
  return os.listdir(path) if os.path.isdir(path) else []


def temp_sibling(path: str) -> str:
  return f"{path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"


def rename(src, dst, overwrite=False):
  """Renames a file or folder. On gs:// (no rename there): copies every
  object, then deletes the originals; `dst` is replaced only if `overwrite`."""
  if not is_remote(src):
    if overwrite:
      os.replace(src, dst)
    else:
      os.rename(src, dst)
    return
  if not overwrite and exists(dst):
    raise FileExistsError(f"{dst} exists")
  keys = _keys_under(src)
  data = _read_object(src) if not keys else None
  if data is not None:
    _write_object(dst, data)
  for key in keys:
    _write_object(f"{dst.rstrip('/')}/{key}", read_bytes(f"{src.rstrip('/')}/{key}"))
  _delete_tree(src)


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes `path` whole or not at all: locally through a temporary sibling
  renamed into place, on gs:// as one object (atomic there).

  Raises:
    DiskFullError: no space was left; the temporary file is removed and `path`
      is as it was.
    StorageError: gs:// could not be written.
  """
  if is_remote(path):
    _write_object(path, bytes(data))
    return
  makedirs(os.path.dirname(path) or ".")
  tmp = temp_sibling(path)
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    if not is_disk_full(e):
      raise
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise disk_full_error(path) from None


def write_text_atomic(path: str, text: str) -> None:
  write_bytes_atomic(path, text.encode("utf-8"))


def read_bytes(path: str) -> bytes:
  """The file's bytes; FileNotFoundError when it does not exist."""
  if is_remote(path):
    data = _read_object(path)
    if data is None:
      raise FileNotFoundError(errno.ENOENT, "No such object", path)
    return data
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
  """Removes a folder and everything in it (a file too); absent is fine."""
  if is_remote(path):
    _delete_tree(path)
  else:
    import shutil  # pylint: disable=g-import-not-at-top
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
      os.remove(path)


class Mirror:
  """A local folder for writers that cannot write to gs:// themselves.

  TensorBoard event files (clu's writers) and seqio's JSONL and TensorBoard
  loggers write through TensorFlow's file system, whose GCS client is the
  untestable one this layer avoids. They write into `local`; `sync()` copies
  every file new or changed since the last sync to `path` through this
  layer, and `close()` syncs a last time and removes `local`. For a local
  `path`, `local` is `path` itself and both do nothing. Files already under
  a gs:// `path` whose names end with one of `pull` are downloaded first, so
  writers that append to them (seqio's `{task}-metrics.jsonl`) continue them.
  """

  def __init__(self, path: str, pull=()):
    self.path = path
    self._seen = {}
    if not is_remote(path):
      self.local = path
      return
    import atexit  # pylint: disable=g-import-not-at-top
    import shutil  # pylint: disable=g-import-not-at-top
    import tempfile  # pylint: disable=g-import-not-at-top
    self.local = tempfile.mkdtemp(prefix="pt-mirror-")
    atexit.register(shutil.rmtree, self.local, True)  # a writer never closed
    for name in list_tree(path) if pull else ():
      if name.endswith(tuple(pull)):
        target = os.path.join(self.local, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
          f.write(read_bytes(f"{path.rstrip('/')}/{name}"))
        self._seen[name] = self._stamp(target)

  @staticmethod
  def _stamp(local_file: str):
    st = os.stat(local_file)
    return (st.st_size, st.st_mtime_ns)

  def sync(self) -> None:
    if self.local == self.path or not os.path.isdir(self.local):
      return
    for name in list_tree(self.local):
      local_file = os.path.join(self.local, *name.split("/"))
      stamp = self._stamp(local_file)
      if self._seen.get(name) != stamp:
        with open(local_file, "rb") as f:
          write_bytes_atomic(f"{self.path.rstrip('/')}/{name}", f.read())
        self._seen[name] = stamp

  def close(self) -> None:
    if self.local == self.path:
      return
    try:
      self.sync()
    finally:
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(self.local, ignore_errors=True)
