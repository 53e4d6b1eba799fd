"""Builds a model's parameters: frozen ones from a T5X checkpoint (or random,
for benchmarks and demos), trainable ones from their initialisers.

Only the trainable subtree is ever initialised when a checkpoint is given: the
init function is jitted with everything but that subtree dropped from its
output, so XLA never materialises random frozen weights.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn

from prompt_tuning import checkpoints
from prompt_tuning import initializers
from prompt_tuning import param_utils
from prompt_tuning import partitioning


def dummy_batch(batch_size, input_length, target_length):
  ones = lambda n: jnp.ones((batch_size, n), jnp.int32)
  return {"encoder_input_tokens": ones(input_length), "decoder_input_tokens": ones(target_length),
          "decoder_target_tokens": ones(target_length)}


def _init_fn(model, batch):
  def init(rng):
    return model.module.init(
        {"params": rng, "dropout": rng}, batch["encoder_input_tokens"],
        batch["decoder_input_tokens"], batch["decoder_target_tokens"])["params"]
  return init


def abstract_params(model, batch):
  """Boxed ShapeDtypeStructs of every parameter (carries logical axis names).

  Prompt initialisers do no work here (no checkpoint or file is read).
  """
  with initializers.shapes_only():
    return jax.eval_shape(_init_fn(model, batch), jax.random.PRNGKey(0))


def init_trainable(model, rng, batch, patterns, mesh=None):
  """Initialises only the parameters whose names match `patterns`."""
  init = _init_fn(model, batch)

  def trainable_only(rng):
    return param_utils.split(nn.unbox(init(rng)), patterns)[0]

  out = jax.jit(trainable_only)(rng)
  if mesh is not None:
    out = partitioning.replicate(mesh, out)
  return out


def init_random(model, rng, batch, mesh=None):
  """Every parameter, randomly initialised (benchmarks, demos, tests)."""
  init = _init_fn(model, batch)
  if mesh is None:
    return nn.unbox(jax.jit(init)(rng))
  shardings = partitioning.param_shardings(mesh, abstract_params(model, batch))
  return nn.unbox(jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng))


def load_frozen(model, checkpoint_path, batch, patterns, mesh=None):
  """Reads the frozen parameters from a T5X checkpoint, checked against the model.

  Casts to float32 (the parameter dtype; activations use ACTIVATION_DTYPE).
  """
  abstract = abstract_params(model, batch)
  _, frozen_abstract = param_utils.split(nn.unbox(abstract), patterns)
  expected = param_utils.shapes(frozen_abstract)
  flat = param_utils.flatten(checkpoints.load_params(
      checkpoint_path, sorted(expected), expected_shapes=expected, dtype=jnp.float32))
  params = param_utils.unflatten(flat)
  if mesh is None:
    return jax.tree_util.tree_map(jnp.asarray, params)
  shardings = param_utils.split(partitioning.param_shardings(mesh, abstract), patterns)[1]
  return jax.device_put(params, shardings)
