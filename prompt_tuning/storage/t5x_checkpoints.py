"""Native reader and writer of T5X "version 3" checkpoints.

Hand-written because t5x is not on PyPI; only msgpack, numpy and tensorstore
are needed. The format (see ../shared/T5X_FORMAT.md):

  checkpoint_<step>/
    checkpoint                     msgpack of {"version": 3, "optimizer": {
                                     "target": <params>,
                                     "state": {"step": <int>, "param_states": {...}}}}
    target.encoder.layers_0....    one zarr folder per large array

Each leaf of the msgpack tree is one of
  * an inline array: msgpack ExtType code 1 whose payload is the msgpack list
    [shape, dtype name, raw C-order little-endian bytes] (flax's encoding, as
    T5X writes it: the tree is read and written by flax.serialization);
  * a tensorstore spec {"driver": "zarr", "kvstore": {"driver": "gfile",
    "path": "target.a.b.c"}, "metadata": {shape, chunks, dtype, compressor}}
    whose path is relative to the checkpoint folder; "gfile" is T5X's own
    kvstore driver and is mapped to tensorstore's "file" (or "gcs" for gs://);
  * a plain scalar or None.

Parameter names are '/'-joined paths under optimizer/target, e.g.
'encoder/layers_0/attention/query/kernel'.

Damaged checkpoints: a truncated or corrupt chunk, a bad `.zarray`, a missing
parameter folder or a missing chunk file raise CheckpointError naming the
parameter and the file. T5X (and save_checkpoint) store zarr arrays with
`fill_value: null`, for which tensorstore writes every chunk, so a missing
chunk is damage: it is read with `fill_missing_data_reads=False` instead of
tensorstore's default of silently reading zeros.
"""
from collections.abc import Mapping
import contextlib
import os
import re
import shutil
import uuid

import flax.serialization
import ml_dtypes
import msgpack
import numpy as np
import tensorstore as ts

from prompt_tuning.storage import file_utils
from prompt_tuning.storage import trees

VERSION = 3
_CHECKPOINT_FILE = "checkpoint"
_MAX_CHUNK_BYTES = 64 * 2**20  # Zarr chunk size cap when writing.


class CheckpointError(ValueError):
  """A checkpoint is absent, malformed or does not match the model."""


# ------------------------------------------------------------------ helpers


def flatten_params(nested, sep="/") -> dict:
  """{'a': {'b': x}} -> {'a/b': x}; tensorstore specs count as leaves."""
  return trees.flatten(nested, sep, is_leaf=lambda _, value: _is_spec(value))


def unflatten_params(flat, sep="/") -> dict:
  """{'a/b': x} -> {'a': {'b': x}}."""
  return trees.unflatten(flat, sep)


def _is_spec(x) -> bool:
  return (isinstance(x, Mapping) and isinstance(x.get("driver"), str)
          and ("kvstore" in x or "path" in x))


def _is_gcs(path: str) -> bool:
  return path.startswith("gs://")


def _read_bytes(path: str, probe: bool = False):
  """File contents (None when absent); probe: only whether it exists (b"")."""
  if not _is_gcs(path):
    if not os.path.isfile(path):
      return None
    with open(path, "rb") as f:
      return f.read(1 if probe else -1)
  if probe:
    return b"" if file_utils.exists(path) else None
  try:
    return file_utils.read_bytes(path)
  except FileNotFoundError:
    return None


def _np_dtype(name: str) -> np.dtype:
  """numpy dtype of a name like 'float32', '<f4' or 'bfloat16'."""
  try:
    return np.dtype(name)
  except TypeError:
    return np.dtype(getattr(ml_dtypes, name.lstrip("<>|=")))


def _zarr_dtype(dtype: np.dtype) -> str:
  """The zarr metadata name: '<f4', '<i4', ... or 'bfloat16' (tensorstore's)."""
  return dtype.name if dtype.kind == "V" else dtype.str


# ------------------------------------------------------------------ reading


def resolve_checkpoint_path(path) -> str:
  """Accepts the checkpoint_<step> dir or its `checkpoint` file; returns the dir."""
  path = os.fspath(path).rstrip("/")
  candidates = [path]
  if os.path.basename(path) == _CHECKPOINT_FILE:
    candidates.insert(0, os.path.dirname(path))
  for directory in candidates:
    if _read_bytes(f"{directory}/{_CHECKPOINT_FILE}", probe=True) is not None:
      return directory if _is_gcs(directory) else os.path.abspath(directory)
  hint = ""
  if not _is_gcs(path) and os.path.isdir(path):
    steps = sorted(d for d in os.listdir(path) if d.startswith("checkpoint_"))
    if steps:
      hint = f" (found {', '.join(steps[-3:])} inside: pass one of them)"
  raise CheckpointError(
      f"No T5X checkpoint at {path}: expected a checkpoint_<step> folder "
      f"containing a `checkpoint` msgpack file{hint}")


def fingerprint(path) -> str:
  """sha256 of the checkpoint's `checkpoint` msgpack file: the tree, every
  array stored inline and every zarr array's spec (T5X writes no checksums;
  the zarr chunks are gzip streams, whose CRC catches their damage on read).
  What a run records of its frozen model (run.json) and checks on resume."""
  import hashlib  # pylint: disable=g-import-not-at-top
  directory = resolve_checkpoint_path(path)
  return hashlib.sha256(_read_bytes(f"{directory}/{_CHECKPOINT_FILE}") or b"").hexdigest()


def read_checkpoint_tree(path) -> dict:
  """The decoded msgpack tree; inline arrays as np.ndarray, zarr specs as dicts."""
  directory = resolve_checkpoint_path(path)
  data = _read_bytes(f"{directory}/{_CHECKPOINT_FILE}")
  try:
    # flax's decoder (inline arrays, numpy scalars, chunked arrays above 1 GiB).
    tree = flax.serialization.msgpack_restore(data)
  except (ValueError, TypeError, AttributeError, KeyError, IndexError,
          msgpack.UnpackException) as e:
    # ValueError for truncation; the others for damaged dtype names and ext payloads.
    raise CheckpointError(
        f"{directory}/{_CHECKPOINT_FILE} is not a readable T5X msgpack "
        f"checkpoint ({e}); re-download or re-save it") from e
  if not isinstance(tree, dict):
    raise CheckpointError(f"{directory}/{_CHECKPOINT_FILE} is not a T5X checkpoint tree "
                          f"(its msgpack holds a {type(tree).__name__}); re-download or "
                          "re-save it")
  return tree


def _target(tree, path) -> dict:
  try:
    return tree["optimizer"]["target"]
  except (KeyError, TypeError):
    raise CheckpointError(
        f"Checkpoint {path} has no optimizer/target tree (version "
        f"{tree.get('version') if isinstance(tree, dict) else None}); "
        f"expected a T5X version {VERSION} checkpoint") from None


def _absolute_spec(spec: Mapping, directory: str) -> dict:
  """Makes a stored spec's relative (gfile) kvstore path absolute and openable."""
  spec = dict(spec)
  kvstore = dict(spec.get("kvstore") or {})
  if "path" in spec:  # Older T5X: path beside, not inside, the kvstore.
    kvstore["path"] = spec.pop("path")
  if kvstore.get("driver") == "gcs" and "bucket" in kvstore:
    spec["kvstore"] = file_utils.gcs_kvstore_spec(
        f"gs://{kvstore['bucket']}/{kvstore.get('path', '')}")
    return spec
  rel = kvstore.get("path", "")
  full = rel if (_is_gcs(rel) or os.path.isabs(rel)) else f"{directory}/{rel}"
  if _is_gcs(full):
    spec["kvstore"] = file_utils.gcs_kvstore_spec(full)  # with the storage layer's retries
  else:
    spec["kvstore"] = {"driver": "file", "path": full}
  # Every chunk of a checkpoint array is stored: a missing one is an error, not zeros.
  spec["fill_missing_data_reads"] = False
  return spec


def _location(spec: Mapping) -> str:
  """The zarr folder of an absolute spec: a local path or gs://bucket/key."""
  kvstore = spec["kvstore"]
  if kvstore.get("driver") == "gcs":
    return f"gs://{kvstore.get('bucket', '')}/{kvstore.get('path', '')}".rstrip("/")
  return kvstore.get("path", "").rstrip("/")


_TS_SUFFIX = re.compile(r"\s*\[(?:tensorstore_spec|source locations)=.*$")
_TS_PATH = re.compile(r'"((?:gs://|/)[^"]*)"')
_TS_STATUS = re.compile(r"^[A-Z_]+: ")
_TS_CONTEXT = re.compile(r'(?:Error (?:opening|reading|writing) (?:[^":]*"[^"]*")?[^":]*: )+')


def _unreadable(name: str, leaf, directory: str, error: Exception, opening: bool) -> str:
  """What tensorstore could not read of parameter `name`, as '<file> <problem>'.

  tensorstore's message is one long line with its full spec; keep the file it
  names and its reason, and say in words what is missing.
  """
  folder = _location(_absolute_spec(leaf, directory))
  text = _TS_SUFFIX.sub("", (str(error).strip().splitlines() or [""])[0])
  found = _TS_PATH.search(text)
  path = found.group(1) if found else (f"{folder}/.zarray" if opening else folder)
  reason = _TS_CONTEXT.sub("", _TS_STATUS.sub("", text)).strip() or type(error).__name__
  path, folder = (p[len(directory) + 1:] if p.startswith(directory + "/") else p
                  for p in (path, folder))  # Relative to the checkpoint, named in the message.
  if re.search(r"\bchunk\b.*\bis missing", reason):
    return f"chunk file {path} is missing"
  if path.endswith("/.zarray") and "does not exist" in reason:
    if not _is_gcs(directory) and not os.path.isdir(os.path.join(directory, folder)):
      return f"parameter folder {folder} is missing"
    return f"{path} is missing"
  if path.endswith("/.zarray"):
    return f"{path} is not valid zarr metadata ({reason})"
  return f"{path} is unreadable ({reason})"


def _raise_unreadable(problems: dict, directory: str) -> None:
  """One CheckpointError line for {param name: problem}: the first in full."""
  if not problems:
    return
  (name, problem), *others = sorted(problems.items())
  more = ""
  if others:
    shown = ", ".join(n for n, _ in others[:3]) + (", ..." if len(others) > 3 else "")
    more = f" (and {len(others)} more unreadable: {shown})"
  raise CheckpointError(f"T5X checkpoint {directory} is damaged: parameter {name}: "
                        f"{problem}{more}; re-download or re-save it")


def _open_all(flat: Mapping, names, directory: str, problems: dict) -> dict:
  """Issues ts.open for every named zarr leaf; {name: future}. A spec that
  tensorstore rejects outright goes to `problems` instead."""
  futures = {}
  for name in names:
    try:
      futures[name] = ts.open(_absolute_spec(flat[name], directory), read=True)
    except ValueError as e:
      problems[name] = _unreadable(name, flat[name], directory, e, opening=True)
  return futures


def _leaf_info(leaf) -> tuple[tuple[int, ...], str]:
  """(shape, dtype name) of a leaf without reading zarr data."""
  if _is_spec(leaf):
    meta = leaf.get("metadata") or {}
    if "shape" in meta and ("dtype" in meta or "dtype" in leaf):
      dtype = meta.get("dtype") or leaf["dtype"]
      return tuple(meta["shape"]), _np_dtype(dtype).name
    return None  # Resolved by opening the array (metadata only).
  arr = np.asarray(leaf)
  return tuple(arr.shape), arr.dtype.name


def _list(tree, directory) -> tuple[dict, dict]:
  """(flat target leaves, name -> (shape, dtype name)); None leaves dropped."""
  flat = {k: v for k, v in flatten_params(_target(tree, directory)).items()
          if v is not None}
  infos = {name: _leaf_info(leaf) for name, leaf in flat.items()}
  problems = {}
  pending = _open_all(flat, [n for n, info in infos.items() if info is None], directory,
                      problems)
  for name, future in pending.items():
    try:
      store = future.result()
    except ValueError as e:
      problems[name] = _unreadable(name, flat[name], directory, e, opening=True)
      continue
    infos[name] = tuple(store.shape), store.dtype.numpy_dtype.name
  _raise_unreadable(problems, directory)
  return flat, infos


def list_params(path) -> dict[str, tuple[tuple[int, ...], str]]:
  """'encoder/layers_0/attention/query/kernel' -> (shape, dtype name)."""
  directory = resolve_checkpoint_path(path)
  return _list(read_checkpoint_tree(directory), directory)[1]


def load_step(path) -> int:
  """The training step stored in optimizer/state/step."""
  tree = read_checkpoint_tree(path)
  try:
    return int(np.asarray(tree["optimizer"]["state"]["step"]))
  except (KeyError, TypeError):
    raise CheckpointError(f"Checkpoint {path} has no optimizer/state/step") from None


# The parameter whose shape tells a model's size best, shown first when it differs.
_TELLING = "token_embedder/embedding"


def _mismatch_message(directory: str, problems: Mapping[str, str], total: int) -> str:
  """One line for {name: what differs}: the count, two examples, the likely fix."""
  shown = ([_TELLING] if _TELLING in problems else []) + sorted(
      n for n in problems if n != _TELLING)
  lead = ""
  if len(problems) > 1:
    lead = (f"{len(problems)} of the model's {total} parameters differ"
            f"{', e.g.' if len(problems) > 2 else ':'} ")
  examples = "; ".join(problems[n] for n in shown[:2])
  return (f"Checkpoint {directory} does not match the model: {lead}{examples}. The model gin "
          "files (size, architecture) are not the checkpoint's: use the models/*.gin of its "
          "model")


def load_params(path, names=None, *, expected_shapes=None, dtype=None) -> dict:
  """Reads the requested `target` params into a nested dict of np.ndarray.

  Args:
    path: the checkpoint_<step> folder or its `checkpoint` file.
    names: '/'-joined param names to read; None reads the names of
      expected_shapes when given, else every param. Others are ignored.
    expected_shapes: flat name -> shape the model expects; all mismatches
      (missing names, wrong shapes) are reported in one CheckpointError
      before any zarr data is read.
    dtype: cast every array to this dtype (np.float32, jnp.bfloat16, ...).

  Returns:
    {'encoder': {'layers_0': {...}}, ...} of np.ndarray.
  """
  directory = resolve_checkpoint_path(path)
  flat, infos = _list(read_checkpoint_tree(directory), directory)
  expected = {k: tuple(v) for k, v in (expected_shapes or {}).items()}
  if names is None:
    names = list(expected) if expected_shapes is not None else list(flat)
  problems = {}
  for name in names:
    want = expected.get(name)
    if name not in flat:
      problems[name] = (f"missing {name}"
                        + (f" (expected {list(want)})" if want is not None else ""))
    elif want is not None and infos[name][0] != want:
      problems[name] = (f"{name} has shape {list(infos[name][0])}, "
                        f"model expects {list(want)}")
  if problems:
    raise CheckpointError(_mismatch_message(directory, problems, len(names)))

  # Issue every zarr open, then every read, and only then wait. Every damaged
  # parameter is collected, so one error reports them all.
  zarr = [n for n in names if _is_spec(flat[n])]
  problems = {}
  reads = {}
  for name, future in _open_all(flat, zarr, directory, problems).items():
    try:
      reads[name] = future.result().read()
    except ValueError as e:
      problems[name] = _unreadable(name, flat[name], directory, e, opening=True)
  arrays = {n: np.array(flat[n]) for n in names if n not in zarr}  # Writable.
  for name, read in reads.items():
    try:
      arrays[name] = read.result()
    except ValueError as e:
      problems[name] = _unreadable(name, flat[name], directory, e, opening=False)
  _raise_unreadable(problems, directory)
  return unflatten_params({n: a if dtype is None else a.astype(dtype, copy=False)
                           for n, a in arrays.items()})


# ------------------------------------------------------------------ writing


def _kvstore(path: str) -> dict:
  if _is_gcs(path):
    return file_utils.gcs_kvstore_spec(path)
  return {"driver": "file", "path": path}


def _prepare(tree, prefix, tmp_dir, keep_inline_below, writes) -> dict:
  """Maps large arrays to stored zarr specs, queueing their writes."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}.{key}"
    if isinstance(value, Mapping):
      out[key] = _prepare(value, name, tmp_dir, keep_inline_below, writes)
      continue
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
      out[key] = value  # Plain msgpack scalar.
      continue
    arr = np.asarray(value)
    if arr.dtype.kind not in "biufcV":
      raise TypeError(f"cannot serialise {type(value).__name__} in a checkpoint")
    if arr.dtype.byteorder == ">":
      arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.ndim == 0 or arr.size <= keep_inline_below:
      out[key] = arr  # Inline ext array (a 0-d array for a scalar, as T5X's step).
      continue
    row_bytes = arr.dtype.itemsize * int(np.prod(arr.shape[1:]))
    chunks = [max(1, min(arr.shape[0], _MAX_CHUNK_BYTES // max(1, row_bytes)))]
    metadata = {"chunks": chunks + list(arr.shape[1:]),
                "compressor": {"id": "gzip", "level": 1},
                "dtype": _zarr_dtype(arr.dtype), "shape": list(arr.shape)}
    spec = {"driver": "zarr", "kvstore": _kvstore(f"{tmp_dir}/{name}"),
            "metadata": metadata}
    writes.append((spec, arr))
    out[key] = {"driver": "zarr",
                "kvstore": {"driver": "gfile", "path": name},
                "metadata": metadata}
  return out


def save_checkpoint(directory, params, step: int, *, param_states=None,
                    keep_inline_below: int = 2**14) -> str:
  """Writes `directory/checkpoint_{step}/` in T5X version 3 format.

  Arrays with more than keep_inline_below elements go to zarr folders named
  'target.a.b.c' (gzip level 1, recorded with T5X's 'gfile' kvstore driver),
  the rest inline. On a local disk everything is written into
  `checkpoint_{step}.tmp-<id>`, which is renamed to `checkpoint_{step}` only
  once complete (an existing one is replaced after that). On gs://, which
  has no rename, the arrays are written in place and the `checkpoint` file,
  which makes the folder a checkpoint to every reader, last. Returns the
  final path.
  """
  directory = os.fspath(directory).rstrip("/")
  gcs = _is_gcs(directory)
  if not gcs:
    directory = os.path.abspath(directory)
  final = f"{directory}/checkpoint_{step}"
  tmp = final if gcs else f"{final}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    writes = []
    state = {"step": np.int32(step), "param_states": param_states or {}}
    optimizer = {"target": _prepare(params, "target", tmp, keep_inline_below, writes),
                 "state": _prepare(state, "state", tmp, keep_inline_below, writes)}
    # flax's encoder, as T5X writes it; in place: the keys keep their order
    # ('version' first), where a copy through jax.tree_util would sort them.
    data = flax.serialization.msgpack_serialize({"version": VERSION, "optimizer": optimizer},
                                                in_place=True)
    if gcs:
      file_utils.remove_tree(final)
    else:
      os.makedirs(tmp)
    # Issue every create, then every write, and only then wait.
    opened = [ts.open(spec, create=True, delete_existing=True)
              for spec, _ in writes]
    pending = [store.result().write(arr) for store, (_, arr) in zip(opened, writes)]
    for write in pending:
      write.result()
    if gcs:
      file_utils.write_bytes_atomic(f"{final}/{_CHECKPOINT_FILE}", data)
      return final
    with open(f"{tmp}/{_CHECKPOINT_FILE}", "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    old = None
    if os.path.exists(final):
      old = f"{final}.old-{uuid.uuid4().hex[:8]}"
      os.rename(final, old)
    os.rename(tmp, final)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    if gcs:
      with contextlib.suppress(Exception):
        file_utils.remove_tree(final)
    else:
      shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final
