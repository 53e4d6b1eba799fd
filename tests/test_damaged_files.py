"""Damaged numpy checkpoints are detected, reported with the file, and never used.

Unit tests of numpy_checkpoints' checksums, verify and latest_intact_step, then
pt-train / pt-eval on a run whose latest checkpoint is damaged. (Damaged T5X
checkpoints: tests/test_checkpoints.py.)
"""
import logging
import os
import shutil

import numpy as np
import pytest

from prompt_tuning.evaluation import trained
from prompt_tuning.storage import numpy_checkpoints as nc
from prompt_tuning.storage import t5x_checkpoints

import helpers  # pylint: disable=g-bad-import-order

PROMPT = "encoder/prompt/prompt"
ROUTER = "encoder/prompt/router/kernel"
PROMPT_FILE = "encoder.prompt.prompt.npy"
ROUTER_FILE = "encoder.prompt.router.kernel.npy"


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"encoder": {"prompt": {"prompt": rng.normal(size=(6, 4)).astype(np.float32),
                                 "router": {"kernel": rng.normal(size=(4, 3)).astype(np.float32)}}}}


def _state(step):
  return {"opt_state": {"v": np.full(6, 0.5, np.float32)}, "step": step, "random_seed": 0}


def _save(model_dir, step, seed=0):
  return nc.save(str(model_dir), step, _params(seed), _state(step))


# Damages, each returning (file damaged, words the reason must contain).


def flip_two_bits(directory, filename=PROMPT_FILE):
  """Two exponent bits of the last two float32s (little-endian: their last bytes):
  the .npy still parses, and the values are far off."""
  path = os.path.join(directory, filename)
  data = bytearray(open(path, "rb").read())
  data[-1] ^= 0x20
  data[-5] ^= 0x20
  open(path, "wb").write(bytes(data))
  return filename, "does not match its sha256"


def truncate(directory, filename):
  path = os.path.join(directory, filename)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  return filename, f"is {size // 2} bytes, {size} when written"


def delete(directory, filename):
  os.remove(os.path.join(directory, filename))
  return filename, "is missing"


def garble_checksums(directory):
  path = os.path.join(directory, nc.CHECKSUMS_FILE)
  text = open(path).read()
  at = text.index('"sha256": "') + len('"sha256": "')
  open(path, "w").write(text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1:])
  return nc.CHECKSUMS_FILE, "not a readable checksum list (its own sha256 does not match)"


DAMAGES = {
    "npy_two_bits": flip_two_bits,
    "npy_truncated": lambda d: truncate(d, PROMPT_FILE),
    "npy_deleted": lambda d: delete(d, ROUTER_FILE),
    "state_truncated": lambda d: truncate(d, nc.STATE_FILE),
    "state_deleted": lambda d: delete(d, nc.STATE_FILE),
    "checksums_garbled": garble_checksums,
    "checksums_truncated": lambda d: (truncate(d, nc.CHECKSUMS_FILE)[0],
                                      "not a readable checksum list"),
}


def test_save_writes_checksums_last_and_round_trips(tmp_path):
  directory = _save(tmp_path, 3)
  assert sorted(os.listdir(directory)) == sorted([PROMPT_FILE, ROUTER_FILE, nc.CHECKSUMS_FILE,
                                                  nc.STATE_FILE])
  written = {n: os.stat(os.path.join(directory, n)).st_mtime_ns for n in os.listdir(directory)}
  assert written[nc.CHECKSUMS_FILE] == max(written.values()), written  # the last one
  import hashlib, json  # pylint: disable=g-import-not-at-top,multiple-imports
  files = json.loads(open(os.path.join(directory, nc.CHECKSUMS_FILE)).read())["files"]
  assert sorted(files) == [PROMPT_FILE, ROUTER_FILE, nc.STATE_FILE]
  for name, entry in files.items():
    data = open(os.path.join(directory, name), "rb").read()
    assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
  assert nc.verify(directory) is None
  got = nc.load_params(directory, [PROMPT, ROUTER])
  np.testing.assert_array_equal(got["encoder"]["prompt"]["prompt"],
                                _params()["encoder"]["prompt"]["prompt"])
  assert nc.load_state(directory)["step"] == 3
  # Without a state (as tests and exports write), the state is simply absent.
  bare = nc.save(str(tmp_path / "bare"), 0, _params())
  assert nc.load_state(bare) is None and nc.verify(bare) is None


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damage_is_reported_with_the_file(damage, tmp_path):
  directory = _save(tmp_path, 4)
  filename, reason = DAMAGES[damage](directory)
  path = os.path.join(directory, filename)
  problem = nc.verify(directory)
  assert problem is not None and problem.startswith(path + " "), problem
  assert reason in problem and "\n" not in problem, problem
  # Loading the damaged file raises a CheckpointError (one line in pt-train and
  # pt-eval) naming it; intact files of the folder still load.
  loaders = {"params": lambda: nc.load_params(directory, [PROMPT, ROUTER]),
             "state": lambda: nc.load_state(directory)}
  hit = {"params": filename in (PROMPT_FILE, ROUTER_FILE, nc.CHECKSUMS_FILE),
         "state": filename in (nc.STATE_FILE, nc.CHECKSUMS_FILE)}
  for what, load in loaders.items():
    if hit[what]:
      with pytest.raises(nc.CheckpointDamagedError) as e:
        load()
      assert isinstance(e.value, t5x_checkpoints.CheckpointError)
      assert str(e.value) == problem
    else:
      load()


def test_single_file_check(tmp_path):
  directory = _save(tmp_path, 2)
  nc.check_file(os.path.join(directory, PROMPT_FILE))
  flip_two_bits(directory)
  with pytest.raises(nc.CheckpointDamagedError, match="does not match its sha256"):
    nc.check_file(os.path.join(directory, PROMPT_FILE))
  # A .npy with no checksums.json beside it (a released prompt) is not checked.
  loose = tmp_path / "prompt.npy"
  np.save(loose, np.zeros((2, 2), np.float32))
  nc.check_file(str(loose))


def test_parameter_the_checkpoint_never_had_is_not_damage(tmp_path):
  directory = _save(tmp_path, 2)
  with pytest.raises(t5x_checkpoints.CheckpointError, match="has no encoder.other.npy") as e:
    nc.load_params(directory, ["encoder/other"])
  assert not isinstance(e.value, nc.CheckpointDamagedError)
  assert PROMPT_FILE in str(e.value)


# A checkpoint folder without checksums.json (every version wrote one): its
# write never completed, or someone removed it. Never trusted: removing it must
# not switch damage detection off.


def _without_checksums(tmp_path, step=2):
  directory = _save(tmp_path, step)
  os.remove(os.path.join(directory, nc.CHECKSUMS_FILE))
  return directory


def test_folder_without_checksums_is_not_trusted(tmp_path):
  directory = _without_checksums(tmp_path)
  flip_two_bits(directory)
  problem = nc.verify(directory)
  assert problem == (f"{directory} has no {nc.CHECKSUMS_FILE} (its write never completed, or "
                     "the file was removed): its files cannot be checked, so it is not used")
  assert nc.verify(str(tmp_path / "nope")) == f"{tmp_path / 'nope'} does not exist"
  warnings = []
  assert nc.latest_intact_step(str(tmp_path), warnings.append) is None
  assert len(warnings) == 1 and f"no {nc.CHECKSUMS_FILE}" in warnings[0]
  assert not os.path.exists(directory)  # set aside for inspection, never resumed from


# Walking back to the newest intact checkpoint.


def test_latest_intact_step_sets_damaged_ones_aside(tmp_path):
  model_dir = str(tmp_path)
  for step in (0, 2, 4, 6):
    _save(model_dir, step, seed=step)
  assert nc.latest_intact_step(model_dir, warn=pytest.fail) == 6
  flip_two_bits(nc.checkpoint_dir(model_dir, 6))
  truncate(nc.checkpoint_dir(model_dir, 4), nc.STATE_FILE)
  damaged6 = helpers.snapshot(nc.checkpoint_dir(model_dir, 6))
  warnings = []
  assert nc.latest_intact_step(model_dir, warn=warnings.append) == 2
  assert nc.steps(model_dir) == [0, 2]
  base = os.path.join(model_dir, nc.DIRNAME)
  assert sorted(os.listdir(base)) == ["checkpoint_0", "checkpoint_2", "damaged_checkpoint_4",
                                      "damaged_checkpoint_6"]
  # Kept byte for byte for inspection.
  assert helpers.snapshot(os.path.join(base, "damaged_checkpoint_6")) == damaged6
  assert len(warnings) == 2 and all("\n" not in w for w in warnings)
  assert warnings[0].startswith("numpy checkpoint at step 6 is damaged: "
                                f"{nc.checkpoint_dir(model_dir, 6)}/{PROMPT_FILE} does not "
                                "match its sha256")
  assert f"moved {nc.checkpoint_dir(model_dir, 6)} to {base}/damaged_checkpoint_6" in warnings[0]
  assert f"{nc.STATE_FILE} is " in warnings[1] and "damaged_checkpoint_4" in warnings[1]
  # Kept by cleanup too, and a later damage of the same step gets a new name.
  nc.cleanup(model_dir, keep=1)
  _save(model_dir, 6, seed=1)
  delete(nc.checkpoint_dir(model_dir, 6), PROMPT_FILE)
  warnings.clear()
  assert nc.latest_intact_step(model_dir, warn=warnings.append) == 2
  assert "damaged_checkpoint_6.1" in warnings[0]
  assert sorted(os.listdir(base)) == ["checkpoint_0", "checkpoint_2", "damaged_checkpoint_4",
                                      "damaged_checkpoint_6", "damaged_checkpoint_6.1"]


def test_latest_intact_step_read_only(tmp_path):
  model_dir = str(tmp_path)
  for step in (0, 2):
    _save(model_dir, step)
  delete(nc.checkpoint_dir(model_dir, 2), ROUTER_FILE)
  before = helpers.snapshot(model_dir)
  warnings = []
  assert nc.latest_intact_step(model_dir, warn=warnings.append, move_aside=False) == 0
  assert helpers.snapshot(model_dir) == before
  assert len(warnings) == 1 and "left in place" in warnings[0] and ROUTER_FILE in warnings[0]
  delete(nc.checkpoint_dir(model_dir, 0), nc.STATE_FILE)
  assert nc.latest_intact_step(model_dir, warn=warnings.append, move_aside=False) is None
  assert nc.latest_intact_step(str(tmp_path / "empty")) is None


def test_latest_intact_step_warns_through_logging(tmp_path, caplog):
  _save(tmp_path, 0)
  _save(tmp_path, 1)
  flip_two_bits(nc.checkpoint_dir(str(tmp_path), 1))
  with caplog.at_level(logging.WARNING):
    assert nc.latest_intact_step(str(tmp_path)) == 0
  assert any("numpy checkpoint at step 1 is damaged" in r.getMessage() for r in caplog.records)


# pt-train and pt-eval on a run whose latest checkpoint is damaged.

COMMON = ["CHECKPOINT_PERIOD = 2", "EVAL_PERIOD = None", "LOG_PERIOD = 2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, frozen_ckpt):
  """(frozen checkpoint, a finished 4-step run, the prompt of an uninterrupted 6-step run)."""
  root = tmp_path_factory.mktemp("damaged")
  ckpt = frozen_ckpt
  common = COMMON + [f"INITIAL_CHECKPOINT_PATH = '{ckpt}'"]
  helpers.train_in_process(root / "four", common + ["TRAIN_STEPS = 4"])
  six = helpers.train_in_process(root / "six", common + ["TRAIN_STEPS = 6"])
  assert nc.steps(str(root / "four")) == [0, 2, 4]
  return ckpt, root / "four", root / "six", six


def _copy_run(runs, tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(runs[1], model_dir)
  return model_dir


@pytest.mark.parametrize("damage", ["npy_two_bits", "state_truncated"])
def test_pt_train_resumes_from_newest_intact(damage, runs, tmp_path, caplog):
  ckpt, _, six_dir, six = runs
  model_dir = _copy_run(runs, tmp_path)
  latest = nc.checkpoint_dir(str(model_dir), 4)
  filename, _ = DAMAGES[damage](latest)
  damaged = helpers.snapshot(latest)
  with caplog.at_level(logging.WARNING):
    final = helpers.train_in_process(
        model_dir, COMMON + [f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", "TRAIN_STEPS = 6"])
  warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  aside = model_dir / nc.DIRNAME / "damaged_checkpoint_4"
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith(f"numpy checkpoint at step 4 is damaged: {latest}/{filename} ")
  assert f"to {aside} " in warnings[0], warnings[0]
  assert helpers.snapshot(aside) == damaged
  # Resumed from step 2: checkpoint_4 is written again, as the uninterrupted run's.
  assert nc.steps(str(model_dir)) == [0, 2, 4, 6]
  for step in (4, 6):
    np.testing.assert_array_equal(
        np.load(os.path.join(nc.checkpoint_dir(str(model_dir), step), PROMPT_FILE)),
        np.load(os.path.join(nc.checkpoint_dir(str(six_dir), step), PROMPT_FILE)))
  np.testing.assert_array_equal(final["encoder"]["prompt"]["prompt"],
                                six["encoder"]["prompt"]["prompt"])


def _abstract_trainable():
  return {"encoder": {"prompt": {"prompt": np.zeros((6, 32), np.float32)}}}


def test_pt_eval_damaged_checkpoint_folder_is_one_line(runs, tmp_path):
  ckpt = runs[0]
  model_dir = _copy_run(runs, tmp_path)
  latest = nc.checkpoint_dir(str(model_dir), 4)
  flip_two_bits(latest)
  before = helpers.snapshot(model_dir)
  bindings = helpers.TINY_BINDINGS + [f"CHECKPOINT_PATH = '{ckpt}'", f"PROMPT_FILE = '{latest}'",
                                      f"EVAL_OUTPUT_DIR = '{tmp_path / 'eval'}'"]
  result = helpers.run_cli_here("pt-eval", ["--gin_file=" + f for f in helpers.TINY_FILES]
                           + ["--gin_file=runs/prompt_eval.gin"] + helpers.as_flags(bindings))
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("pt-eval: error:")]
  assert lines == [f"pt-eval: error: {latest}/{PROMPT_FILE} does not match its sha256 in "
                   f"{nc.CHECKSUMS_FILE} (its bytes changed after it was written)"], lines
  assert helpers.snapshot(model_dir) == before


def test_pt_eval_damaged_npy_beside_checksums(runs, tmp_path):
  latest = nc.checkpoint_dir(str(_copy_run(runs, tmp_path)), 4)
  flip_two_bits(latest)
  with pytest.raises(nc.CheckpointDamagedError, match=f"{PROMPT_FILE} does not match"):
    trained.load_trainable(_abstract_trainable(), os.path.join(latest, PROMPT_FILE), None)


def test_pt_eval_model_dir_uses_newest_intact_and_moves_nothing(runs, tmp_path, caplog):
  model_dir = _copy_run(runs, tmp_path)
  truncate(nc.checkpoint_dir(str(model_dir), 4), PROMPT_FILE)
  before = helpers.snapshot(model_dir)
  with caplog.at_level(logging.WARNING):
    params, step, source = trained.load_trainable(_abstract_trainable(), None, str(model_dir))
  assert (step, source) == (2, nc.checkpoint_dir(str(model_dir), 2))
  np.testing.assert_array_equal(
      params["encoder"]["prompt"]["prompt"],
      np.load(os.path.join(nc.checkpoint_dir(str(model_dir), 2), PROMPT_FILE)))
  assert any("at step 4 is damaged" in r.getMessage() and "left in place" in r.getMessage()
             for r in caplog.records)
  assert helpers.snapshot(model_dir) == before
