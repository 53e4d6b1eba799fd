"""T5X's token-level cross-entropy with z-loss.

loss_t = logsumexp(logits_t) - logits_t[target_t] + z_loss * logsumexp(logits_t)^2,
weighted by the target mask and summed; divided by `loss_normalizing_factor`
when one is given (T5X's finetune default is None: the plain sum).
"""
from typing import Optional, Union

import jax
import jax.numpy as jnp


def cross_entropy_with_z_loss(logits, targets, weights, z_loss=1e-4):
  """Per-token (cross-entropy + z-loss, z-loss alone), each [b, T], times weights."""
  logits = jnp.asarray(logits, jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  z = z_loss * jnp.square(log_z)
  return (log_z - target_logit + z) * weights, z * weights


def normalizing_factor(factor: Optional[Union[float, str]], weights):
  if factor is None:
    return 1.0
  if factor == "NUM_REAL_TARGET_TOKENS":
    return jnp.maximum(jnp.sum(weights), 1.0)
  return float(factor)


def token_log_likelihoods(logits, targets):
  """log p(target_t | ...) per position [b, T] in float32."""
  log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
