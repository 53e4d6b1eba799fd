"""Builds a model's parameters: frozen ones from a T5X checkpoint (or random,
for benchmarks and demos), trainable ones from their initialisers.

Only the trainable subtree is ever initialised when a checkpoint is given: the
init function is jitted with everything but that subtree dropped from its
output, so XLA never materialises random frozen weights.
"""
import contextlib
import re

import jax
import jax.numpy as jnp
import flax.linen as nn

from prompt_tuning.model import partitioning
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees


_SHAPES_ONLY = []


@contextlib.contextmanager
def shapes_only():
  """Within it, prompt initialisers return zeros: for tracing a model's
  parameter shapes (jax.eval_shape) without reading checkpoints or files."""
  _SHAPES_ONLY.append(True)
  try:
    yield
  finally:
    _SHAPES_ONLY.pop()


def tracing_shapes_only() -> bool:
  """Whether a `shapes_only` block is running (nothing is computed there)."""
  return bool(_SHAPES_ONLY)


def lazy(init, initializing=True):
  """Wraps a prompt initialiser so that it does no work under `shapes_only`,
  nor outside init (Flax's `param()` traces the initialiser in `apply` too, to
  check the stored shape: pass `module.is_initializing()`)."""
  def wrapped(rng, shape, dtype=jnp.float32):
    if not initializing:
      return jnp.zeros(shape, dtype)
    if _SHAPES_ONLY:
      return jnp.zeros(shape, dtype)
    return init(rng, shape, dtype)
  return wrapped


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
  with shapes_only():
    return jax.eval_shape(_init_fn(model, batch), jax.random.PRNGKey(0))


def check_builds(model) -> None:
  """Traces the model's initialisation with abstract inputs only: no array is
  made and no JAX backend starts (pt-sweep's parent validates every point
  this way, leaving the accelerators to the points), yet a setting the model
  or its method refuses (PROMPT_LENGTH = -5) raises its error here."""
  batch = {name: jax.ShapeDtypeStruct((1, n), jnp.int32) for name, n in (
      ("encoder_input_tokens", 8), ("decoder_input_tokens", 4), ("decoder_target_tokens", 4))}
  with shapes_only():
    jax.eval_shape(lambda rng, b: _init_fn(model, b)(rng),
                   jax.ShapeDtypeStruct((2,), jnp.uint32), batch)


def abstract_trainable(model, patterns, batch=None):
  """Unboxed ShapeDtypeStructs of the parameters whose names match `patterns`:
  what a file of trained parameters is checked against (trained.load_trainable).
  The shapes do not depend on the batch's lengths; `batch` defaults to a tiny one."""
  batch = dummy_batch(1, 8, 4) if batch is None else batch
  return trees.split(nn.unbox(abstract_params(model, batch)), patterns)[0]


def init_trainable(model, rng, batch, patterns, mesh=None):
  """Initialises only the parameters whose names match `patterns`."""
  init = _init_fn(model, batch)

  def trainable_only(rng):
    return trees.split(nn.unbox(init(rng)), patterns)[0]

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


# The frozen T5 weights its layers only ever read cast to ACTIVATION_DTYPE
# (layers.Dense kernels, layers.Embed, RelativePositionBiases); the norm scales
# are read in float32, and method parameters (a frozen SMoP router, say) keep
# their own dtypes, so neither is here.
NARROWED_PARAMS = re.compile(
    r"token_embedder/embedding|(encoder|decoder)/relpos_bias/rel_embedding|"
    r"decoder/logits_dense/kernel|(encoder|decoder)/layers_\d+/"
    r"(attention|self_attention|encoder_decoder_attention|mlp)/"
    r"(query|key|value|out|wi|wi_\d+|wo)/kernel")


def init_random_frozen(model, rng, batch, patterns, mesh=None):
  """The frozen parameters (not matching `patterns`) drawn at random, stored as
  `load_frozen` stores a checkpoint's (`narrow_frozen`): benchmarks, demos,
  runs without INITIAL_CHECKPOINT_PATH."""
  frozen = trees.split(init_random(model, rng, batch, mesh), patterns)[1]
  return narrow_frozen(frozen, model.config.dtype)


def narrow_frozen(frozen, dtype):
  """`frozen` with the NARROWED_PARAMS stored in `dtype` (ACTIVATION_DTYPE).

  Exact: each of them is cast to `dtype` where it is read, so the model sees
  the same numbers; the step no longer converts them every time it runs, and
  they take half the memory in bfloat16. float32 returns `frozen` unchanged.
  """
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    return frozen
  flat = trees.flatten(frozen)
  for name, value in flat.items():
    if NARROWED_PARAMS.fullmatch(name) and value.dtype == jnp.float32:
      flat[name] = value.astype(dtype)  # keeps its sharding
  return trees.unflatten(flat)


def load_frozen(model, checkpoint_path, batch, patterns, mesh=None):
  """Reads the frozen parameters from a T5X checkpoint, checked against the model.

  Casts to float32 (the parameter dtype), then the NARROWED_PARAMS to the
  model's ACTIVATION_DTYPE (`narrow_frozen`: exact, half the memory in bf16).
  """
  abstract = abstract_params(model, batch)
  _, frozen_abstract = trees.split(nn.unbox(abstract), patterns)
  expected = trees.shapes(frozen_abstract)
  flat = trees.flatten(t5x_checkpoints.load_params(
      checkpoint_path, sorted(expected), expected_shapes=expected, dtype=jnp.float32))
  params = narrow_frozen(trees.unflatten(flat), model.config.dtype)
  if mesh is None:
    return jax.tree_util.tree_map(jnp.asarray, params)
  shardings = trees.split(partitioning.param_shardings(mesh, abstract), patterns)[1]
  return jax.device_put(params, shardings)
