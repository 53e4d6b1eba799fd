"""The train step pt-train jits: loss, gradients of the trainable parameters
only, the optimizer update, and the step's metrics.

It imports no data pipeline, TensorFlow, seqio or metric writer, so that the
accelerator benchmark (bench/accelerator.py) runs this very function on a
machine that has none of them.
"""
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.storage import trees


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


def make_train_step(model, optimizer):
  """(trainable, opt_state, frozen, batch, step, rng) -> (trainable, opt_state, metrics).

  The frozen and trainable trees are separate arguments: gradients are taken
  of the trainable one only (pt-train jits it with donate_argnums=(0, 1))."""

  def train_step(trainable, opt_state, frozen, batch, step, rng):
    dropout_rng = jax.random.fold_in(rng, step)

    def loss_of(tr):
      return model.loss_fn(trees.merge(tr, frozen), batch, dropout_rng)

    (_, (metrics, intermediates)), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    metrics = dict(metrics)
    hyperparams = getattr(opt_state, "hyperparams", None) or {}
    if "learning_rate" in hyperparams:  # optimizers.adafactor's, injected: what this update uses
      metrics["learning_rate"] = hyperparams["learning_rate"]
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    # The loss is computed before the update: check the updated parameters too,
    # so a diverged prompt is never checkpointed.
    metrics["params_finite"] = jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(trainable)]))
    metrics.update(intermediate_metrics(intermediates))
    return trainable, opt_state, metrics

  return train_step
