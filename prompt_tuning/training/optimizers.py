"""The optimizer of the paper, through optax, configured by gin.

Lester et al. (2021): Adafactor, constant learning rate 0.3, second-moment
decay exponent 0.8, weight decay 1e-5, no parameter scaling; T5X's update
clipping threshold 1.0 and factoring of matrices whose two largest dims are
both >= 128 (a [100, d] prompt is therefore not factored).

The learning rate is a hyper-parameter of the optimizer's state
(`optax.inject_hyperparams`): what pt-train logs is the value the update
used (`current_learning_rate`), and a schedule would show as it runs.
"""
import math
from typing import Optional

import flax.serialization
import gin
import jax
import numpy as np
import optax

from prompt_tuning import gin_utils

# Every argument of optax.adafactor but the learning rate stays a Python
# constant (several steer Python control flow: factoring, momentum).
_STATIC = ("min_dim_size_to_factor", "decay_rate", "decay_offset",
           "multiply_by_parameter_scale", "clipping_threshold", "momentum", "dtype_momentum",
           "weight_decay_rate", "eps", "factored", "weight_decay_mask")


def _check_learning_rate(value, name: str) -> None:
  """ConfigError unless a finite number > 0 (or a schedule: a callable)."""
  if callable(value):
    return
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if not ok or not math.isfinite(value) or value <= 0:
    raise gin_utils.ConfigError(f"{name} must be a finite number > 0, got {value!r}")


@gin.configurable(module="optimizers")
def adafactor(learning_rate: float = 0.3,
              decay_rate: float = 0.8,
              weight_decay_rate: float = 1e-5,
              multiply_by_parameter_scale: bool = False,
              clipping_threshold: float = 1.0,
              min_dim_size_to_factor: int = 128,
              momentum=None,
              factored: bool = True) -> optax.GradientTransformation:
  _check_learning_rate(learning_rate, "optimizers.adafactor.learning_rate")
  return optax.inject_hyperparams(optax.adafactor, static_args=_STATIC)(
      learning_rate=learning_rate,
      decay_rate=decay_rate,
      weight_decay_rate=weight_decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      min_dim_size_to_factor=min_dim_size_to_factor,
      momentum=momentum,
      factored=factored)


def current_learning_rate(opt_state) -> Optional[float]:
  """The learning rate of the optimizer's last update (None for an optimizer
  without an injected one)."""
  hyperparams = getattr(opt_state, "hyperparams", None)
  if not hyperparams or "learning_rate" not in hyperparams:
    return None
  return float(np.asarray(jax.device_get(hyperparams["learning_rate"])))


def restore_state(target, saved: dict, step: int):
  """`target` (a fresh optimizer state) with the values of `saved` (its
  flax state dict from a checkpoint). A state saved before the learning rate
  was injected (the bare Adafactor state) fills the inner state; the update
  count is the step and the learning rate the configured one (a resume
  refuses a changed learning rate)."""
  if (hasattr(target, "inner_state") and isinstance(saved, dict)
      and "inner_state" not in saved):
    inner = flax.serialization.from_state_dict(target.inner_state, saved)
    return target._replace(count=np.asarray(step, np.asarray(target.count).dtype),
                           inner_state=inner)
  return flax.serialization.from_state_dict(target, saved)
