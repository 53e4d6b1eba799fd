"""T5 building blocks in Flax, with T5X's parameter names and numerics.

Written here because flaxformer and t5x are not on PyPI. Every parameter is
created with logical axis names (`nn.with_logical_partitioning`) so that
`partitioning.py` can place it on a mesh by rules, as T5X does.

Numerics (see ../shared/T5X_FORMAT.md): no biases; RMS norm without mean
subtraction, computed in float32; attention logits not scaled by
sqrt(head_dim); softmax in float32; one relative position bias per stack.
"""
import functools
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
NEG_INF = -1e10  # T5X's mask bias value.

# Default kernel initialiser of T5X (variance scaling, fan-in, truncated normal).
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _param(module, name, init, shape, axes, dtype=jnp.float32):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) * scale, in float32, cast back to dtype."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return jnp.asarray(y * jnp.asarray(scale, jnp.float32), self.dtype)


class Dense(nn.Module):
  """A bias-free projection whose kernel is stored [in, out] as in T5X."""
  features: int
  kernel_axes: tuple
  dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = default_kernel_init

  @nn.compact
  def __call__(self, x):
    kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features),
                    self.kernel_axes)
    return jnp.einsum("...i,io->...o", jnp.asarray(x, self.dtype),
                      jnp.asarray(kernel, self.dtype))


class Embed(nn.Module):
  """Token embedding table `embedding` [vocab, emb]; `attend` gives tied logits."""
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                            (self.num_embeddings, self.features), ("vocab", "embed"))

  def __call__(self, ids):
    return jnp.asarray(jnp.take(self.embedding, ids, axis=0), self.dtype)

  def attend(self, x):
    return jnp.einsum("...d,vd->...v", jnp.asarray(x, self.dtype),
                      jnp.asarray(self.embedding, self.dtype))


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
  """T5's bucketing: half the buckets are exact offsets, the rest log-spaced.

  relative_position = memory_position - query_position.
  """
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return ret + np.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """`rel_embedding` [heads, buckets]; returns a bias [1, heads, qlen, klen]."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, qlen, klen, bidirectional=True):
    # Computed with numpy: the bucket pattern is static for given lengths.
    context = np.arange(qlen, dtype=np.int32)[:, None]
    memory = np.arange(klen, dtype=np.int32)[None, :]
    buckets = relative_position_bucket(memory - context, bidirectional,
                                       self.num_buckets, self.max_distance)
    rel_embedding = _param(
        self, "rel_embedding",
        nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
        (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    bias = jnp.take(jnp.asarray(rel_embedding, self.dtype), buckets, axis=1)  # [h, q, k]
    return bias[None]


def attention_bias(mask, dtype):
  """A {0, NEG_INF} bias from a boolean mask [b, 1|h, q, k]."""
  return jnp.where(mask, 0.0, NEG_INF).astype(dtype)


class MultiHeadAttention(nn.Module):
  """T5 attention: q/k/v/out kernels stored flat as [emb, heads*head_dim]."""
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, bias, deterministic=True):
    inner = self.num_heads * self.head_dim
    emb = inputs_q.shape[-1]
    # T5X folds 1/sqrt(head_dim) into the query initialisation.
    dense = functools.partial(Dense, inner, ("embed", "joined_kv"), self.dtype)
    query = dense(name="query", kernel_init=nn.initializers.variance_scaling(
        1.0 / self.head_dim, "fan_in", "normal"))(inputs_q)
    key = dense(name="key", kernel_init=nn.initializers.variance_scaling(
        1.0, "fan_in", "normal"))(inputs_kv)
    value = dense(name="value", kernel_init=nn.initializers.variance_scaling(
        1.0, "fan_in", "normal"))(inputs_kv)
    split = lambda x: x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
    query, key, value = split(query), split(key), split(value)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    logits = jnp.asarray(logits, jnp.float32) + jnp.asarray(bias, jnp.float32)
    weights = jnp.asarray(jax.nn.softmax(logits, axis=-1), self.dtype)
    if not deterministic and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate, broadcast_dims=())(weights, deterministic=False)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    out = out.reshape(out.shape[:-2] + (inner,))
    return Dense(emb, ("joined_kv", "embed"), self.dtype, name="out",
                 kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"))(out)


ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=True),  # tanh approximation, as T5X
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu_exact": functools.partial(nn.gelu, approximate=False),
    "silu": nn.silu,
    "linear": lambda x: x,
}


class MlpBlock(nn.Module):
  """T5 MLP. Gated (`wi_0`, `wi_1`) when two activations are given, else `wi`."""
  mlp_dim: int
  activations: tuple = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    emb = x.shape[-1]
    dense = functools.partial(Dense, self.mlp_dim, ("embed", "mlp"), self.dtype)
    if len(self.activations) == 1:
      h = ACTIVATIONS[self.activations[0]](dense(name="wi")(x))
    else:
      h = 1
      for i, act in enumerate(self.activations):
        h = h * ACTIVATIONS[act](dense(name=f"wi_{i}")(x))
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    return Dense(emb, ("mlp", "embed"), self.dtype, name="wo")(h)
