"""Prefix tuning (Li and Liang, 2021): learned key and value rows in front
of an attention's keys and values, optionally reparameterised through an MLP,
optionally positioned as Hugging Face PEFT places them. Parameters
`.../{attention}/prefix/{key,value}` (or `embedding`, `hidden`, `out`)."""
import dataclasses
import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from prompt_tuning.methods.sites import ATTENTIONS, MAX_PREFIX_LENGTH, MethodError, sublayer_names
from prompt_tuning.model import layers

class Prefix(nn.Module):
  """Key and value prefixes [l, features] of one attention (Li and Liang, 2021).

  With `hidden_dim`, the prefixes are `tanh(E @ W1) @ W2` of an embedding E
  [l, emb_dim] (the reparameterisation that stabilises training); the same
  function runs in training and evaluation, so what is saved is E, W1, W2.
  """
  length: int
  emb_dim: int
  hidden_dim: Optional[int] = None
  init_scale: float = 0.5

  @nn.compact
  def __call__(self, features):
    if self.hidden_dim is None:
      init = nn.initializers.uniform(2 * self.init_scale)
      shift = lambda rng, shape, dtype: init(rng, shape, dtype) - self.init_scale
      key = self.param("key", shift, (self.length, features), jnp.float32)
      value = self.param("value", shift, (self.length, features), jnp.float32)
      return key, value
    embedding = self.param("embedding", nn.initializers.normal(1.0),
                           (self.length, self.emb_dim), jnp.float32)
    hidden = self.param("hidden", layers.default_kernel_init,
                        (self.emb_dim, self.hidden_dim), jnp.float32)
    out = self.param("out", layers.default_kernel_init,
                     (self.hidden_dim, 2 * features), jnp.float32)
    rows = jnp.tanh(embedding @ hidden) @ out
    return rows[:, :features], rows[:, features:]


@dataclasses.dataclass(frozen=True)
class PrefixMethod(layers.Sites):
  """Prefix tuning: `length` learned key and value rows in every attention
  named in `attentions` (default: all, self and cross, in both stacks)."""
  length: int = 30
  emb_dim: int = 512
  hidden_dim: Optional[int] = None
  attentions: Tuple[str, ...] = ATTENTIONS
  # Hugging Face PEFT's placement (methods/prefix_peft.gin): the prefix is a
  # key/value cache of the decoder's self-attention, at positions 0..l-1 with
  # T5's relative position bias, the targets following at l, l+1, ...
  positioned: bool = False

  def __post_init__(self):
    object.__setattr__(self, "attentions",
                       sublayer_names(self.attentions, ATTENTIONS, "PREFIX_ATTENTIONS"))
    if self.positioned and self.attentions != ("decoder/self_attention",):
      raise MethodError("a positioned prefix (PEFT's placement) is only defined for the "
                        "decoder's self-attention: set PREFIX_ATTENTIONS = ['self_attention']")
    if not isinstance(self.length, int) or not 1 <= self.length <= MAX_PREFIX_LENGTH:
      raise MethodError(f"PREFIX_LENGTH must be an integer in 1..{MAX_PREFIX_LENGTH}, "
                        f"got {self.length}")
    if self.hidden_dim is not None and (not isinstance(self.hidden_dim, int)
                                        or self.hidden_dim < 1):
      raise MethodError(f"PREFIX_HIDDEN_DIM must be None or a positive integer, "
                        f"got {self.hidden_dim}")

  def prefix(self, where):
    if where in self.attentions:
      return functools.partial(Prefix, self.length, self.emb_dim, self.hidden_dim, name="prefix")
    return None

  def prefix_positions(self, where):
    return self.length if self.positioned and where in self.attentions else 0


