"""Training: only the prompt changes, the loss falls, resume is exact."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import data
from prompt_tuning.model import weights
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.training import optimizers
from prompt_tuning.training import step as train_step
from prompt_tuning.training import trainer

import conftest  # pylint: disable=g-bad-import-order
import helpers  # pylint: disable=g-bad-import-order


def _pretrain(folder):
  """The demo's frozen model after 300 steps of full training (its
  `demo.pretrain`, through the demo command), with XLA's default flags: 300
  steps run faster optimised than they compile."""
  env = dict(os.environ, **conftest.DEFAULT_XLA_ENV)
  result = subprocess.run([sys.executable, "-m", "prompt_tuning.demo", "pretrain",
                           f"--out={folder}", "--steps=300"], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]


def test_only_prompt_changes_and_loss_falls(tmp_path_factory):
  """On a frozen model that knows 'last:', a prompt learns to replace it."""
  from prompt_tuning.storage import t5x_checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning import demo  # pylint: disable=g-import-not-at-top
  import prompt_tuning.tasks.demo  # pylint: disable=g-import-not-at-top,unused-import
  model = demo.demo_model()
  folder = conftest.shared_dir(tmp_path_factory, "demo_pretrained_300", _pretrain)
  frozen = jax.tree_util.tree_map(jnp.asarray,
                                  t5x_checkpoints.load_params(folder / "checkpoint_300"))
  ds = data.get_dataset("demo_last_word", {"inputs": 32, "targets": 8}, "train", 32, seed=0)
  batches = list(ds.take(60).as_numpy_iterator())
  shapes = {k: jnp.asarray(v[:1]) for k, v in batches[0].items()}
  trainable = weights.init_trainable(model, jax.random.PRNGKey(0), shapes,
                                          trainer.DEFAULT_TRAINABLE)
  assert list(trees.flatten(trainable)) == ["encoder/prompt/prompt"]
  frozen_before = jax.tree_util.tree_map(np.array, frozen)
  tx = optimizers.adafactor()
  opt_state = tx.init(trainable)
  # Optimizer state exists for the prompt only.
  assert max(leaf.size for leaf in jax.tree_util.tree_leaves(opt_state)) == 10 * 64
  step = jax.jit(train_step.make_train_step(model, tx))
  losses = []
  for i, batch in enumerate(batches):
    trainable, opt_state, metrics = step(trainable, opt_state, frozen, batch, jnp.int32(i),
                                         jax.random.PRNGKey(1))
    losses.append(float(metrics["cross_ent_loss_per_token"]))
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses
  for name, before in trees.flatten(frozen_before).items():
    np.testing.assert_array_equal(np.asarray(trees.flatten(frozen)[name]), before)


def test_frozen_weights_get_no_gradient_computation():
  """The jitted step's gradient output covers exactly the trainable subtree."""
  model = helpers.build_model(["DROPOUT_RATE = 0.0"])
  batch = weights.dummy_batch(2, 8, 4)
  params = weights.init_random(model, jax.random.PRNGKey(0), batch)
  trainable, frozen = trees.split(params, trainer.DEFAULT_TRAINABLE)
  grads = jax.jit(jax.grad(lambda tr: model.loss_fn(trees.merge(tr, frozen), batch)[0]))(
      trainable)
  assert trees.shapes(grads) == {"encoder/prompt/prompt": (6, 32)}
  assert float(optax.global_norm(grads)) > 0


def _final_prompt(model_dir):
  step = numpy_checkpoints.latest_step(model_dir)
  return np.load(f"{model_dir}/numpy_checkpoints/checkpoint_{step}/encoder.prompt.prompt.npy"), step


def test_kill_and_resume_is_exact(tmp_path, frozen_ckpt):
  common = [f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'", "CHECKPOINT_PERIOD = 2",
            "EVAL_PERIOD = None", "LOG_PERIOD = 1", "DROPOUT_RATE = 0.1"]
  full = tmp_path / "full"
  helpers.train_in_process(full, common + ["TRAIN_STEPS = 8"])
  # A run killed after step 5: its last complete checkpoint is step 4, and a
  # half-written checkpoint folder lies around.
  killed = tmp_path / "killed"
  helpers.train_in_process(killed, common + ["TRAIN_STEPS = 8", "train.stop_after_step = 5"])
  assert numpy_checkpoints.latest_step(str(killed)) == 4
  (killed / "numpy_checkpoints" / "checkpoint_6.tmp-deadbeef").mkdir()
  helpers.train_in_process(killed, common + ["TRAIN_STEPS = 8"])
  want, step = _final_prompt(str(full))
  got, got_step = _final_prompt(str(killed))
  assert step == got_step == 8
  np.testing.assert_array_equal(got, want)
  assert not list((killed / "numpy_checkpoints").glob("*.tmp-*"))
  # Step 0 holds the initial prompt, and the prompt moved since.
  initial = np.load(killed / "numpy_checkpoints/checkpoint_0/encoder.prompt.prompt.npy")
  assert initial.shape == (6, 32) and np.abs(initial).max() <= 0.5
  assert np.abs(initial - got).max() > 1e-3


def test_longer_train_steps_continue(tmp_path, frozen_ckpt):
  common = [f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'", "CHECKPOINT_PERIOD = 3",
            "EVAL_PERIOD = None", "LOG_PERIOD = 4"]
  once, twice = tmp_path / "once", tmp_path / "twice"
  helpers.train_in_process(once, common + ["TRAIN_STEPS = 8"])
  helpers.train_in_process(twice, common + ["TRAIN_STEPS = 4"])
  helpers.train_in_process(twice, common + ["TRAIN_STEPS = 8"])
  np.testing.assert_array_equal(_final_prompt(str(twice))[0], _final_prompt(str(once))[0])
  assert numpy_checkpoints.steps(str(twice)) == [0, 3, 4, 6, 8]


def test_keep_checkpoints(tmp_path, frozen_ckpt):
  helpers.train_in_process(tmp_path, [f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'",
                                      "CHECKPOINT_PERIOD = 1", "KEEP_CHECKPOINTS = 2",
                                      "EVAL_PERIOD = None", "TRAIN_STEPS = 5"])
  assert numpy_checkpoints.steps(str(tmp_path)) == [0, 4, 5]
  assert (tmp_path / "config.gin").read_text().count("PROMPT_LENGTH") >= 1


def test_nan_loss_stops_with_clear_error(tmp_path, frozen_ckpt):
  """A diverged step stops the run with one message naming it, whether it is
  checked at once (it checkpoints) or after the next step is dispatched (the
  loop does not wait for every step): the same step, and no checkpoint of it."""
  steps = []
  for name, periods in (("every", ["CHECKPOINT_PERIOD = 1", "LOG_PERIOD = 1"]),
                        ("deferred", ["CHECKPOINT_PERIOD = 1000", "LOG_PERIOD = 1000"])):
    model_dir = tmp_path / name
    with pytest.raises(trainer.TrainError,
                       match=(r"(loss is (nan|inf)|the updated prompt is not finite) at step "
                              r"\d+.*checkpoints up to step \d+ are intact")) as e:
      helpers.train_in_process(model_dir, [f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'",
                                           "EVAL_PERIOD = None", "TRAIN_STEPS = 20", *periods,
                                           "optimizers.adafactor.learning_rate = 1e30",
                                           "optimizers.adafactor.weight_decay_rate = 1e30"])
    steps.append(int(str(e.value).split(" at step ")[1].split(":")[0]))
    # The checkpoints written before the divergence are complete and finite.
    written = numpy_checkpoints.steps(str(model_dir))
    assert written and max(written) < steps[-1], (written, steps)
    for step in written:
      prompt = np.load(model_dir / f"numpy_checkpoints/checkpoint_{step}/encoder.prompt.prompt.npy")
      assert np.all(np.isfinite(prompt))
  assert steps[0] == steps[1] < 20, steps
