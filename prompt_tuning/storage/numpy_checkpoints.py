"""Kilobyte checkpoints of the trainable parameters, and exact resume.

Layout (the authors' convention, so their released prompts and ours mix):

    MODEL_DIR/numpy_checkpoints/checkpoint_{step}/
        encoder.prompt.prompt.npy      one file per trainable parameter, named
                                       by its '/'-path with '.' separators
        train_state.msgpack            optimizer state, step, RNG seed and data
                                       position: what an exact resume needs
        train_ds-000-of-001.index      the tf.data iterator's state, one pair of
        train_ds-000-of-001.data-...   files per process (data_state): a resume
                                       restores the data position, no replay
        checksums.json                 sha256 and size of every other file

Frozen weights are never written. On a local disk each checkpoint folder is
written under a temporary name and renamed when complete, so a killed run
leaves either a whole checkpoint or none; the latest complete one is where a
rerun resumes. On gs://, which has no rename (a folder "rename" is
copy-then-delete, which a kill can leave half done), the folder is written
under its final name and committed by its checksums.json, written last: a
folder without one is not a checkpoint (`steps` ignores it, and `cleanup`,
run by the owner of MODEL_DIR, removes it).

Files can still be damaged afterwards (a disk or copy that truncates or flips
bits), so checksums.json is written last and every read checks against it:
a damaged file raises CheckpointDamagedError naming the file instead of
feeding a damaged prompt to training or evaluation. A checkpoint folder
without checksums.json is never trusted (every version that wrote
checkpoints wrote one; deleting it must not switch damage detection off).
`latest_intact_step` is where a rerun resumes: it sets damaged checkpoints
aside as `damaged_checkpoint_{step}` (which `steps` ignores) and falls back
to the one before.
"""
import hashlib
import io
import json
import os
import re
from typing import Callable, Optional

from absl import logging
import flax.serialization
import msgpack
import numpy as np

from prompt_tuning.storage import file_utils
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees

DIRNAME = "numpy_checkpoints"
STATE_FILE = "train_state.msgpack"
CHECKSUMS_FILE = "checksums.json"
DAMAGED_PREFIX = "damaged_"
_CHECKSUMS_FORMAT = 1
_STEP_RE = re.compile(r"^checkpoint_(\d+)$")
_NPY_MAGIC = b"\x93NUMPY"


class CheckpointDamagedError(t5x_checkpoints.CheckpointError):
  """A checkpoint file is missing, truncated or changed since it was written.

  A CheckpointError (so pt-train and pt-eval print it as one line): the message
  names the file and what is wrong with it.
  """


def checkpoint_dir(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, DIRNAME, f"checkpoint_{step}")


def param_filename(name: str) -> str:
  return name.replace("/", ".") + ".npy"


def steps(model_dir: str) -> list:
  """Steps of the complete checkpoints in MODEL_DIR, ascending: on gs://
  those whose checksums.json (written last) is there."""
  base = os.path.join(model_dir, DIRNAME)
  if file_utils.is_remote(model_dir):
    entries = [name[:-len(CHECKSUMS_FILE) - 1] for name in file_utils.list_tree(base)
               if name.endswith("/" + CHECKSUMS_FILE) and name.count("/") == 1]
  else:
    entries = file_utils.listdir(base)
  found = []
  for entry in entries:
    match = _STEP_RE.match(entry.rstrip("/"))
    if match:
      found.append(int(match.group(1)))
  return sorted(found)


def latest_step(model_dir: str) -> Optional[int]:
  """The newest checkpoint's step, intact or not (see latest_intact_step)."""
  found = steps(model_dir)
  return found[-1] if found else None


# ------------------------------------------------------------------ checksums


def _digest(data: bytes) -> dict:
  return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _files_digest(files: dict) -> str:
  """sha256 of the file list itself, so a damaged checksums.json is reported
  as such rather than as a mismatch of the file whose entry it garbled."""
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode("utf-8")).hexdigest()


def _checksums_json(files: dict) -> str:
  return json.dumps({"format": _CHECKSUMS_FORMAT, "files": files,
                     "files_sha256": _files_digest(files)}, indent=1, sort_keys=True)


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _read_checksums(directory: str) -> Optional[dict]:
  """{file name: {'sha256', 'size'}} from checksums.json; None for a checkpoint
  written before checksums existed. Raises CheckpointDamagedError if unreadable."""
  path = os.path.join(directory, CHECKSUMS_FILE)
  if not file_utils.exists(path):
    return None
  try:
    content = json.loads(file_utils.read_bytes(path).decode("utf-8"))
    files = content["files"]
    if content.get("files_sha256") != _files_digest(files):
      raise ValueError("its own sha256 does not match")
    if not all(isinstance(v, dict) and {"sha256", "size"} <= set(v) for v in files.values()):
      raise ValueError("an entry lacks sha256 or size")
  except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
    raise CheckpointDamagedError(
        f"{path} is not a readable checksum list ({_first_line(e)})") from None
  return files


def _read(directory: str, filename: str, checksums: Optional[dict]) -> Optional[bytes]:
  """The file's bytes, checked against `checksums` when it is listed there;
  None when the file is absent and not listed (not part of this checkpoint)."""
  path = os.path.join(directory, filename)
  want = (checksums or {}).get(filename)
  if not file_utils.exists(path):
    if want is not None:
      raise CheckpointDamagedError(f"{path} is missing (listed in {CHECKSUMS_FILE})")
    return None
  try:
    data = file_utils.read_bytes(path)
  except OSError as e:
    raise CheckpointDamagedError(f"{path} cannot be read ({_first_line(e)})") from None
  if want is not None:
    if len(data) != want["size"]:
      raise CheckpointDamagedError(
          f"{path} is {len(data)} bytes, {want['size']} when written (truncated or overwritten)")
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
      raise CheckpointDamagedError(
          f"{path} does not match its sha256 in {CHECKSUMS_FILE} (its bytes changed after "
          "it was written)")
  return data


def _parse_npy(path: str, data: bytes) -> np.ndarray:
  if not data.startswith(_NPY_MAGIC):
    # numpy would blame pickled data, which only misleads.
    raise CheckpointDamagedError(f"{path} is not a .npy file (no .npy header)")
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except (ValueError, EOFError, OSError) as e:
    raise CheckpointDamagedError(
        f"{path} is not a readable .npy file ({_first_line(e)})") from None


def _parse_state(path: str, data: bytes) -> dict:
  try:
    return flax.serialization.msgpack_restore(data)
  except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
    raise CheckpointDamagedError(f"{path} is not readable msgpack ({_first_line(e)})") from None


# ------------------------------------------------------------------ writing


def shared_temp_dir(model_dir: str, step: int) -> str:
  """The temporary folder of checkpoint_{step} when several processes write
  into it (each its data state): a name every process knows. On gs://, the
  checkpoint folder itself (committed by its checksums.json, written last)."""
  if file_utils.is_remote(model_dir):
    return checkpoint_dir(model_dir, step)
  return f"{checkpoint_dir(model_dir, step)}.tmp-allprocs"


def begin_shared(model_dir: str, step: int) -> str:
  """Creates `shared_temp_dir` empty (removing a leftover of a killed run);
  the writer (process 0) calls it, then every process may `write_files` into
  it, then the writer calls `save(..., tmp=)` to complete the checkpoint."""
  tmp = shared_temp_dir(model_dir, step)
  if file_utils.exists(tmp):
    file_utils.remove_tree(tmp)
  file_utils.makedirs(tmp)
  return tmp


def write_files(directory: str, files: dict) -> None:
  """Writes {filename: bytes} into `directory` (each file atomically)."""
  for filename, data in files.items():
    file_utils.write_bytes_atomic(os.path.join(directory, filename), data)


def save(model_dir: str, step: int, trainable_params, state: Optional[dict] = None,
         extra_files: Optional[dict] = None, tmp: Optional[str] = None) -> str:
  """Writes one checkpoint atomically; `state` is a pytree of arrays/scalars.

  `extra_files` ({filename: bytes}, e.g. the data state) are written beside
  the parameters. `tmp`: the folder made by `begin_shared`, which may already
  hold files other processes wrote there; they are part of the checkpoint too.
  checksums.json (sha256 and size of each file, as written) is the last file
  written into the temporary folder, before the folder is renamed into place.
  """
  return _write_folder(checkpoint_dir(model_dir, step), trainable_params, state, extra_files, tmp)


def _write_folder(final: str, trainable_params, state: Optional[dict] = None,
                  extra_files: Optional[dict] = None, tmp: Optional[str] = None) -> str:
  """`save`'s writer, for any folder `final`: the files under a temporary
  name (or in `tmp`), checksums.json last, then the rename."""
  fresh = tmp is None
  in_place = file_utils.is_remote(final)  # no rename on gs://: checksums.json commits
  if in_place and fresh:
    file_utils.remove_tree(final)  # an older or partial folder of this name
  tmp = (final if in_place else file_utils.temp_sibling(final)) if fresh else tmp
  files = {}

  def write(filename, data):
    file_utils.write_bytes_atomic(os.path.join(tmp, filename), data)
    files[filename] = _digest(data)

  try:
    if fresh:
      file_utils.makedirs(tmp)
    for name, value in trees.flatten(trainable_params).items():
      buf = io.BytesIO()
      np.save(buf, np.asarray(value), allow_pickle=False)
      write(param_filename(name), buf.getvalue())
    if state is not None:
      write(STATE_FILE, flax.serialization.msgpack_serialize(state))
    for filename, data in (extra_files or {}).items():
      write(filename, data)
    for filename in sorted(file_utils.listdir(tmp)):  # written by other processes
      filename = filename.rstrip("/")
      if filename not in files and filename != CHECKSUMS_FILE and ".tmp-" not in filename:
        files[filename] = _digest(file_utils.read_bytes(os.path.join(tmp, filename)))
    file_utils.write_text_atomic(os.path.join(tmp, CHECKSUMS_FILE), _checksums_json(files))
  except file_utils.DiskFullError:
    # The partial folder is of no use; the checkpoints before it are intact.
    if file_utils.exists(tmp):
      file_utils.remove_tree(tmp)
    raise
  if tmp != final:
    if file_utils.exists(final):
      file_utils.remove_tree(final)
    file_utils.rename(tmp, final)
  return final


# ------------------------------------------------------------------ reading


def load_params(directory: str, names) -> dict:
  """Reads the named parameters ('/'-paths) from a checkpoint folder.

  Raises:
    CheckpointDamagedError: a file fails its checksum, is missing although
      checksums.json lists it, or does not parse; the message names it.
    t5x_checkpoints.CheckpointError: the checkpoint never held a named parameter
      (it was made for other trainable parameters).
  """
  checksums = _read_checksums(directory)
  flat = {}
  for name in names:
    filename = param_filename(name)
    data = _read(directory, filename, checksums)
    if data is None:
      held = sorted(f for f in file_utils.listdir(directory) if f.endswith(".npy"))
      raise t5x_checkpoints.CheckpointError(
          f"{directory} has no {filename} (it holds {', '.join(held) or 'no .npy file'}): "
          "it was made for other trainable parameters (TRAINABLE_PARAMS, prompt gin files)")
    flat[name] = _parse_npy(os.path.join(directory, filename), data)
  return trees.unflatten(flat)


def load_state(directory: str) -> Optional[dict]:
  """The train state, or None for a checkpoint written without one.

  Raises CheckpointDamagedError as load_params does.
  """
  data = _read(directory, STATE_FILE, _read_checksums(directory))
  if data is None:
    return None
  return _parse_state(os.path.join(directory, STATE_FILE), data)


def load_files(directory: str, name: str) -> Optional[dict]:
  """{filename: bytes} of the files `name`.* (one process's data state), each
  checked against checksums.json; None when the checkpoint has none (written
  by an older version, or by a pipeline that cannot be checkpointed).

  Raises CheckpointDamagedError as load_params does.
  """
  checksums = _read_checksums(directory)
  listed = checksums if checksums is not None else [
      f.rstrip("/") for f in file_utils.listdir(directory)]
  names = sorted(f for f in listed if f.startswith(name + "."))
  if not names:
    return None
  return {f: _read(directory, f, checksums) for f in names}


def check_file(path: str) -> None:
  """Raises CheckpointDamagedError if `path` (e.g. a PROMPT_FILE .npy inside a
  checkpoint folder) fails the checksums.json beside it. A file with no
  checksums.json beside it, or not listed there, is not checked."""
  directory, filename = os.path.split(path)
  _read(directory, filename, _read_checksums(directory))


def verify(directory: str) -> Optional[str]:
  """None if the checkpoint folder is intact, else one line naming the damaged file.

  Every checkpoint `save` writes (every version of pt-train wrote one) has
  checksums.json: each file it lists must be there with the recorded size and
  sha256. A folder without it is not trusted: its write never completed, or
  the file was removed, and bits flipped in an array could not be seen.
  """
  if not file_utils.exists(directory):
    return f"{directory} does not exist"
  try:
    checksums = _read_checksums(directory)
    if checksums is None:
      return (f"{directory} has no {CHECKSUMS_FILE} (its write never completed, or the "
              "file was removed): its files cannot be checked, so it is not used")
    for filename in sorted(checksums):
      _read(directory, filename, checksums)
  except CheckpointDamagedError as e:
    return str(e)
  return None


def set_aside(model_dir: str, step: int) -> str:
  """Renames checkpoint_{step} to damaged_checkpoint_{step} (or .1, .2, ... if
  taken), a name `steps` does not list; returns the new path."""
  base = os.path.join(model_dir, DIRNAME)
  target = os.path.join(base, f"{DAMAGED_PREFIX}checkpoint_{step}")
  n = 0
  while file_utils.exists(target if n == 0 else f"{target}.{n}"):
    n += 1
  target = target if n == 0 else f"{target}.{n}"
  file_utils.rename(checkpoint_dir(model_dir, step), target)
  return target


def latest_intact_step(model_dir: str, warn: Callable[[str], None] = logging.warning, *,
                       move_aside: bool = True) -> Optional[int]:
  """The newest checkpoint that `verify` accepts, or None if there is none.

  Walks back from the newest checkpoint. Each damaged one is reported with one
  `warn` line (which checkpoint, which file, what is wrong, where it went) and,
  with move_aside, renamed by `set_aside` so it stays for inspection and is
  never resumed from again. move_aside=False only reads (pt-eval, and all but
  one process of a multi-host run).
  """
  for step in reversed(steps(model_dir)):
    directory = checkpoint_dir(model_dir, step)
    problem = verify(directory)
    if problem is None:
      return step
    if not move_aside:
      warn(f"numpy checkpoint at step {step} is damaged: {problem}; skipping it "
           "(left in place)")
      continue
    try:
      where = f"moved {directory} to {set_aside(model_dir, step)}"
    except Exception as e:  # pylint: disable=broad-except
      # Still skipped; the next save of this step replaces it.
      where = f"could not move {directory} aside ({_first_line(e)})"
    warn(f"numpy checkpoint at step {step} is damaged: {problem}; {where} for inspection, "
         "falling back to the previous checkpoint")
  return None


def cleanup(model_dir: str, keep: Optional[int]) -> None:
  """Keeps the newest `keep` checkpoints (all if None; always checkpoint_0,
  the initial prompt) and removes leftovers of killed writes. Damaged
  checkpoints set aside are kept for inspection."""
  if keep:
    for step in steps(model_dir)[:-keep]:
      if step != 0:
        file_utils.remove_tree(checkpoint_dir(model_dir, step))
  base = os.path.join(model_dir, DIRNAME)
  complete = set(steps(model_dir))
  for entry in file_utils.listdir(base):  # leftovers of killed writes
    match = _STEP_RE.match(entry)
    if ".tmp-" in entry or (match and int(match.group(1)) not in complete):
      file_utils.remove_tree(os.path.join(base, entry))


def write_folder(directory: str, flat_params: dict, extra_files: Optional[dict] = None) -> None:
  """Writes a standalone numpy checkpoint folder `directory` (new or empty):
  one .npy per parameter ('/'-paths), the `extra_files` {filename: bytes}, and
  checksums.json covering all of them; written under a temporary name and
  renamed when complete (pt-import-peft's output)."""
  _write_folder(directory, flat_params, extra_files=extra_files)
