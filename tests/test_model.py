"""The Flax T5 against Hugging Face's PyTorch T5 and against a direct numpy
reading of a real T5X checkpoint."""
import importlib.util
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.methods import prompts
from prompt_tuning.model import encoder_decoder
from prompt_tuning.model import t5
from prompt_tuning.model import weights
from prompt_tuning.storage import trees

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import make_hf_reference as hf_ref  # pylint: disable=g-import-not-at-top,wrong-import-position
import test_checkpoints as direct  # pylint: disable=g-import-not-at-top,wrong-import-position

TOL = 1e-4


def make_model(ref_config, prompt_length):
  config = t5.T5Config(
      vocab_size=ref_config["vocab"], emb_dim=ref_config["emb"], num_heads=ref_config["heads"],
      head_dim=ref_config["head_dim"], mlp_dim=ref_config["mlp"],
      num_encoder_layers=ref_config["num_encoder_layers"],
      num_decoder_layers=ref_config["num_decoder_layers"],
      mlp_activations=("gelu", "linear") if ref_config["gated"] else ("relu",),
      logits_via_embedding=ref_config["tied"], dropout_rate=0.0, dtype="float32",
      relative_attention_num_buckets=ref_config["buckets"],
      relative_attention_max_distance=ref_config["max_distance"])
  prompt = prompts.Prompt(prompt_length, nn.initializers.zeros) if prompt_length else None
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(config, prompt=prompt))


def our_outputs(flat_params, ref_config, input_ids, prompt, targets):
  prompt = np.asarray(prompt, np.float32)
  model = make_model(ref_config, prompt.shape[0])
  flat = dict(flat_params)
  if prompt.shape[0]:
    flat["encoder/prompt/prompt"] = prompt
  params = jax.tree_util.tree_map(jnp.asarray, trees.unflatten(flat))
  targets = jnp.asarray(targets)
  batch = {"encoder_input_tokens": jnp.asarray(input_ids),
           "decoder_input_tokens": jnp.asarray(hf_ref.shift_right(np.asarray(targets))),
           "decoder_target_tokens": targets}
  encoded, _ = model.encode(params, batch["encoder_input_tokens"])
  # Causal-only logits (what HF computes with decoder_attention_mask=None).
  logits = model.module.apply({"params": params}, batch["encoder_input_tokens"],
                              batch["decoder_input_tokens"], None)
  masked_logits = model.logits(params, batch)
  return dict(encoder_output=np.asarray(encoded), logits=np.asarray(logits),
              masked_logits=np.asarray(masked_logits),
              target_loglik=np.asarray(model.score_batch(params, batch)))


@pytest.mark.parametrize("name", ["t5_1_0", "t5_1_1"])
def test_parity_with_stored_hf_outputs(name):
  flat, config, arrays = hf_ref.load_reference(name)
  ours = our_outputs(flat, config, arrays["input_ids"], arrays["prompt"], arrays["targets"])
  # Encoder outputs at padded positions differ by design (T5X masks padded
  # queries too, HF only keys); they are masked out of cross-attention.
  enc_real = np.concatenate([np.ones((3, len(arrays["prompt"])), bool), arrays["input_ids"] > 0], 1)
  np.testing.assert_allclose(ours["encoder_output"][enc_real], arrays["encoder_output"][enc_real],
                             atol=TOL, rtol=0)
  np.testing.assert_allclose(ours["logits"], arrays["logits"], atol=TOL, rtol=0)
  np.testing.assert_allclose(ours["target_loglik"], arrays["target_loglik"], atol=TOL, rtol=0)
  # Padding-masked decoding (T5X's) agrees on every real target position.
  real = arrays["targets"] > 0
  np.testing.assert_allclose(ours["masked_logits"][real], arrays["logits"][real], atol=TOL, rtol=0)
  # The prompt matters: without it the outputs differ.
  unprompted = our_outputs(flat, config, arrays["input_ids"], np.zeros((0, config["emb"])),
                           arrays["targets"])
  assert np.abs(unprompted["logits"] - arrays["logits"]).max() > 1e-2


@pytest.mark.skipif(not (importlib.util.find_spec("torch") and
                         importlib.util.find_spec("transformers")),
                    reason="live comparison needs torch and transformers")
@pytest.mark.parametrize("name", ["t5_1_0", "t5_1_1"])
def test_parity_with_live_hf(name):
  config = hf_ref.CONFIGS[name]
  flat = hf_ref.make_params(config, seed=123)
  inputs = hf_ref.make_inputs(config, seed=7)
  input_ids, prompt, targets = inputs["input_ids"], inputs["prompt"], inputs["targets"]
  theirs = hf_ref.hf_outputs(flat, config, input_ids, prompt, targets)
  ours = our_outputs(flat, config, input_ids, prompt, targets)
  enc_real = np.concatenate([np.ones((len(input_ids), len(prompt)), bool), input_ids > 0], 1)
  np.testing.assert_allclose(ours["encoder_output"][enc_real], theirs["encoder_output"][enc_real],
                             atol=TOL, rtol=0)
  for key in ("logits", "target_loglik"):
    np.testing.assert_allclose(ours[key], theirs[key], atol=TOL, rtol=0, err_msg=key)


TINY = dict(vocab=32128, emb=4, heads=2, head_dim=2, mlp=8, num_encoder_layers=2,
            num_decoder_layers=2, buckets=4, max_distance=8, gated=True, tied=False)


def _direct_params(ckpt):
  """The checkpoint's target arrays read with gzip/msgpack/numpy only."""
  out = {}
  # pylint: disable-next=protected-access
  for name, value in direct._flat(direct._raw_tree(ckpt)["optimizer"]["target"]):
    if isinstance(value, dict):
      value = direct._read_zarr(ckpt / value["kvstore"]["path"])  # pylint: disable=protected-access
    out[name] = np.asarray(value, np.float32)
  return out


def test_tiny_t5x_checkpoint_loads_and_matches_numpy(tiny_checkpoint):
  model = make_model(TINY, prompt_length=3)
  batch = weights.dummy_batch(1, 6, 4)
  frozen = weights.load_frozen(model, str(tiny_checkpoint), batch, ["encoder/prompt/.*"])
  direct_params = _direct_params(tiny_checkpoint)
  assert set(trees.flatten(frozen)) == set(direct_params)
  rng = np.random.RandomState(0)
  input_ids = rng.randint(2, 32000, (2, 6)).astype(np.int32)
  input_ids[1, 4:] = 0
  targets = np.array([[5, 9, 300, 1], [7, 1, 0, 0]], np.int32)
  prompt = rng.uniform(-0.5, 0.5, (3, 4)).astype(np.float32)
  flat = trees.flatten(frozen)
  ours = our_outputs({k: np.asarray(v) for k, v in flat.items()}, TINY, input_ids, prompt, targets)
  reference = hf_ref.numpy_outputs(direct_params, TINY, input_ids, prompt, targets)
  np.testing.assert_allclose(ours["logits"], reference["logits"], atol=TOL, rtol=0)
  np.testing.assert_allclose(ours["target_loglik"], reference["target_loglik"], atol=TOL, rtol=0)


def test_relative_position_buckets_match_t5():
  """Hand-checked values of T5's bucketing (32 buckets, max distance 128)."""
  from prompt_tuning.model import layers  # pylint: disable=g-import-not-at-top
  rel = np.arange(-300, 300)
  for bidirectional in (True, False):
    got = dict(zip(rel.tolist(),
                   layers.relative_position_bucket(rel, bidirectional, 32, 128).tolist()))
    # pylint: disable-next=protected-access
    ref = hf_ref._relpos_buckets(1, 301, bidirectional, 32, 128)[0]
    assert [got[r] for r in range(0, 300)] == ref[:300].tolist()
    if bidirectional:
      assert ([got[0], got[-1], got[1], got[7], got[8], got[-8], got[200]]
              == [0, 1, 17, 23, 24, 8, 31])
    else:
      assert [got[0], got[-1], got[1], got[-15], got[-16], got[-200]] == [0, 1, 0, 15, 16, 31]


def test_param_tree_is_t5x():
  """Names and shapes for T5 1.1 Small, with the prompt at encoder/prompt/prompt."""
  config = t5.T5Config(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024,
                       num_encoder_layers=8, num_decoder_layers=8, dtype="float32")
  model = encoder_decoder.EncoderDecoderModel(t5.Transformer(
      config, prompt=prompts.Prompt(100, nn.initializers.zeros)))
  shapes = trees.shapes(nn.unbox(weights.abstract_params(
      model, weights.dummy_batch(1, 8, 4))))
  assert shapes["token_embedder/embedding"] == (32128, 512)
  assert shapes["encoder/layers_0/attention/query/kernel"] == (512, 384)
  assert shapes["encoder/layers_7/mlp/wi_1/kernel"] == (512, 1024)
  assert shapes["decoder/layers_7/encoder_decoder_attention/out/kernel"] == (384, 512)
  assert shapes["decoder/logits_dense/kernel"] == (512, 32128)
  assert shapes["encoder/relpos_bias/rel_embedding"] == (6, 32)
  assert shapes["encoder/prompt/prompt"] == (100, 512)
  assert len(shapes) == 1 + (1 + 8 * 9 + 1 + 1) + (1 + 8 * 14 + 1 + 1)


def test_prompt_initialiser_runs_only_at_init():
  """Shapes (eval_shape) and apply never call a prompt initialiser, which may
  read checkpoints (class labels, sampled vocab): only init does."""
  calls = []

  def init(rng, shape, dtype=jnp.float32):
    calls.append(shape)
    return jnp.full(shape, 0.25, dtype)

  config = t5.T5Config(vocab_size=32, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                       num_encoder_layers=1, num_decoder_layers=1, dtype="float32",
                       dropout_rate=0.0)
  model = encoder_decoder.EncoderDecoderModel(
      t5.Transformer(config, prompt=prompts.Prompt(3, init)))
  batch = weights.dummy_batch(2, 5, 3)
  weights.abstract_params(model, batch)
  assert not calls
  trainable = weights.init_trainable(model, jax.random.PRNGKey(0), batch,
                                          ["encoder/prompt/.*"])
  assert calls == [(3, 8)]
  np.testing.assert_array_equal(np.asarray(trainable["encoder"]["prompt"]["prompt"]), 0.25)
  params = weights.init_random(model, jax.random.PRNGKey(0), batch)
  calls.clear()
  model.logits(params, batch)
  assert not calls
