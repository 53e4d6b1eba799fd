"""EncoderDecoderModel: the loss, scores and greedy predictions of a T5 module.

Batches are what `seqio.EncDecFeatureConverter(pack=False)` produces:
`encoder_input_tokens`, `decoder_input_tokens`, `decoder_target_tokens`,
`decoder_loss_weights`. Functions here take the full parameter tree (trainable
and frozen parts merged by the caller) and are pure, so they can be jitted and
sharded by the caller.
"""
import dataclasses
from typing import Optional, Union

import jax
import jax.numpy as jnp

from prompt_tuning.model import losses
from prompt_tuning.model import t5

EOS_ID = 1


@dataclasses.dataclass(frozen=True)  # hashable: the key of its jitted functions
class EncoderDecoderModel:
  module: t5.Transformer
  z_loss: float = 1e-4
  loss_normalizing_factor: Optional[Union[float, str]] = None
  # Greedy decoding with a key/value cache (one token per step); False re-runs
  # the decoder over the whole sequence each step (same tokens; slower).
  cached_decoding: bool = True

  @property
  def config(self) -> t5.T5Config:
    return self.module.config

  def logits(self, params, batch, dropout_rng=None, mutable=False):
    """Teacher-forced logits [b, T, vocab]; dropout when a dropout rng is given.

    With `mutable` (a list of collections), returns (logits, collections), so
    a prompt module can report what it did (e.g. SMoP's routing).
    """
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch["decoder_target_tokens"], deterministic=dropout_rng is None, rngs=rngs,
        mutable=mutable)

  def loss_fn(self, params, batch, dropout_rng=None):
    """Returns (loss, metrics dict) for one batch, as T5X's EncoderDecoderModel."""
    logits, intermediates = self.logits(params, batch, dropout_rng, mutable=["intermediates"])
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = (batch["decoder_target_tokens"] > 0).astype(jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    token_loss, token_z = losses.cross_entropy_with_z_loss(
        logits, batch["decoder_target_tokens"], weights, self.z_loss)
    factor = losses.normalizing_factor(self.loss_normalizing_factor, weights)
    loss = jnp.sum(token_loss) / factor
    num_tokens = jnp.maximum(jnp.sum(weights), 1.0)
    correct = (jnp.argmax(logits, -1) == batch["decoder_target_tokens"]) * weights
    metrics = {
        "loss": loss,
        "z_loss": jnp.sum(token_z) / factor,
        "cross_ent_loss_per_token": jnp.sum(token_loss - token_z) / num_tokens,
        "accuracy": jnp.sum(correct) / num_tokens,
        "num_tokens": jnp.sum(weights),
    }
    return loss, (metrics, intermediates.get("intermediates", {}))

  def score_batch(self, params, batch):
    """Sum of target-token log-likelihoods per example [b] (T5X's score_batch)."""
    logits = self.logits(params, batch)
    weights = (batch["decoder_target_tokens"] > 0).astype(jnp.float32)
    ll = losses.token_log_likelihoods(logits, batch["decoder_target_tokens"])
    return jnp.sum(ll * weights, axis=-1)

  def encode(self, params, encoder_input_tokens):
    return self.module.apply({"params": params}, encoder_input_tokens,
                             method=t5.Transformer.encode)

  def decode_logits(self, params, encoded, encoder_mask, decoder_input_tokens,
                    decoder_target_tokens=None):
    return self.module.apply({"params": params}, encoded, encoder_mask, decoder_input_tokens,
                             decoder_target_tokens, method=t5.Transformer.decode)

  def sequence_log_likelihood(self, params, encoded, encoder_mask, targets,
                              decoder_input_tokens=None):
    """Sum of the log-likelihoods of `targets` [b, T] (zero-padded) given the
    encoder outputs [b]; the decoder inputs default to the targets shifted right."""
    if decoder_input_tokens is None:
      decoder_input_tokens = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]  # start id 0
    logits = self.decode_logits(params, encoded, encoder_mask, decoder_input_tokens, targets)
    ll = losses.token_log_likelihoods(logits, targets)
    return jnp.sum(ll * (targets > 0), axis=-1)

  def greedy_decode(self, params, encoded, encoder_mask, length: int, done=None,
                    cached: Optional[bool] = None, return_logits: bool = False):
    """Greedy decoding from encoder outputs: (token ids [b, length], their summed
    log-likelihood [b]), EOS-terminated and zero after EOS.

    `cached` (default: `cached_decoding`): with a key/value cache, each step
    runs the decoder on one token (the cross-attention keys and values of the
    encoder outputs are computed once, the self-attention's are appended to
    per-layer caches [b, length, heads*head_dim]); without, each step re-runs
    the decoder over the whole sequence. Both give the same tokens. The loop
    stops once every row has produced EOS. Rows with `done` [b] set from the
    start (padding, rows scored otherwise) stay zero and do not hold the loop.
    `return_logits` adds each step's logits [b, length, vocab] (zero after
    the loop stops), for tests.
    """
    cached = self.cached_decoding if cached is None else cached
    batch_size = encoded.shape[0]
    tokens = jnp.zeros((batch_size, length + 1), jnp.int32)  # column 0: start id 0
    done = jnp.zeros((batch_size,), bool) if done is None else jnp.asarray(done, bool)
    score = jnp.zeros((batch_size,), jnp.float32)
    vocab = self.config.vocab_size
    all_logits = jnp.zeros((batch_size, length, vocab) if return_logits else (0,), jnp.float32)
    if cached:
      cache = self.module.apply({"params": params}, encoded, encoder_mask, length,
                                method=t5.Transformer.init_decode_cache)
    else:
      cache = ()

    def step_logits(step, tokens, cache):
      if not cached:
        logits = self.decode_logits(params, encoded, encoder_mask, tokens[:, :-1])
        return jax.lax.dynamic_index_in_dim(logits, step, 1, False), cache
      token = jax.lax.dynamic_slice_in_dim(tokens, step, 1, 1)
      logits, cache = self.module.apply({"params": params}, encoder_mask, token, step, cache,
                                        method=t5.Transformer.decode_step)
      return logits[:, 0], cache

    def cond(state):
      step, _, done = state[:3]
      return (step < length) & ~jnp.all(done)

    def body(state):
      step, tokens, done, score, cache, all_logits = state
      logits, cache = step_logits(step, tokens, cache)
      next_token = jnp.where(done, 0, jnp.argmax(logits, -1)).astype(jnp.int32)
      ll = losses.token_log_likelihoods(logits, next_token)
      tokens = jax.lax.dynamic_update_index_in_dim(tokens, next_token, step + 1, 1)
      if return_logits:
        all_logits = jax.lax.dynamic_update_index_in_dim(all_logits, logits, step, 1)
      return (step + 1, tokens, done | (next_token == EOS_ID), score + jnp.where(done, 0.0, ll),
              cache, all_logits)

    _, tokens, _, score, _, all_logits = jax.lax.while_loop(
        cond, body, (0, tokens, done, score, cache, all_logits))
    if return_logits:
      return tokens[:, 1:], score, all_logits
    return tokens[:, 1:], score

  def predict_batch(self, params, batch, max_decode_length: Optional[int] = None,
                    cached: Optional[bool] = None):
    """Greedy decoding: token ids [b, max_decode_length], EOS-terminated.

    The encoder (with the prompt) runs once, then `greedy_decode`.
    """
    length = max_decode_length or batch["decoder_target_tokens"].shape[1]
    encoded, mask = self.encode(params, batch["encoder_input_tokens"])
    return self.greedy_decode(params, encoded, mask, length, cached=cached)[0]
