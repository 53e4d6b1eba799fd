"""Prompt initialisers: Flax initialisers `(rng, shape, dtype) -> array`.

Each is a gin configurable returning the initialiser, so a gin file under
`gin/prompts/` picks one for `prompts.Prompt.init`.
"""
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import file_utils


class PromptInitError(ValueError):
  """A prompt that cannot be initialised as asked; the message says why."""


@gin.configurable
def random_uniform(scale: float = 0.5):
  """Uniform in [-scale, scale] (the paper's random initialisation)."""
  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, minval=-scale, maxval=scale)
  return init


def load_prompt_file(path: str, shape) -> np.ndarray:
  """A .npy prompt of exactly `shape`, or one clear error."""
  if not path:
    raise PromptInitError("PROMPT_FILE is empty: give the path of a .npy prompt")
  if not file_utils.exists(path):
    raise PromptInitError(f"PROMPT_FILE {path} does not exist")
  try:
    value = file_utils.load_npy(path)
  except (ValueError, OSError) as e:
    raise PromptInitError(f"PROMPT_FILE {path} is not a readable .npy file: {e}") from None
  if tuple(value.shape) != tuple(shape):
    raise PromptInitError(
        f"PROMPT_FILE {path} has shape {list(value.shape)} but the model's prompt is "
        f"{list(shape)} ([PROMPT_LENGTH, EMBED_DIM]): set --gin.PROMPT_LENGTH={value.shape[0]} "
        "or use a prompt trained for this model")
  if not np.all(np.isfinite(value)):
    raise PromptInitError(f"PROMPT_FILE {path} contains NaN or infinite values")
  return value


@gin.configurable
def from_file(path: str = gin.REQUIRED):
  """The prompt stored in a .npy file of the exact shape."""
  def init(rng, shape, dtype=jnp.float32):
    del rng
    return jnp.asarray(load_prompt_file(path, shape), dtype)
  return init


@gin.configurable
def prompt_file_or(path=None, fallback=gin.REQUIRED):
  """PROMPT_FILE when one is given, else the fallback initialiser."""
  return from_file(path) if path else fallback
