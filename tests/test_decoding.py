"""Greedy decoding with a key/value cache (the default) gives the tokens, and
the logits to 1e-5, of the uncached path (the decoder re-run over the whole
sequence each step), for every prompt and parameter-efficient method, under
the ensembles' vmap, and on the real tiny T5X checkpoint."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers  # pylint: disable=g-bad-import-order
from prompt_tuning import methods
from prompt_tuning.methods import multiprompt
from prompt_tuning.methods import prompts
from prompt_tuning.methods import smop
from prompt_tuning.model import encoder_decoder
from prompt_tuning.model import layers
from prompt_tuning.model import t5
from prompt_tuning.model import weights
from prompt_tuning.storage import trees

TINY = helpers.tiny_config()
PROMPT = prompts.Prompt(length=3, init=nn.initializers.normal(1.0))
B, L, STEPS = 4, 7, 12


def _model(prompt=PROMPT, sites=layers.IDENTITY, config=TINY):
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(config, prompt=prompt, sites=sites))


def _params(model, seed=0):
  """Random parameters, every one perturbed, with EOS made likely enough to end
  some rows early."""
  return helpers.perturbed_params(model, L, 4, scale=0.3, seed=seed, noise_seed=seed)


def _batch(seed=0, vocab=TINY.vocab_size):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab, (B, L)).astype(np.int32)
  tokens[1, 4:] = 0  # a padded row
  return jnp.asarray(tokens)


def _both(model, params, tokens, length=STEPS, done=None):
  """(uncached, cached) of greedy_decode with logits."""
  def run(cached):
    @jax.jit
    def fn(params, tokens):
      encoded, mask = model.encode(params, tokens)
      return model.greedy_decode(params, encoded, mask, length, done, cached=cached,
                                 return_logits=True)
    return jax.device_get(fn(params, tokens))
  return run(False), run(True)


def _assert_same(uncached, cached):
  """Same tokens; scores and logits equal up to float32 rounding (the two
  paths multiply matrices of different shapes, so XLA sums in another order):
  3e-5 of the logits' scale."""
  np.testing.assert_array_equal(cached[0], uncached[0])
  scale = max(1.0, float(np.max(np.abs(uncached[2]))))
  np.testing.assert_allclose(cached[1], uncached[1], atol=3e-5 * scale * cached[0].shape[1])
  np.testing.assert_allclose(cached[2], uncached[2], atol=3e-5 * scale, rtol=0)


SITES = {
    "plain_prompt": (PROMPT, layers.IDENTITY),
    "no_prompt": (None, layers.IDENTITY),
    "lora_all": (None, methods.Methods(lora=methods.LoRAMethod(
        rank=2, targets=("query", "key", "value", "out", "wi", "wo")))),
    "prefix": (None, methods.Methods(prefix_tuning=methods.PrefixMethod(length=3, emb_dim=32))),
    "prefix_mlp": (None, methods.Methods(prefix_tuning=methods.PrefixMethod(
        length=2, emb_dim=32, hidden_dim=8, attentions=("self_attention",)))),
    "adapters": (PROMPT, methods.Methods(adapters=methods.AdapterMethod(bottleneck=4))),
    "parallel_adapters": (None, methods.Methods(adapters=methods.AdapterMethod(
        bottleneck=4, parallel=True))),
    "mam": (None, methods.Methods(
        prefix_tuning=methods.PrefixMethod(length=2, emb_dim=32),
        adapters=methods.AdapterMethod(bottleneck=4, parallel=True, sublayers=("mlp",)),
        lora=methods.LoRAMethod(rank=2))),
    "smop": (smop.SMoP(num_prompts=3, length=2, init=nn.initializers.normal(1.0)),
             layers.IDENTITY),
}
if "positioned" in {f.name for f in dataclasses.fields(methods.PrefixMethod)}:
  SITES["prefix_positioned"] = (None, methods.Methods(prefix_tuning=methods.PrefixMethod(
      length=3, emb_dim=32, attentions=("self_attention",), positioned=True)))


@pytest.mark.parametrize("name", sorted(SITES))
def test_cached_equals_uncached(name):
  prompt, sites = SITES[name]
  model = _model(prompt, sites)
  params = _params(model, seed=1)
  uncached, cached = _both(model, params, _batch(1))
  _assert_same(uncached, cached)
  assert np.any(cached[0] != 0)


def test_eos_stops_rows_and_zeroes_after():
  """EOS made the likeliest token in some contexts: rows end at different
  steps, zeros follow EOS, and rows done from the start stay zero."""
  model = _model()
  params = _params(model, seed=2)
  flat = trees.flatten(params)
  done = jnp.asarray([False, False, True, False])
  # EOS's logit made 1.05 times that of the token row 0 picks at step 3 (so
  # EOS wins wherever that token would, and row 0 ends by step 3).
  picked = int(_both(model, params, _batch(2), length=STEPS, done=done)[1][0][0, 3])
  kernel = np.array(flat["decoder/logits_dense/kernel"])
  kernel[:, encoder_decoder.EOS_ID] = 1.05 * kernel[:, picked]
  flat["decoder/logits_dense/kernel"] = kernel
  params = trees.unflatten(flat)
  uncached, cached = _both(model, params, _batch(2), length=STEPS, done=done)
  _assert_same(uncached, cached)
  tokens = cached[0]
  assert np.all(tokens[2] == 0) and cached[1][2] == 0.0
  ended = 0
  for row in tokens:
    eos = np.flatnonzero(row == encoder_decoder.EOS_ID)
    if eos.size:
      ended += 1
      assert np.all(row[eos[0] + 1:] == 0), row
  assert ended >= 1 and encoder_decoder.EOS_ID in tokens[0, :4], tokens


def test_default_is_cached_and_uncached_is_selectable():
  model = _model()
  assert model.cached_decoding
  params = _params(model, seed=3)
  batch = {"encoder_input_tokens": _batch(3), "decoder_target_tokens": jnp.ones((B, 6), jnp.int32)}
  default = jax.jit(model.predict_batch)(params, batch)
  uncached_model = dataclasses.replace(model, cached_decoding=False)
  uncached = jax.jit(uncached_model.predict_batch)(params, batch)
  np.testing.assert_array_equal(default, uncached)


def test_ensemble_vmap_over_prompts():
  """Under multiprompt.per_member (ensemble.py) and per_example (infer.py)."""
  model = _model()
  members = [_params(model, seed=s) for s in (4, 5, 6)]
  patterns = ["encoder/prompt/.*"]
  stacked = multiprompt.stack_trees([trees.split(p, patterns)[0] for p in members])
  frozen = trees.split(members[0], patterns)[1]
  tokens = _batch(4)

  def decode(cached):
    def member(params):
      encoded, mask = model.encode(params, tokens)
      return model.greedy_decode(params, encoded, mask, STEPS, cached=cached)
    return jax.device_get(jax.jit(
        lambda s, f: multiprompt.per_member(member, s, f))(stacked, frozen))

  np.testing.assert_array_equal(decode(True)[0], decode(False)[0])
  np.testing.assert_allclose(decode(True)[1], decode(False)[1], atol=1e-5, rtol=1e-5)

  task_index = jnp.asarray([0, 2, 1, 0])
  rows = multiprompt.gather_rows(stacked, task_index)

  def per_example(cached):
    def greedy(params, tokens, done):
      encoded, mask = model.encode(params, tokens)
      return model.greedy_decode(params, encoded, mask, STEPS, done, cached=cached)
    return jax.device_get(jax.jit(lambda r, f, t, d: multiprompt.per_example(
        greedy, r, f, t, d))(rows, frozen, tokens, jnp.asarray([False, True, False, False])))

  np.testing.assert_array_equal(per_example(True)[0], per_example(False)[0])
  np.testing.assert_allclose(per_example(True)[1], per_example(False)[1], atol=1e-5, rtol=1e-5)


def test_real_t5x_checkpoint(tiny_checkpoint):
  """The real tiny T5X checkpoint (T5 1.1, buckets 4 / distance 8), with a prompt."""
  from prompt_tuning.storage import t5x_checkpoints  # pylint: disable=g-import-not-at-top
  config = t5.T5Config(vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                       num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
                       dtype="float32", relative_attention_num_buckets=4,
                       relative_attention_max_distance=8)
  model = _model(config=config)
  init = weights.init_random(model, jax.random.PRNGKey(0), weights.dummy_batch(1, L, 4))
  prompt, shapes = trees.split(init, ["encoder/prompt/.*"])
  shapes = {k: v.shape for k, v in trees.flatten(shapes).items()}
  frozen = t5x_checkpoints.load_params(str(tiny_checkpoint), expected_shapes=shapes,
                                   dtype=np.float32)
  params = trees.merge(prompt, frozen)
  uncached, cached = _both(model, params, _batch(5, vocab=32000), length=16)
  _assert_same(uncached, cached)
