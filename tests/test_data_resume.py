"""Resume restores the data position saved with each checkpoint (the tf.data
iterator state, `train_ds-*` files) instead of replaying the stream, and stays
exact: the same batches, a bit-identical prompt. Checkpoints without a usable
data state (older versions, another data layout) resume by replay; a damaged
data state makes its checkpoint damaged like any other file."""
import json
import logging
import shutil

import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning import data
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.training import data_state

import helpers  # pylint: disable=g-bad-import-order

COMMON = ["CHECKPOINT_PERIOD = 2", "EVAL_PERIOD = None", "LOG_PERIOD = 1", "DROPOUT_RATE = 0.1",
          "TRAIN_STEPS = 6"]
PROMPT = "encoder.prompt.prompt.npy"
DATA_FILES = ["train_ds-000-of-001.data-00000-of-00001", "train_ds-000-of-001.index"]


def _recording(batches):
  """A TrainIterator.__next__ that also appends each batch to `batches`."""
  original = data_state.TrainIterator.__next__

  def record(self):
    batch = original(self)
    batches.append(batch)
    return batch

  return record


def _train(model_dir, frozen, *bindings, batches=None):
  with pytest.MonkeyPatch.context() as mp:
    if batches is not None:
      mp.setattr(data_state.TrainIterator, "__next__", _recording(batches))
    helpers.train_in_process(model_dir, [f"INITIAL_CHECKPOINT_PATH = '{frozen}'", *COMMON,
                                         *bindings])


def _prompt(model_dir, step=6):
  return np.load(model_dir / f"numpy_checkpoints/checkpoint_{step}/{PROMPT}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, frozen_ckpt):
  """An uninterrupted 6-step run (its batches recorded) and a run killed after
  step 5 (checkpoints 0, 2, 4) to copy and resume."""
  root = tmp_path_factory.mktemp("data_resume")
  frozen = frozen_ckpt
  batches = []
  _train(root / "full", frozen, batches=batches)
  _train(root / "killed", frozen, "train.stop_after_step = 5")
  assert numpy_checkpoints.steps(str(root / "killed")) == [0, 2, 4]
  return root, frozen, batches


def _copy(runs, tmp_path):
  root, _, _ = runs
  shutil.copytree(root / "killed", tmp_path / "run")
  return tmp_path / "run"


def _assert_same_batches(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert sorted(g) == sorted(w)
    for k in w:
      assert g[k].dtype == w[k].dtype
      np.testing.assert_array_equal(g[k], w[k])


@pytest.fixture
def no_replay(monkeypatch):
  """Fails the test if the data stream is replayed (skipped forward)."""
  def refuse(*args, **kwargs):
    raise AssertionError("the data stream was replayed")
  monkeypatch.setattr(data_state.TrainIterator, "advance", refuse)
  monkeypatch.setattr(tf.data.Dataset, "skip", refuse)


def test_checkpoints_hold_the_data_state_under_their_checksums(runs):
  root, _, _ = runs
  ckpt = root / "killed/numpy_checkpoints"
  assert not any(data_state.is_state_file(f.name) for f in (ckpt / "checkpoint_0").iterdir())
  for step in (2, 4):
    listed = json.loads((ckpt / f"checkpoint_{step}" / "checksums.json").read_text())["files"]
    for name in DATA_FILES:
      assert name in listed and (ckpt / f"checkpoint_{step}" / name).stat().st_size > 0
    state = numpy_checkpoints.load_state(str(ckpt / f"checkpoint_{step}"))
    assert state["data_layout"] == "1:0-0"


def test_resume_restores_the_data_position_without_replay(runs, tmp_path, no_replay):
  root, frozen, full_batches = runs
  run = _copy(runs, tmp_path)
  batches = []
  _train(run, frozen, batches=batches)
  _assert_same_batches(batches, full_batches[4:])
  np.testing.assert_array_equal(_prompt(run), _prompt(root / "full"))
  for name in DATA_FILES:  # the resumed run saves its data state too
    assert (run / "numpy_checkpoints/checkpoint_6" / name).exists()


def test_damaged_data_state_damages_its_checkpoint(runs, tmp_path, no_replay, caplog):
  root, frozen, full_batches = runs
  run = _copy(runs, tmp_path)
  damaged = run / "numpy_checkpoints/checkpoint_4" / DATA_FILES[0]
  content = bytearray(damaged.read_bytes())
  content[len(content) // 2] ^= 0xFF
  damaged.chmod(0o644)
  damaged.write_bytes(bytes(content))
  batches = []
  with caplog.at_level(logging.WARNING):
    _train(run, frozen, batches=batches)
  assert any("checkpoint at step 4 is damaged" in r.getMessage() and DATA_FILES[0] in
             r.getMessage() for r in caplog.records), caplog.text
  assert (run / "numpy_checkpoints/damaged_checkpoint_4").is_dir()
  # Resumed from step 2, from its data state.
  _assert_same_batches(batches, full_batches[2:])
  np.testing.assert_array_equal(_prompt(run), _prompt(root / "full"))


def _rewrite_checkpoint(run, step, change_state=None, drop_data=False):
  """Rewrites checkpoint_{step} as `save` would have, with its state changed
  and / or without its data state (as an older version wrote it)."""
  directory = numpy_checkpoints.checkpoint_dir(str(run), step)
  params = {"encoder": {"prompt": {"prompt": np.load(f"{directory}/{PROMPT}")}}}
  state = numpy_checkpoints.load_state(directory)
  files = numpy_checkpoints.load_files(directory, "train_ds-000-of-001")
  if change_state:
    change_state(state)
  numpy_checkpoints.save(str(run), step, params, state, extra_files=None if drop_data else files)


def _replayed(monkeypatch):
  calls = []
  original = data_state.TrainIterator.advance

  def advance(self, steps):
    calls.append(steps)
    return original(self, steps)

  monkeypatch.setattr(data_state.TrainIterator, "advance", advance)
  return calls


def test_old_checkpoint_without_data_state_resumes_by_replay(runs, tmp_path, monkeypatch,
                                                             caplog):
  root, frozen, full_batches = runs
  run = _copy(runs, tmp_path)

  def old(state):
    del state["data_layout"]

  _rewrite_checkpoint(run, 4, old, drop_data=True)
  assert not any(data_state.is_state_file(f.name)
                 for f in (run / "numpy_checkpoints/checkpoint_4").iterdir())
  calls = _replayed(monkeypatch)
  batches = []
  with caplog.at_level(logging.WARNING):
    _train(run, frozen, batches=batches)
  assert calls == [4]
  assert "holds no data state" in caplog.text and "replaying the data stream" in caplog.text
  _assert_same_batches(batches, full_batches[4:])
  np.testing.assert_array_equal(_prompt(run), _prompt(root / "full"))


def test_data_state_of_another_layout_is_replayed_not_restored(runs, tmp_path, monkeypatch,
                                                               caplog):
  """A saved state of other data shards (NUM_PARTITIONS, devices or hosts
  changed) does not fit this process's pipeline: replay, with a warning."""
  root, frozen, full_batches = runs
  run = _copy(runs, tmp_path)

  def other_layout(state):
    state["data_layout"] = "2:0-0,1-1"

  _rewrite_checkpoint(run, 4, other_layout)
  calls = _replayed(monkeypatch)
  batches = []
  with caplog.at_level(logging.WARNING):
    _train(run, frozen, batches=batches)
  assert calls == [4]
  assert "another data layout" in caplog.text
  _assert_same_batches(batches, full_batches[4:])
  np.testing.assert_array_equal(_prompt(run), _prompt(root / "full"))


# ------------------------------------------------------------------ unit


def _demo_ds():
  return data.get_dataset("demo_last_word", {"inputs": 32, "targets": 8}, "train", 8, seed=5)


def test_iterator_yields_what_as_numpy_iterator_yields_and_restores_across_epochs():
  import prompt_tuning.tasks.demo  # pylint: disable=g-import-not-at-top,unused-import
  # 4096 examples: 512 batches per epoch; save inside the 2nd epoch.
  want = list(_demo_ds().take(530).as_numpy_iterator())
  ds = _demo_ds()
  it = data_state.TrainIterator(ds)
  got = [next(it) for _ in range(520)]
  _assert_same_batches(got, want[:520])
  files = it.state_files("train_ds-000-of-001")
  assert sorted(files) == DATA_FILES
  ds2 = _demo_ds()
  data_state.TrainIterator(ds2)  # an extra iterator draws other shuffle seeds...
  restored = data_state.TrainIterator(ds2)
  assert restored.restore("train_ds-000-of-001", files) is None
  # ... which the restored state overrides.
  _assert_same_batches([next(restored) for _ in range(10)], want[520:])


def test_pipeline_that_cannot_be_checkpointed_warns_once(caplog):
  ds = tf.data.Dataset.from_generator(lambda: iter(range(100)),
                                      output_signature=tf.TensorSpec([], tf.int64)).batch(2)
  it = data_state.TrainIterator(ds)
  next(it)
  with caplog.at_level(logging.WARNING):
    assert it.state_files("train_ds-000-of-001") is None
    assert it.state_files("train_ds-000-of-001") is None
  assert caplog.text.count("cannot be checkpointed") == 1
  assert it.advance(3) == 3 and int(next(it)[0]) == 8


def test_state_that_does_not_fit_the_pipeline_is_refused_not_raised():
  it = data_state.TrainIterator(tf.data.Dataset.range(10).batch(2))
  next(it)
  files = it.state_files("train_ds-000-of-001")
  other = data_state.TrainIterator(tf.data.Dataset.range(10).map(lambda x: (x, x)).shuffle(4))
  why = other.restore("train_ds-000-of-001", files)
  assert why is not None and "does not fit" in why
