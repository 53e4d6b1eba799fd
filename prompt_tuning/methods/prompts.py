"""The soft prompt of Lester et al. (2021): a learned [P, d] matrix prepended
to the embedded encoder input.

A prompt module is called by `t5.Encoder` as
`prompt(input_tokens, embedded [b, L, d], mask [b, L]) -> (embedded [b, P+L, d], mask)`.
Its parameter is `encoder/prompt/prompt`, saved as `encoder.prompt.prompt.npy`
(the name of the authors' released prompts).
"""
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from prompt_tuning.methods import initializers
from prompt_tuning.model import weights

PROMPT_AXES = ("prompt", "embed")


def prepend(prompt, embedded, mask, prompt_mask=None):
  """Prepends a prompt [P, d] or per-example prompts [b, P, d]; prompt positions
  are real unless `prompt_mask` ([P] or [b, P]) marks them as padding."""
  batch = embedded.shape[0]
  if prompt.ndim == 2:
    prompt = jnp.broadcast_to(prompt[None], (batch,) + prompt.shape)
  prompt = jnp.asarray(prompt, embedded.dtype)
  if prompt_mask is None:
    prompt_mask = jnp.ones(prompt.shape[:2], bool)
  prompt_mask = jnp.broadcast_to(jnp.asarray(prompt_mask, bool), prompt.shape[:2])
  mask = jnp.concatenate([prompt_mask, mask], axis=1)
  return jnp.concatenate([prompt, embedded], axis=1), mask


class Prompt(nn.Module):
  """One prompt shared by every example.

  `init` is a Flax initialiser `(rng, shape, dtype) -> array`; the prompt
  initialisers live in `prompt_tuning.methods.initializers`.
  """
  length: int
  init: Callable

  @nn.compact
  def __call__(self, input_tokens, embedded, mask, deterministic=True):
    del input_tokens, deterministic
    length = initializers.check_positive("PROMPT_LENGTH", self.length)
    init = weights.lazy(self.init, self.is_initializing())
    prompt = self.param("prompt", nn.with_logical_partitioning(init, PROMPT_AXES),
                        (length, embedded.shape[-1]), jnp.float32)
    return prepend(prompt, embedded, mask)


class PaddedPrompt(nn.Module):
  """A prompt of up to `length` tokens, left-padded with masked positions.

  Parameters: `prompt` [length, d] and `mask` [length] (1 for a prompt token,
  0 for padding; the padding comes first). Masked positions are attended by
  nothing and T5's position biases are relative, so a [P', d] prompt padded to
  [P, d] gives the encoder outputs of the unpadded one at every real position:
  prompts of different lengths can share a batch (pt-infer). Not trained.
  """
  length: int

  @nn.compact
  def __call__(self, input_tokens, embedded, mask, deterministic=True):
    del input_tokens, deterministic
    prompt = self.param("prompt", nn.with_logical_partitioning(nn.initializers.zeros, PROMPT_AXES),
                        (self.length, embedded.shape[-1]), jnp.float32)
    prompt_mask = self.param("mask", nn.initializers.ones, (self.length,), jnp.float32)
    return prepend(prompt, embedded, mask, prompt_mask > 0)

