"""SMoP: a sparse mixture of short prompts (Choi et al., 2023).

k short prompts of P tokens each; a linear router (no bias) reads the mean of
the embedded input tokens (padding excluded) and each example gets the one
prompt with the highest routing logit (top-1), scaled by its routing
probability (softmax of the logits) so the router is trained through the
loss. In training (`deterministic=False`) the logits get multiplicative
Gaussian noise `x + sigma * stop_gradient(x) * N(0, 1)` first; in evaluation
routing is noise-free and deterministic.

A drop-in for `prompts.Prompt`: `t5.Encoder` calls
`prompt(input_tokens, embedded [b, L, d], mask [b, L], deterministic)` and gets
`(embedded [b, P+L, d], mask [b, P+L])`. Parameters (under `encoder/prompt/`):

  prompt          [k, P, d]  the k prompts, logical axes (num_prompts, prompt, embed)
  router/kernel   [d, k]     the router, orthogonal init

so the default TRAINABLE_PARAMS 'encoder/prompt/.*' trains both and numpy
checkpoints hold `encoder.prompt.prompt.npy` and
`encoder.prompt.router.kernel.npy`. Each call sows, in the `intermediates`
collection, `routing_fraction` [k] (share of the batch sent to each prompt;
pt-train logs it as routing/prompt_i) and `routing_index` [b] (the chosen
prompt of each example; `routing_fractions` uses it for pt-eval).
"""
import functools
from typing import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import initializers
from prompt_tuning.methods import prompts
from prompt_tuning.model import layers
from prompt_tuning.model import partitioning
from prompt_tuning.model import t5
from prompt_tuning.model import weights

SMOP_AXES = ("num_prompts", "prompt", "embed")
ROUTER_AXES = ("embed", "num_prompts")


def mean_embedding(embedded, mask):
  """Mean over the real (mask True) positions: [b, L, d], [b, L] -> [b, d] float32."""
  weights = jnp.asarray(mask, jnp.float32)[..., None]
  total = jnp.sum(jnp.asarray(embedded, jnp.float32) * weights, axis=1)
  return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def add_noise(logits, rng, std):
  """x + std * stop_gradient(x) * N(0, 1): multiplicative noise that does not
  backpropagate through its scale (d out / d x = 1)."""
  eps = jax.random.normal(rng, logits.shape, logits.dtype)
  return logits + std * jax.lax.stop_gradient(logits) * eps


class SMoP(nn.Module):
  """Sparse mixture of `num_prompts` prompts of `length` tokens, top-1 routed.

  `init` is a prompt initialiser (`prompt_tuning.methods.initializers`) called once
  with shape [k, P, d]; those initialise each of the k prompts independently.
  """
  num_prompts: int
  length: int
  init: Callable
  noise_std: float = 1.0
  router_init: Callable = nn.initializers.orthogonal()

  @nn.compact
  def __call__(self, input_tokens, embedded, mask, deterministic=True):
    del input_tokens
    k = initializers.check_positive("SMOP_NUM_PROMPTS", self.num_prompts)
    length = initializers.check_positive("PROMPT_LENGTH", self.length)
    init = weights.lazy(self.init, self.is_initializing())
    table = self.param("prompt", nn.with_logical_partitioning(init, SMOP_AXES),
                       (k, length, embedded.shape[-1]), jnp.float32)
    logits = layers.Dense(k, ROUTER_AXES, jnp.float32, kernel_init=self.router_init,
                          name="router")(mean_embedding(embedded, mask))
    if not deterministic and self.noise_std:
      logits = add_noise(logits, self.make_rng("dropout"), self.noise_std)
    probs = jax.nn.softmax(logits, axis=-1)
    index = jnp.argmax(logits, axis=-1)
    scale = jnp.take_along_axis(probs, index[:, None], axis=-1)  # [b, 1]
    chosen = jnp.take(table, index, axis=0) * scale[..., None]  # [b, P, d]
    self.sow("intermediates", "routing_fraction",
             jnp.mean(jax.nn.one_hot(index, k, dtype=jnp.float32), axis=0))
    self.sow("intermediates", "routing_index", index.astype(jnp.int32))
    return prompts.prepend(chosen, embedded, mask)


def is_smop(model) -> bool:
  """Whether an EncoderDecoderModel's prompt module is a SMoP."""
  return isinstance(getattr(getattr(model, "module", None), "prompt", None), SMoP)


def find(tree, name):
  """The first sown leaf called `name` in an intermediates tree."""
  for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if name in [getattr(p, "key", None) for p in path]:
      return value
  raise KeyError(f"no {name!r} in the intermediates: is the prompt module a SMoP?")


@functools.partial(jax.jit, static_argnums=0)
def routing_index(module, params, encoder_input_tokens):
  """The prompt each example is routed to in evaluation (noise-free) [b]."""
  _, state = module.apply({"params": params}, encoder_input_tokens,
                          method=t5.Transformer.encode, mutable=["intermediates"])
  return find(state["intermediates"], "routing_index")


def routing_fractions(model, params, batches: Iterable) -> np.ndarray:
  """Fraction of the examples routed to each prompt [k] in evaluation.

  `batches` yields feature dicts with `encoder_input_tokens`, or
  `(index, features)` pairs with the global batch's example indices, -1 for
  padding rows (evaluation.batches and global_index), which do not count.
  """
  counts = np.zeros(model.module.prompt.num_prompts, np.int64)
  for batch in batches:
    index, feats = batch if isinstance(batch, tuple) else (None, batch)
    chosen = partitioning.gather(routing_index(model.module, params, feats["encoder_input_tokens"]))
    if index is not None:
      chosen = chosen[np.asarray(index) >= 0]
    counts += np.bincount(chosen, minlength=counts.size)
  return counts / max(counts.sum(), 1)


def routing_metrics(fractions) -> dict:
  """[k] -> {'routing/prompt_0': f_0, ...} (the names pt-train logs)."""
  return {f"routing/prompt_{i}": float(f) for i, f in enumerate(np.asarray(fractions))}


def eval_metrics(model, params, batches: Iterable) -> dict:
  """{'routing/prompt_i': share of the examples routed to prompt i}: what a
  SMoP model adds to each task's evaluation (methods.eval_metrics_fn)."""
  return routing_metrics(routing_fractions(model, params, batches))
