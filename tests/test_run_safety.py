"""A run owns its MODEL_DIR (run_lock), resuming is a promise about the
configuration (run_record.changes), and SIGTERM loses no step (preemption)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers  # pylint: disable=g-bad-import-order
from test_cli import assert_one_line_error, train_args  # pylint: disable=g-bad-import-order
from prompt_tuning.storage import run_lock

PROMPT = "encoder.prompt.prompt.npy"


# ------------------------------------------------------------------ the lock


def _write_lock(directory, **fields):
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": None,
            "run_id": "x", "started": time.time(), "heartbeat": time.time(), "command": "t"}
  holder.update(fields)
  (directory / run_lock.FILENAME).write_text(json.dumps(holder))


def _dead_pid():
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_second_holder_is_refused_with_the_holder_named(tmp_path):
  with run_lock.RunLock(str(tmp_path)):
    with pytest.raises(run_lock.LockError) as e:
      run_lock.RunLock(str(tmp_path)).acquire()
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(e.value)
    assert "use another MODEL_DIR" in str(e.value)
  assert not (tmp_path / run_lock.FILENAME).exists()  # released
  with run_lock.RunLock(str(tmp_path)):
    pass


@pytest.mark.parametrize("fields,taken", [
    ({"pid": None}, True),  # same host, process gone (pid filled in below)
    ({"host": "elsewhere", "heartbeat": time.time() - 3600}, True),  # stale heartbeat
    ({"host": "elsewhere"}, False),  # fresh heartbeat on another host
    ({"pid": os.getpid()}, False),  # same host, alive
])
def test_takeover_only_when_the_holder_is_gone(tmp_path, fields, taken):
  if fields.get("pid", 0) is None:
    fields = dict(fields, pid=_dead_pid())
  _write_lock(tmp_path, **fields)
  lock = run_lock.RunLock(str(tmp_path))
  if taken:
    lock.acquire()
    assert json.loads((tmp_path / run_lock.FILENAME).read_text())["run_id"] == \
        lock._record["run_id"]  # pylint: disable=protected-access
    lock.release()
  else:
    with pytest.raises(run_lock.LockError, match="in use by another pt-train"):
      lock.acquire()


@pytest.mark.parametrize("content", [
    b"\x00garbage", b"[1, 2]", b'{"host": "h", "pid": 1, "heartbeat": "abc"}',
    b'{"host": "h", "pid": 1, "heartbeat": 1e999}', b'{"host": "h", "heartbeat": 1}'])
def test_damaged_lock_is_refused_naming_the_file(tmp_path, content):
  (tmp_path / run_lock.FILENAME).write_bytes(content)
  with pytest.raises(run_lock.LockError) as e:
    run_lock.RunLock(str(tmp_path)).acquire()
  assert str(e.value).startswith(f"{tmp_path / run_lock.FILENAME} is damaged (")
  assert "delete it and rerun" in str(e.value) and "\n" not in str(e.value)
  assert (tmp_path / run_lock.FILENAME).read_bytes() == content  # never overwritten


def test_holder_notices_a_takeover(tmp_path):
  lock = run_lock.RunLock(str(tmp_path), heartbeat_s=0.05).acquire()
  _write_lock(tmp_path, host="elsewhere", run_id="thief")
  deadline = time.time() + 10
  while not lock.lost and time.time() < deadline:
    time.sleep(0.05)
  assert lock.lost
  lock.release()
  # Not ours any more: release must not delete the new holder's lock.
  assert json.loads((tmp_path / run_lock.FILENAME).read_text())["run_id"] == "thief"


# ------------------------------------------------------- resume = same config


@pytest.fixture(scope="module")
def finished(tmp_path_factory, frozen_ckpt):
  """A finished 2-step run on a random frozen model: (model_dir, checkpoint)."""
  root = tmp_path_factory.mktemp("safety")
  ckpt = frozen_ckpt
  model_dir = root / "run"
  result = helpers.run_cli_here("pt-train", train_args(model_dir, ckpt, "--gin.TRAIN_STEPS=2",
                                                  "--gin.EVAL_PERIOD=None",
                                                  "--gin.CHECKPOINT_PERIOD=1"))
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, ckpt


@pytest.mark.parametrize("flags,needles", [
    (["--gin.PROMPT_LENGTH=8"], ["PROMPT_LENGTH 6 -> 8", "another MODEL_DIR"]),
    (["--gin.BATCH_SIZE=16"], ["BATCH_SIZE 8 -> 16"]),
    (["--gin.optimizers.adafactor.learning_rate=0.1"],
     ["optimizers.adafactor.learning_rate 0.3 -> 0.1"]),
    (["--gin.TRAIN_STEPS=1"], ["already at step 2, past TRAIN_STEPS=1"]),
])
def test_resume_with_a_meaningful_change_is_refused(finished, flags, needles):
  model_dir, ckpt = finished
  before = helpers.snapshot(model_dir)
  result = helpers.run_cli_here("pt-train", train_args(model_dir, ckpt, "--gin.TRAIN_STEPS=2",
                                                  "--gin.EVAL_PERIOD=None",
                                                  "--gin.CHECKPOINT_PERIOD=1", *flags))
  assert_one_line_error(result, "pt-train", *needles)
  assert helpers.snapshot(model_dir) == before


def test_rerun_of_a_finished_run_says_so_and_writes_nothing(finished):
  model_dir, ckpt = finished
  before = helpers.snapshot(model_dir)
  result = helpers.run_cli_here("pt-train", train_args(model_dir, ckpt, "--gin.TRAIN_STEPS=2",
                                                  "--gin.EVAL_PERIOD=None",
                                                  "--gin.CHECKPOINT_PERIOD=1"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "already holds this run finished (step 2 of 2)" in result.stdout
  assert helpers.snapshot(model_dir) == before


def test_harmless_changes_resume_and_are_recorded(finished, tmp_path):
  model_dir, ckpt = finished
  copy = tmp_path / "run"
  shutil.copytree(model_dir, copy)
  result = helpers.run_cli_here("pt-train", train_args(copy, ckpt, "--gin.TRAIN_STEPS=3",
                                                  "--gin.EVAL_PERIOD=None",
                                                  "--gin.CHECKPOINT_PERIOD=1",
                                                  "--gin.LOG_PERIOD=1"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert (copy / "numpy_checkpoints" / "checkpoint_3").is_dir()
  record = json.loads((copy / "run.json").read_text())
  # A moved run folder (the copy) is a harmless change too.
  assert record["resumes"] == [{"step": 2, "time": record["resumes"][0]["time"],
                                "changed": {"LOG_PERIOD": ["100", "1"],
                                            "MODEL_DIR": [repr(str(model_dir)), repr(str(copy))],
                                            "TRAIN_STEPS": ["2", "3"]}}]
  assert record["macros"]["TRAIN_STEPS"] == 3
  first = json.loads((model_dir / "run.json").read_text())
  assert record["start_time"] == first["start_time"]


# ------------------------------------------- a busy MODEL_DIR, and preemption


def test_second_run_refused_and_sigterm_loses_no_step(tmp_path, frozen_ckpt):
  ckpt = frozen_ckpt
  model_dir = tmp_path / "run"
  common = ["--gin.EVAL_PERIOD=None", "--gin.CHECKPOINT_PERIOD=100000", "--gin.LOG_PERIOD=1"]
  env = {k: v for k, v in os.environ.items() if k not in ("PT_VOCABULARY_PATH",
                                                           "SUPERGLUE_DATA_DIR")}
  env.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(helpers.TESTS), os.environ.get("PYTHONPATH", "")]))
  first = subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.train",
       *train_args(model_dir, ckpt, "--gin.TRAIN_STEPS=100000", *common)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  try:
    lines = []
    for line in first.stdout:  # wait until it trains
      lines.append(line)
      if line.startswith("step 3/"):
        break
    assert lines and lines[-1].startswith("step 3/"), "".join(lines)
    # Paused (still alive, still holding MODEL_DIR) while the second runs try:
    # it would otherwise train on, and the straight run below would have to
    # repeat every step it took.
    first.send_signal(signal.SIGSTOP)
    config_before = (model_dir / "config.gin").read_text()
    second = helpers.run_cli_here("pt-train", train_args(
        model_dir, ckpt, "--gin.TRAIN_STEPS=100000",
        "--gin.optimizers.adafactor.learning_rate=0.1", *common))
    # The second run differs in lr: refused by the config check or the lock, never run.
    line = assert_one_line_error(second, "pt-train")
    assert "MODEL_DIR" in line
    second = helpers.run_cli_here(
        "pt-train", train_args(model_dir, ckpt, "--gin.TRAIN_STEPS=100000", *common))
    assert_one_line_error(second, "pt-train", f"in use by another pt-train (pid {first.pid}")
    assert (model_dir / "config.gin").read_text() == config_before
    first.send_signal(signal.SIGTERM)  # pending until it runs again
    first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=120)
  finally:
    first.kill()
  assert first.returncode == 128 + 15, stderr[-3000:]
  stopped = [l for l in stderr.splitlines() if l.startswith("pt-train: stopped by SIGTERM")]
  assert len(stopped) == 1 and stderr.splitlines() == stopped, stderr[-3000:]  # one line
  step = int(stopped[0].split("after step ")[1].split()[0])
  assert step >= 3
  assert (model_dir / "numpy_checkpoints" / f"checkpoint_{step}" / PROMPT).exists()
  assert not (model_dir / run_lock.FILENAME).exists()
  # Resume to step+2 and compare with an uninterrupted run of step+2 steps.
  resumed = helpers.run_cli_here("pt-train", train_args(model_dir, ckpt,
                                                   f"--gin.TRAIN_STEPS={step + 2}", *common))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  straight = tmp_path / "straight"
  result = helpers.run_cli_here(
      "pt-train", train_args(straight, ckpt, f"--gin.TRAIN_STEPS={step + 2}", *common))
  assert result.returncode == 0, result.stderr[-3000:]
  name = f"numpy_checkpoints/checkpoint_{step + 2}/{PROMPT}"
  np.testing.assert_array_equal(np.load(model_dir / name), np.load(straight / name))


# ------------------------------------------ run records that cannot mislead


def _copy(finished, tmp_path):
  model_dir, ckpt = finished
  copy = tmp_path / "run"
  shutil.copytree(model_dir, copy)
  return copy, ckpt


@pytest.mark.parametrize("content,reason", [
    (b"{not json", "Expecting property name"), (b"\xff\xfe", "codec can't decode"),
    (b"[1]", "no 'bindings' object"), (b'{"version": 1}', "no 'bindings' object")])
def test_damaged_run_record_is_refused_never_overwritten(finished, tmp_path, content, reason):
  copy, ckpt = _copy(finished, tmp_path)
  (copy / "run.json").write_bytes(content)
  before = helpers.snapshot(copy)
  result = helpers.run_cli_here("pt-train", train_args(
      copy, ckpt, "--gin.TRAIN_STEPS=3", "--gin.EVAL_PERIOD=None", "--gin.CHECKPOINT_PERIOD=1"))
  assert_one_line_error(result, "pt-train", f"{copy / 'run.json'} is damaged (", reason,
                        "restore it")
  assert helpers.snapshot(copy) == before


def test_checkpoints_without_a_run_record_are_not_resumed_blind(finished, tmp_path):
  copy, ckpt = _copy(finished, tmp_path)
  (copy / "run.json").unlink()
  before = helpers.snapshot(copy)
  result = helpers.run_cli_here("pt-train", train_args(
      copy, ckpt, "--gin.TRAIN_STEPS=3", "--gin.EVAL_PERIOD=None", "--gin.CHECKPOINT_PERIOD=1",
      "--gin.BATCH_SIZE=4"))
  assert_one_line_error(result, "pt-train", "holds checkpoints (newest step 2) but no run.json",
                        "not resumed blind")
  assert helpers.snapshot(copy) == before


def _changed_checkpoint(ckpt, folder):
  """A copy of the frozen checkpoint with one bit of an inline array flipped."""
  shutil.copytree(ckpt, folder)
  data = bytearray((folder / "checkpoint").read_bytes())
  data[-5] ^= 0x10
  (folder / "checkpoint").write_bytes(bytes(data))
  return folder


def test_a_frozen_checkpoint_that_changed_is_refused(finished, tmp_path):
  copy, ckpt = _copy(finished, tmp_path)
  record = json.loads((copy / "run.json").read_text())
  assert record["frozen_checkpoint"]["path"] == str(ckpt)
  assert len(record["frozen_checkpoint"]["sha256"]) == 64
  changed = _changed_checkpoint(ckpt, tmp_path / "changed")
  before = helpers.snapshot(copy)
  result = helpers.run_cli_here("pt-train", train_args(
      copy, changed, "--gin.TRAIN_STEPS=3", "--gin.EVAL_PERIOD=None",
      "--gin.CHECKPOINT_PERIOD=1"))
  assert_one_line_error(result, "pt-train", f"the frozen checkpoint {changed} is not the one "
                        "this run started from")
  assert helpers.snapshot(copy) == before
  # pt-eval of the run against the path it recorded, whose file changed since.
  record["frozen_checkpoint"]["path"] = str(changed)
  (copy / "run.json").write_text(json.dumps(record))
  before = helpers.snapshot(copy)
  result = helpers.run_cli_here("pt-eval", eval_args(copy, changed))
  assert_one_line_error(result, "pt-eval", "is not the one this run started from")
  assert helpers.snapshot(copy) == before


def test_pt_eval_leaves_a_live_run_alone(finished, tmp_path):
  copy, ckpt = _copy(finished, tmp_path)
  _write_lock(copy)  # held by this (live) process
  before = helpers.snapshot(copy)
  result = helpers.run_cli_here("pt-eval", eval_args(copy, ckpt))
  assert_one_line_error(result, "pt-eval", "belongs to a running pt-train",
                        "set EVAL_OUTPUT_DIR")
  assert helpers.snapshot(copy) == before


def eval_args(model_dir, ckpt):
  """pt-eval of MODEL_DIR's newest checkpoint into MODEL_DIR/inference_eval."""
  return (["--gin_file=" + f for f in helpers.TINY_FILES] + ["--gin_file=runs/prompt_eval.gin"]
          + helpers.as_flags(helpers.TINY_BINDINGS + [f"MODEL_DIR = '{model_dir}'",
                                                      f"CHECKPOINT_PATH = '{ckpt}'"]))
