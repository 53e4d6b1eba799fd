"""T5 building blocks in Flax, with T5X's parameter names and numerics.

Written here because flaxformer and t5x are not on PyPI. Every parameter is
created with logical axis names (`nn.with_logical_partitioning`) so that
`partitioning.py` can place it on a mesh by rules, as T5X does.

Numerics (see ../shared/T5X_FORMAT.md): no biases; RMS norm without mean
subtraction, computed in float32; attention logits not scaled by
sqrt(head_dim); softmax in float32; one relative position bias per stack.
Projections and logits go through `matmul`: operands in ACTIVATION_DTYPE,
float32 sums, the result rounded to ACTIVATION_DTYPE (what a TPU's or GPU's
bf16 matmul gives), kept in bf16 on CPU so that XLA uses its bf16 kernels.

Parameter-efficient methods (prompt_tuning/methods.py) reach inside the layers
through named sites, never through branches on a method's name: a `Sites`
object, chosen by gin, answers for each site with a module factory or None
(identity: nothing is created, so no parameter and the same computation):

  projection(where)  a delta added to a projection's output, from its input
                     (LoRA); where = '{stack}/{sublayer}/{query,key,value,out,
                     wi,wi_0,wi_1,wo}', e.g. 'decoder/encoder_decoder_attention/value'
  prefix(where)      key/value rows prepended to an attention's keys and values
                     (prefix tuning); where = '{stack}/{sublayer}'
  adapter(where)     a module `(sublayer input, sublayer output) -> output`
                     applied before the residual sum (sequential and parallel
                     adapters); where = '{stack}/{sublayer}'

with stack 'encoder' or 'decoder' and sublayer 'attention' (encoder),
'self_attention', 'encoder_decoder_attention' (decoder) or 'mlp'. The sites'
modules live under the layer's own names (`.../attention/query/lora/a`), so the
frozen model's T5X names are unchanged.
"""
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Sites:
  """Fills the layers' named sites; this base fills none (the plain model)."""

  def projection(self, where: str) -> Optional[Callable[[], nn.Module]]:
    del where
    return None

  def prefix(self, where: str) -> Optional[Callable[[], nn.Module]]:
    del where
    return None

  def adapter(self, where: str) -> Optional[Callable[[], nn.Module]]:
    del where
    return None

  def prefix_positions(self, where: str) -> int:
    """How many positions before position 0 the prefix of `where` occupies:
    0 (the default) means its rows get no position bias (He et al.); l means
    they sit at positions 0..l-1 with T5's relative bias and the sequence is
    shifted by l (Hugging Face PEFT's placement, a key/value cache). The stack
    computing the bias then builds it over l + length keys."""
    del where
    return 0


IDENTITY = Sites()


# CPU features with bf16 multiply instructions (/proc/cpuinfo's names): x86's
# AVX512-BF16 and AMX-BF16, Arm's BF16 extension.
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags_multiply_bf16(cpuinfo: str) -> bool:
  """Whether /proc/cpuinfo's text names a bf16 multiply instruction."""
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    if key.strip() in ("flags", "Features") and _BF16_CPU_FLAGS & set(value.split()):
      return True
  return False


@functools.lru_cache(maxsize=None)
def cpu_multiplies_bf16() -> bool:
  """Whether this CPU has bf16 multiply instructions, which XLA:CPU's bf16
  library kernels need to beat its float32 products. Measured on two 2-core
  AMD EPYC machines, a [2048, 2048] product: with AVX512-BF16 the bf16
  kernels run about 1.8x float32; on one with AVX2 only (no bf16
  instructions), 47 GFLOP/s against 66 for the plain bf16 einsum (which XLA
  widens to a float32 product) and 70 for float32. True where /proc/cpuinfo
  cannot be read (not Linux): the library kernels, as before this check."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      return cpu_flags_multiply_bf16(f.read())
  except OSError:
    return True


def matmul(spec, a, b, dtype):
  """einsum(spec, a, b) of a and b cast to `dtype`, with a `dtype` result.

  For float32 and off CPU, a plain einsum. On a CPU without bf16 multiply
  instructions (`cpu_multiplies_bf16`), the float32 product of the operands
  rounded to `dtype` once. For a narrower dtype (bfloat16) on a CPU with
  them, the same numbers (bf16 operands, float32 accumulation, one
  rounding to bf16) computed so that XLA:CPU keeps the operands in bf16 and uses its
  XNNPACK bf16 kernels (about 1.8x its float32 matmuls on AVX512-BF16 cores)
  instead of widening both operands to float32, which it does for a bf16
  product with a bf16 result: the product asks for a float32 result
  (`preferred_element_type`) and rounds it, and `_narrow_matmul`'s backward
  does the same for the input's cotangent. Written by hand because neither
  JAX nor Flax offers it; restricted to what XLA:CPU's library kernels take
  (no batch indices, some side >= 8: it has no fallback for bf16 x bf16 ->
  float32 products its library refuses). T5 projections and logits qualify;
  attention's batched products keep the plain einsum.
  """
  a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
  if (jnp.dtype(dtype) == jnp.float32 or jax.default_backend() != "cpu"
      or not _library_shape(spec, a.shape, b.shape)):
    return jnp.einsum(spec, a, b)
  if not cpu_multiplies_bf16():
    # The same numbers from XLA's float32 product (bf16 values are exact in
    # float32): faster there than its bf16 kernels, and, unlike the plain bf16
    # einsum, a model split over devices sums its partial products in float32
    # before the one rounding, as the narrow path does.
    return jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32)).astype(dtype)
  return _narrow_matmul(spec, a, b)


def _split_spec(spec):
  inputs, out = spec.replace(" ", "").split("->")
  lhs, rhs = inputs.split(",")
  return lhs, rhs, out


def _library_shape(spec, a_shape, b_shape):
  """Whether einsum `spec` of these shapes is one 2-D product XLA:CPU's bf16
  library kernels take: no batch index (in all three terms), no index summed
  within one operand, max(m, k, n) >= 8."""
  lhs, rhs, out = _split_spec(spec)
  if any("..." in t and not t.startswith("...") for t in (lhs, rhs, out)):
    return False
  sizes = {}
  for term, shape in ((lhs, a_shape), (rhs, b_shape)):
    named = term.replace("...", "")
    ellipsis = len(shape) - len(named)  # 0 without "...", which only leads (checked)
    sizes.update(zip(named, shape[ellipsis:]))
    if "..." in term:
      sizes.setdefault("...", int(np.prod(shape[:ellipsis])))
  letters = lambda t: [c for c in t.replace("...", "")] + (["..."] if "..." in t else [])
  m = k = n = 1
  for index, size in sizes.items():
    where = [index in letters(t) for t in (lhs, rhs, out)]
    if where == [True, True, True] or sum(where) < 2:
      return False
    if where == [True, True, False]:
      k *= size
    elif where[0]:
      m *= size
    else:
      n *= size
  return max(m, k, n) >= 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _narrow_matmul(spec, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


def _narrow_matmul_fwd(spec, a, b):
  return _narrow_matmul(spec, a, b), (a, b)


def _narrow_matmul_bwd(spec, residuals, g):
  """Cotangents 'C,B->A' and 'A,C->B' of 'A,B->C'. The input's is a library
  product too (NT instead of NN); the kernel's sums over the leading indices
  of both (a form the library refuses), so it is a plain einsum: XLA drops it
  when the kernel is frozen."""
  a, b = residuals
  lhs, rhs, out = _split_spec(spec)
  g = g.astype(a.dtype)
  da = jnp.einsum(f"{out},{rhs}->{lhs}", g, b, preferred_element_type=jnp.float32)
  db = jnp.einsum(f"{lhs},{out}->{rhs}", a, g)
  return da.astype(a.dtype), db.astype(b.dtype)


_narrow_matmul.defvjp(_narrow_matmul_fwd, _narrow_matmul_bwd)


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
  """A bias-free projection whose kernel is stored [in, out] as in T5X.

  `delta` (a site, see `Sites.projection`): a module factory whose module maps
  (x, deterministic) to a [..., features] term added to the output.
  """
  features: int
  kernel_axes: tuple
  dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = default_kernel_init
  delta: Optional[Callable[[], nn.Module]] = None

  @nn.compact
  def __call__(self, x, deterministic=True):
    kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features),
                    self.kernel_axes)
    y = matmul("...i,io->...o", x, kernel, self.dtype)
    if self.delta is not None:
      y = y + jnp.asarray(self.delta()(x, self.features, deterministic), self.dtype)
    return y


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
    return matmul("...d,vd->...v", x, self.embedding, self.dtype)


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
  def __call__(self, qlen, klen, bidirectional=True, offset=0, query_index=None):
    """Queries at positions offset..offset+qlen-1, keys at 0..klen-1.

    query_index (a traced scalar; incremental decoding): only that query's row,
    [1, heads, 1, klen].
    """
    # Computed with numpy: the bucket pattern is static for given lengths.
    context = offset + np.arange(qlen, dtype=np.int32)[:, None]
    memory = np.arange(klen, dtype=np.int32)[None, :]
    buckets = relative_position_bucket(memory - context, bidirectional,
                                       self.num_buckets, self.max_distance)
    if query_index is not None:
      buckets = jax.lax.dynamic_slice_in_dim(jnp.asarray(buckets, jnp.int32), query_index, 1, 0)
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
  """T5 attention: q/k/v/out kernels stored flat as [emb, heads*head_dim].

  Sites (`sites`, at `where`, e.g. 'encoder/attention'): a delta on each of the
  four projections, and a prefix: a module returning (key, value) rows
  [l, heads*head_dim] prepended to every example's keys and values, which
  every query sees (no position bias, never masked); or, where
  `sites.prefix_positions(where)` is l > 0, `bias` already spans the l prefix
  keys (their position bias and mask, built by the stack).
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  sites: Sites = IDENTITY
  where: str = ""

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, bias, deterministic=True, cache=None,
               cache_index=None, kv_only=False):
    """Attention of inputs_q [b, q, emb] over inputs_kv [b, k, emb]; bias
    [b|1, h|1, q, k] (q x (l + k) for a positioned prefix).

    Incremental decoding (models.greedy_decode):
      kv_only: returns this attention's projected (key, value) [b, k, h*d] of
        inputs_kv (no prefix): computed once, e.g. over the encoder output.
      cache=(key, value) [b, S, h*d], cache_index=None: attends over these
        keys and values instead of projecting inputs_kv (which is unused).
      cache=(key, value) [b, S, h*d], cache_index=i: projects inputs_kv
        [b, 1, emb] (the token at position i), writes it into row i of the
        cache and attends over the whole cache (bias masks rows > i); returns
        (output, updated cache).
    The prefix rows (if any) are prepended to the keys and values as always.
    """
    inner = self.num_heads * self.head_dim
    delta = lambda name: self.sites.projection(f"{self.where}/{name}")
    # T5X folds 1/sqrt(head_dim) into the query initialisation.
    dense = lambda name, scale: Dense(
        inner, ("embed", "joined_kv"), self.dtype, name=name, delta=delta(name),
        kernel_init=nn.initializers.variance_scaling(scale, "fan_in", "normal"))
    key_dense, value_dense = dense("key", 1.0), dense("value", 1.0)
    if kv_only:
      return key_dense(inputs_kv, deterministic), value_dense(inputs_kv, deterministic)
    query = dense("query", 1.0 / self.head_dim)(inputs_q, deterministic)
    if cache is None:
      key = key_dense(inputs_kv, deterministic)
      value = value_dense(inputs_kv, deterministic)
    elif cache_index is None:
      key, value = cache
    else:
      write = lambda c, new: jax.lax.dynamic_update_slice_in_dim(
          c, jnp.asarray(new, c.dtype), cache_index, 1)
      key = write(cache[0], key_dense(inputs_kv, deterministic))
      value = write(cache[1], value_dense(inputs_kv, deterministic))
      cache = (key, value)
    prefix = self.sites.prefix(self.where)
    if prefix is not None:
      prefix_key, prefix_value = prefix()(inner)
      rows = lambda p: jnp.broadcast_to(jnp.asarray(p, self.dtype)[None],
                                        (key.shape[0],) + p.shape)
      key = jnp.concatenate([rows(prefix_key), key], axis=1)
      value = jnp.concatenate([rows(prefix_value), value], axis=1)
      if not self.sites.prefix_positions(self.where):
        pad = [(0, 0)] * (bias.ndim - 1) + [(prefix_key.shape[0], 0)]
        bias = jnp.pad(bias, pad)  # prefix positions: bias 0 (visible, no position)
    split = lambda x: x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
    query, key, value = split(query), split(key), split(value)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    logits = jnp.asarray(logits, jnp.float32) + jnp.asarray(bias, jnp.float32)
    weights = jnp.asarray(jax.nn.softmax(logits, axis=-1), self.dtype)
    if not deterministic and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate, broadcast_dims=())(weights, deterministic=False)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    out = out.reshape(out.shape[:-2] + (inner,))
    out = Dense(inputs_q.shape[-1], ("joined_kv", "embed"), self.dtype, name="out",
                delta=delta("out"),
                kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"))(
                    out, deterministic)
    return (out, cache) if cache_index is not None else out


ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=True),  # tanh approximation, as T5X
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu_exact": functools.partial(nn.gelu, approximate=False),
    "silu": nn.silu,
    "linear": lambda x: x,
}


class MlpBlock(nn.Module):
  """T5 MLP. Gated (`wi_0`, `wi_1`) when two activations are given, else `wi`.

  Sites (`sites`, at `where`, e.g. 'decoder/mlp'): a delta on each projection.
  """
  mlp_dim: int
  activations: tuple = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  sites: Sites = IDENTITY
  where: str = ""

  @nn.compact
  def __call__(self, x, deterministic=True):
    emb = x.shape[-1]
    dense = lambda name, features, axes: Dense(
        features, axes, self.dtype, name=name,
        delta=self.sites.projection(f"{self.where}/{name}"))
    if len(self.activations) == 1:
      h = ACTIVATIONS[self.activations[0]](
          dense("wi", self.mlp_dim, ("embed", "mlp"))(x, deterministic))
    else:
      h = 1
      for i, act in enumerate(self.activations):
        h = h * ACTIVATIONS[act](
            dense(f"wi_{i}", self.mlp_dim, ("embed", "mlp"))(x, deterministic))
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    return dense("wo", emb, ("mlp", "embed"))(h, deterministic)
