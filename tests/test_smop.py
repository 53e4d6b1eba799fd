"""SMoP: routing on hand-made inputs, gradients, equivalence with plain prompt
tuning for k=1, and a run that trains, checkpoints, resumes and evaluates."""
import json
import shutil

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import configurables  # pylint: disable=unused-import  (gin names)
from prompt_tuning.evaluation import job as eval_job
from prompt_tuning import gin_utils
from prompt_tuning.methods import smop
from prompt_tuning.model import weights
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.training import step as train_step
from prompt_tuning.training import trainer

import helpers  # pylint: disable=g-bad-import-order

SMOP_FILES = helpers.TINY_FILES + ["prompts/smop.gin"]


# The tiny test model with one layer per stack (fast to compile).
SMALL = ["DROPOUT_RATE = 0.0", "NUM_ENCODER_LAYERS = 1", "NUM_DECODER_LAYERS = 1"]


@gin.configurable("smop_test_model")
def _configured_model(model=gin.REQUIRED):
  return model


def build_smop_model(bindings=()):
  gin.clear_config()
  gin_utils.parse(SMOP_FILES, helpers.MODEL_BINDINGS + SMALL + list(bindings)
                  + ["smop_test_model.model = %MODEL"])
  try:
    return _configured_model()
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def plain():
  """(plain prompt model, its params, its frozen params): the frozen part fits SMoP too."""
  model = helpers.build_model(SMALL)
  params = weights.init_random(model, jax.random.PRNGKey(0), weights.dummy_batch(1, 8, 4))
  return model, params, trees.split(params, trainer.DEFAULT_TRAINABLE)[1]


def smop_params(model, frozen, seed=0):
  trainable = weights.init_trainable(model, jax.random.PRNGKey(seed),
                                          weights.dummy_batch(1, 8, 4),
                                          trainer.DEFAULT_TRAINABLE)
  return trainable, trees.merge(trainable, frozen)


def tokens_batch(seed=0, batch_size=4):
  rng = np.random.RandomState(seed)
  inputs = rng.randint(3, 300, (batch_size, 12)).astype(np.int32)
  inputs[:, 9:] = 0  # padding
  targets = rng.randint(3, 300, (batch_size, 4)).astype(np.int32)
  return {"encoder_input_tokens": jnp.asarray(inputs),
          "decoder_input_tokens": jnp.asarray(np.concatenate(
              [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], 1)),
          "decoder_target_tokens": jnp.asarray(targets)}


# ---------------------------------------------------------------- the module


def hand_made():
  """3 prompts of 2 tokens (d=2); example 0 has a padded position that, were it
  counted, would send it to prompt 1 instead of prompt 0."""
  params = {"prompt": jnp.arange(12, dtype=jnp.float32).reshape(3, 2, 2) + 1.0,
            "router": {"kernel": jnp.asarray([[1.0, 0.0, 0.5], [0.0, 2.0, 0.0]])}}
  embedded = jnp.asarray([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]],
                          [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
  mask = jnp.asarray([[True, True, False], [True, True, True]])
  tokens = jnp.asarray([[5, 6, 0], [7, 8, 9]])
  return params, tokens, embedded, mask


def test_top1_routing_and_probability_scaling():
  module = smop.SMoP(num_prompts=3, length=2, init=nn.initializers.zeros)
  params, tokens, embedded, mask = hand_made()
  (out, out_mask), state = module.apply({"params": params}, tokens, embedded, mask,
                                        mutable=["intermediates"])
  # Mean of the real positions: (2, 0) and (0, 1) -> logits (2, 0, 1) and (0, 2, 0).
  probs = [jax.nn.softmax(jnp.asarray([2.0, 0.0, 1.0]))[0],
           jax.nn.softmax(jnp.asarray([0.0, 2.0, 0.0]))[1]]
  for b, (chosen, p) in enumerate(zip([0, 1], probs)):
    np.testing.assert_allclose(out[b, :2], params["prompt"][chosen] * p, rtol=1e-6)
    np.testing.assert_array_equal(out[b, 2:], embedded[b])
  np.testing.assert_array_equal(out_mask, [[True, True, True, True, False], [True] * 5])
  sown = state["intermediates"]
  np.testing.assert_array_equal(sown["routing_index"][0], [0, 1])
  np.testing.assert_array_equal(sown["routing_fraction"][0], [0.5, 0.5, 0.0])
  assert train_step.intermediate_metrics(state["intermediates"]) == {
      "routing/prompt_0": 0.5, "routing/prompt_1": 0.5, "routing/prompt_2": 0.0}
  # Evaluation is deterministic; training without noise is seqio_eval.
  again = module.apply({"params": params}, tokens, embedded, mask)[0]
  np.testing.assert_array_equal(again, out)
  quiet = smop.SMoP(num_prompts=3, length=2, init=nn.initializers.zeros, noise_std=0.0)
  train = quiet.apply({"params": params}, tokens, embedded, mask, deterministic=False)[0]
  np.testing.assert_array_equal(train, out)


def test_noise_is_multiplicative_without_gradient_through_its_scale():
  x = jnp.asarray([[1.0, -2.0, 3.0]])
  rng = jax.random.PRNGKey(3)
  eps = jax.random.normal(rng, x.shape)
  np.testing.assert_allclose(smop.add_noise(x, rng, 0.5), x + 0.5 * x * eps, rtol=1e-6)
  grad = jax.grad(lambda v: jnp.sum(smop.add_noise(v, rng, 0.5)))(x)
  np.testing.assert_array_equal(grad, np.ones_like(x))


def test_training_noise_changes_routing():
  module = smop.SMoP(num_prompts=4, length=2, init=nn.initializers.normal(1.0))
  embedded = jax.random.normal(jax.random.PRNGKey(0), (64, 5, 8))
  mask = jnp.ones((64, 5), bool)
  tokens = jnp.ones((64, 5), jnp.int32)
  variables = nn.Module.init(module, jax.random.PRNGKey(1), tokens, embedded, mask)
  route = lambda **kw: module.apply(variables, tokens, embedded, mask, mutable=["intermediates"],
                                    **kw)[1]["intermediates"]["routing_index"][0]
  evaluated = route()
  noisy = [route(deterministic=False, rngs={"dropout": jax.random.PRNGKey(s)}) for s in (1, 2)]
  assert np.any(noisy[0] != evaluated) and np.any(noisy[0] != noisy[1])
  np.testing.assert_array_equal(  # the noise is a function of the dropout rng
      noisy[0], route(deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)}))


def test_gradients_reach_the_router_and_the_chosen_prompts_only():
  module = smop.SMoP(num_prompts=3, length=2, init=nn.initializers.zeros)
  params, tokens, embedded, mask = hand_made()
  target = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 2))
  grads = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, tokens, embedded, mask)[0]
                                     * target))(params)
  assert np.abs(grads["prompt"][0]).min() > 0 and np.abs(grads["prompt"][1]).min() > 0
  np.testing.assert_array_equal(grads["prompt"][2], 0.0)  # not chosen
  assert np.abs(grads["router"]["kernel"]).max() > 0


def test_model_gradients_and_sown_routing(plain):
  model = build_smop_model()
  trainable, _ = smop_params(model, plain[2])
  assert trees.shapes(trainable) == {"encoder/prompt/prompt": (4, 6, 32),
                                           "encoder/prompt/router/kernel": (32, 4)}
  batch = tokens_batch(batch_size=2)
  (_, (_, sown)), grads = jax.jit(jax.value_and_grad(
      lambda tr: model.loss_fn(trees.merge(tr, plain[2]), batch, jax.random.PRNGKey(1)),
      has_aux=True))(trainable)
  chosen = set(np.asarray(sown["encoder"]["prompt"]["routing_index"][0]).tolist())
  grad = trees.flatten(grads)
  for i in range(4):
    assert (np.abs(grad["encoder/prompt/prompt"][i]).max() > 0) == (i in chosen)
  assert np.abs(grad["encoder/prompt/router/kernel"]).max() > 0
  metrics = train_step.intermediate_metrics(sown)
  assert sorted(metrics) == [f"routing/prompt_{i}" for i in range(4)]
  assert float(sum(metrics.values())) == pytest.approx(1.0)


def test_one_prompt_is_plain_prompt_tuning(plain):
  plain_model, params, frozen = plain
  mixture = build_smop_model(["SMOP_NUM_PROMPTS = 1"])
  prompt = params["encoder"]["prompt"]["prompt"]
  router = jax.random.normal(jax.random.PRNGKey(2), (32, 1))
  single = trees.merge({"encoder": {"prompt": {"prompt": prompt[None],
                                                     "router": {"kernel": router}}}}, frozen)
  batch = tokens_batch()

  def losses(model, p):  # evaluation, and training (with router noise)
    return jax.jit(lambda p: (model.loss_fn(p, batch)[0],
                              model.loss_fn(p, batch, jax.random.PRNGKey(5))[0]))(p)

  np.testing.assert_allclose(losses(mixture, single), losses(plain_model, params), rtol=1e-6)


def test_routing_fractions_skip_padding_rows(plain):
  model = build_smop_model()
  _, params = smop_params(model, plain[2])
  batch = tokens_batch(batch_size=8)
  index = np.asarray(smop.routing_index(model.module, params, batch["encoder_input_tokens"]))
  # Two batches: all 8 rows, then a padded one whose first 3 rows are real
  # (index -1 marks padding, as seqio_eval.batches yields it).
  padded_index = np.array([0, 1, 2, -1, -1, -1, -1, -1])
  got = smop.routing_fractions(model, params, [batch, (padded_index, batch)])
  want = np.bincount(np.concatenate([index, index[:3]]), minlength=4) / 11
  np.testing.assert_allclose(got, want)
  assert smop.routing_metrics(got)["routing/prompt_0"] == pytest.approx(want[0])


# ---------------------------------------------------------------- end to end


def test_smop_trains_checkpoints_resumes_and_evaluates(tmp_path):
  model = helpers.build_model(SMALL)
  frozen = trees.split(weights.init_random(
      model, jax.random.PRNGKey(0), weights.dummy_batch(1, 8, 4)), ["encoder/prompt/.*"])[1]
  frozen_ckpt = t5x_checkpoints.save_checkpoint(str(tmp_path / "frozen"), jax.device_get(frozen), 0)
  files = ("prompts/smop.gin", "prompts/sampled_vocab.gin", "runs/prompt_finetune.gin")
  common = SMALL + [f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'", "CHECKPOINT_PERIOD = 2",
                    "EVAL_PERIOD = None", "LOG_PERIOD = 1", "DROPOUT_RATE = 0.1", "TRAIN_STEPS = 4"]
  full = tmp_path / "run"
  helpers.train_in_process(full, common, files)
  names = ["encoder.prompt.prompt.npy", "encoder.prompt.router.kernel.npy"]
  last = full / "numpy_checkpoints" / "checkpoint_4"
  want = {name: np.load(last / name) for name in names}
  # Resuming from checkpoint_2 (as after a kill at step 3) redoes steps 3-4 exactly.
  shutil.rmtree(last)
  helpers.train_in_process(full, common, files)
  for name in names:
    np.testing.assert_array_equal(np.load(last / name), want[name])
  initial = np.load(full / "numpy_checkpoints" / "checkpoint_0" / names[0])
  final = np.load(full / "numpy_checkpoints" / "checkpoint_4" / names[0])
  assert initial.shape == (4, 6, 32) and not np.array_equal(initial, final)
  # The initial prompts are rows of the frozen embedding table (sampled vocab).
  table = t5x_checkpoints.load_params(frozen_ckpt, ["token_embedder/embedding"])
  table = np.asarray(table["token_embedder"]["embedding"], np.float32)
  for row in initial.reshape(-1, 32):
    assert np.any(np.all(table == row, axis=-1))
  router = np.load(full / "numpy_checkpoints" / "checkpoint_0" / names[1])
  np.testing.assert_allclose(router.T @ router, np.eye(4), atol=1e-5)  # orthogonal init

  # pt-eval loads both parameters from MODEL_DIR and reports the routing.
  gin.clear_config()
  gin_utils.parse(helpers.TINY_FILES + ["prompts/smop.gin", "prompts/sampled_vocab.gin",
                                        "runs/prompt_eval.gin"],
                  helpers.TINY_BINDINGS + SMALL + [f"MODEL_DIR = '{full}'",
                                           f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'",
                                           f"EVAL_OUTPUT_DIR = '{tmp_path / 'eval'}'"])
  try:
    result = eval_job.evaluate()
  finally:
    gin.clear_config()
  metrics = result["demo_last_word"]
  fractions = [metrics[f"routing/prompt_{i}"] for i in range(4)]
  assert "accuracy" in metrics and sum(fractions) == pytest.approx(1.0)
  lines = (tmp_path / "eval" / "demo_last_word-metrics.jsonl").read_text().splitlines()
  logged = json.loads(lines[-1])
  assert len(lines) == 1 and logged["step"] == 4 and "accuracy" in logged
  assert [logged[f"routing/prompt_{i}"] for i in range(4)] == pytest.approx(fractions)
