"""Training summaries: TensorBoard scalars (tf.summary event files) and the
metrics a prompt module reports through Flax's `intermediates` collection."""
import gin
import jax
import jax.numpy as jnp
import tensorflow as tf


class SummaryWriter:
  """tf.summary scalars under `log_dir` (T5X writes MODEL_DIR/train)."""

  def __init__(self, log_dir: str):
    self._writer = tf.summary.create_file_writer(log_dir)

  def scalars(self, step: int, values: dict) -> None:
    with self._writer.as_default():
      for name, value in values.items():
        tf.summary.scalar(name, value, step=step)
    self._writer.flush()

  def close(self):
    self._writer.close()


def learning_rate() -> float:
  """The optimizer's constant learning rate as bound in gin (for the logs)."""
  try:
    return float(gin.query_parameter("adafactor.learning_rate"))
  except (ValueError, TypeError):
    return 0.3  # optimizers.adafactor's default


def intermediate_metrics(intermediates) -> dict:
  """Flattens sown scalars/vectors, e.g. SMoP's `routing_fraction` [k] ->
  {'routing/prompt_0': ..., ...}."""
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(intermediates)[0]
  for path, value in flat:
    names = [getattr(p, "key", getattr(p, "idx", "")) for p in path]
    if "routing_fraction" in names:
      fractions = jnp.asarray(value).reshape(-1, value.shape[-1]).mean(0)
      for i in range(value.shape[-1]):
        out[f"routing/prompt_{i}"] = fractions[i]
  return out
