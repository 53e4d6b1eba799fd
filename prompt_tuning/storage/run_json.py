"""Reading a run's `run.json` (training/run_record.py writes it): the record
checked whole, never guessed at, and the frozen checkpoint it names compared
with the one given now. Here, below training and evaluation, because both
check a run folder before using it (pt-train on resume, pt-eval).
"""
import json
import os

from prompt_tuning.storage import file_utils

FILENAME = "run.json"


class RecordError(ValueError):
  """run.json exists but cannot be read as a run record, or the frozen
  checkpoint is not the one it records; says which and why."""


def check_frozen(record, path: str, sha256: str) -> None:
  """RecordError when `record` (a run's) names the frozen checkpoint `path`
  with another sha256 than it has now (changed since the run started, or
  another checkpoint given on resume)."""
  recorded = (record or {}).get("frozen_checkpoint") or {}
  if recorded.get("sha256") and recorded["sha256"] != sha256:
    raise RecordError(
        f"the frozen checkpoint {path} is not the one this run started from (its msgpack "
        f"file's sha256 differs from the one in {FILENAME}, recorded from "
        f"{recorded.get('path')}): it changed since, or is another checkpoint; use the "
        "run's own checkpoint, or another MODEL_DIR")


def read(model_dir: str):
  """The record of a run folder, or None when it has none.

  Raises:
    RecordError: run.json is not UTF-8 JSON holding an object with `bindings`
      (every version wrote them): it is never guessed at, or overwritten.
  """
  path = os.path.join(model_dir, FILENAME)
  if not file_utils.exists(path):
    return None
  try:
    record = json.loads(file_utils.read_bytes(path).decode("utf-8"))
    if not isinstance(record, dict) or not isinstance(record.get("bindings"), dict):
      raise ValueError("not a run record: no 'bindings' object")
  except ValueError as e:  # JSON and UTF-8 errors are ValueErrors
    reason = " ".join(str(e).split())[:120]
    raise RecordError(f"{path} is damaged ({reason}): restore it from a copy, or start the run "
                      "afresh in another MODEL_DIR") from None
  return record
