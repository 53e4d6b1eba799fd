"""The unified parameter-efficient family of He et al. (ICLR 2022), on the
frozen T5: prefix tuning, sequential and parallel adapters, LoRA, and their
combinations (the MAM adapter), each filling the layers' named sites
(`layers.Sites`) without touching the frozen model's T5X parameter names.

A method is a frozen dataclass (hashable, so the model stays a valid static jit
argument) that answers `projection`, `prefix` and `adapter` for each site with
a module factory, or None. gin binds one per slot of `Methods` (gin/methods/):
listing two method files combines them. Parameters, always float32 and all
trainable (`TRAINABLE_PARAMS` matches exactly these names):

  LoRA      .../{query,key,value,out,wi,wi_0,wi_1,wo}/lora/a  [in, r]   (A)
            .../{...}/lora/b                                 [r, out]  (B, zeros)
  prefix    .../{attention,self_attention,encoder_decoder_attention}/prefix/key, value
                                                            [l, heads*head_dim]
            (with an MLP reparameterisation instead .../prefix/embedding [l, d],
            .../prefix/hidden [d, m], .../prefix/out [m, 2*heads*head_dim])
  adapters  {stack}/layers_{i}/{sublayer}_adapter/down [d, r], up [r, d] (zeros)

Bad settings raise `MethodError` when gin builds the method (before pt-train
writes MODEL_DIR), printed as one `pt-train: error:` line.
"""
import dataclasses
import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.model import layers

# Every method's parameters, by their names (T5X's frozen names never match):
# the `TRAINABLE_PARAMS` of gin/runs/*.gin. Patterns that match no parameter of
# a model (e.g. LoRA's in plain prompt tuning) select nothing.
TRAINABLE_PARAMS = ("encoder/prompt/.*", ".*/lora/.*", ".*/prefix/.*", ".*_adapter/.*")

ATTENTIONS = ("encoder/attention", "decoder/self_attention",
              "decoder/encoder_decoder_attention")
SUBLAYERS = ATTENTIONS + ("encoder/mlp", "decoder/mlp")
PROJECTIONS = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo")
# Prefixes longer than this are refused: the paper's longest is 200 (Li and
# Liang, 2021); a longer one is almost surely a typo, and costs memory in every
# attention of every layer.
MAX_PREFIX_LENGTH = 1024

# A's initialisation as PEFT's (torch's kaiming_uniform with a=sqrt(5)):
# uniform in +-1/sqrt(fan_in).
lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class MethodError(ValueError):
  """A bad method setting (rank, length, target, scaling); says what to fix."""


def _sublayer_names(names, allowed, what):
  """Expands 'attention' to every attention of both stacks; checks the names."""
  out = []
  for name in names:
    matched = [s for s in allowed if s == name or s.split("/")[-1] == name
               or (name == "attention" and s in ATTENTIONS)]
    if not matched:
      raise MethodError(f"{what}: unknown sublayer {name!r} (choose from 'attention', "
                        f"{', '.join(repr(s.split('/')[-1]) for s in SUBLAYERS[1:])} or "
                        "a '{stack}/{sublayer}' name)")
    out += matched
  return tuple(sorted(set(out)))


# ---------------------------------------------------------------- modules


class LoRA(nn.Module):
  """x -> dropout(x) @ A @ B * alpha / r (Hu et al., 2022); B starts at zero."""
  rank: int
  alpha: float
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, features, deterministic=True):
    a = self.param("a", lora_a_init, (x.shape[-1], self.rank), jnp.float32)
    b = self.param("b", nn.initializers.zeros, (self.rank, features), jnp.float32)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    h = jnp.einsum("...i,ir->...r", x, jnp.asarray(a, x.dtype))
    return jnp.einsum("...r,ro->...o", h, jnp.asarray(b, x.dtype)) * (self.alpha / self.rank)


class Prefix(nn.Module):
  """Key and value prefixes [l, features] of one attention (Li and Liang, 2021).

  With `hidden_dim`, the prefixes are `tanh(E @ W1) @ W2` of an embedding E
  [l, emb_dim] (the reparameterisation that stabilises training); the same
  function runs in training and evaluation, so what is saved is E, W1, W2.
  """
  length: int
  emb_dim: int
  hidden_dim: Optional[int] = None
  init_scale: float = 0.5

  @nn.compact
  def __call__(self, features):
    if self.hidden_dim is None:
      init = nn.initializers.uniform(2 * self.init_scale)
      shift = lambda rng, shape, dtype: init(rng, shape, dtype) - self.init_scale
      key = self.param("key", shift, (self.length, features), jnp.float32)
      value = self.param("value", shift, (self.length, features), jnp.float32)
      return key, value
    embedding = self.param("embedding", nn.initializers.normal(1.0),
                           (self.length, self.emb_dim), jnp.float32)
    hidden = self.param("hidden", layers.default_kernel_init,
                        (self.emb_dim, self.hidden_dim), jnp.float32)
    out = self.param("out", layers.default_kernel_init,
                     (self.hidden_dim, 2 * features), jnp.float32)
    rows = jnp.tanh(embedding @ hidden) @ out
    return rows[:, :features], rows[:, features:]


class Adapter(nn.Module):
  """A bottleneck adapter (Houlsby et al., 2019; He et al., 2022), bias-free
  as every T5 projection: f(h) = relu(h @ down) @ up * scale, `up` zero.

  Sequential: output + f(output). Parallel: output + f(the sublayer's input),
  the normed input the sublayer itself reads.
  """
  bottleneck: int
  scale: float = 1.0
  parallel: bool = False

  @nn.compact
  def __call__(self, inputs, outputs, deterministic=True):
    del deterministic
    d = outputs.shape[-1]
    # He et al.'s code initialises the parallel adapter's down projection as
    # LoRA's A ('lora' init: uniform in +-1/sqrt(d)); the sequential one with
    # T5X's kernel init (their 'bert' init, N(0, 0.02) for both projections,
    # would not start at the frozen model).
    down_init = lora_a_init if self.parallel else layers.default_kernel_init
    down = self.param("down", down_init, (d, self.bottleneck), jnp.float32)
    up = self.param("up", nn.initializers.zeros, (self.bottleneck, d), jnp.float32)
    h = inputs if self.parallel else outputs
    h = nn.relu(jnp.einsum("...d,dr->...r", h, jnp.asarray(down, h.dtype)))
    delta = jnp.einsum("...r,rd->...d", h, jnp.asarray(up, h.dtype)) * self.scale
    return outputs + jnp.asarray(delta, outputs.dtype)


# ---------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class LoRAMethod(layers.Sites):
  """LoRA of rank `rank` on the projections named in `targets` in every
  attention and MLP that has them ('wi' also means wi_0 and wi_1 of the gated
  T5 1.1 MLP). PEFT's default for T5: query and value, alpha 8, rank 8."""
  rank: int = 8
  alpha: float = 8.0
  dropout_rate: float = 0.0
  targets: Tuple[str, ...] = ("query", "value")

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    if not isinstance(self.rank, int) or self.rank < 1:
      raise MethodError(f"LORA_RANK must be a positive integer, got {self.rank}")
    if not self.alpha > 0:
      raise MethodError(f"LORA_ALPHA must be > 0 (the scaling is alpha / rank), got {self.alpha}")
    if not 0 <= self.dropout_rate < 1:
      raise MethodError(f"LORA_DROPOUT must be in [0, 1), got {self.dropout_rate}")
    unknown = [t for t in self.targets if t not in PROJECTIONS]
    if unknown or not self.targets:
      raise MethodError(f"LORA_TARGETS: unknown projection {unknown[0] if unknown else None!r} "
                        f"(choose from {', '.join(PROJECTIONS)})")

  def projection(self, where):
    name = where.split("/")[-1]
    if name in self.targets or (name.startswith("wi_") and "wi" in self.targets):
      return functools.partial(LoRA, self.rank, self.alpha, self.dropout_rate, name="lora")
    return None


@dataclasses.dataclass(frozen=True)
class PrefixMethod(layers.Sites):
  """Prefix tuning: `length` learned key and value rows in every attention
  named in `attentions` (default: all, self and cross, in both stacks)."""
  length: int = 30
  emb_dim: int = 512
  hidden_dim: Optional[int] = None
  attentions: Tuple[str, ...] = ATTENTIONS
  # Hugging Face PEFT's placement (methods/prefix_peft.gin): the prefix is a
  # key/value cache of the decoder's self-attention, at positions 0..l-1 with
  # T5's relative position bias, the targets following at l, l+1, ...
  positioned: bool = False

  def __post_init__(self):
    object.__setattr__(self, "attentions",
                       _sublayer_names(self.attentions, ATTENTIONS, "PREFIX_ATTENTIONS"))
    if self.positioned and self.attentions != ("decoder/self_attention",):
      raise MethodError("a positioned prefix (PEFT's placement) is only defined for the "
                        "decoder's self-attention: set PREFIX_ATTENTIONS = ['self_attention']")
    if not isinstance(self.length, int) or not 1 <= self.length <= MAX_PREFIX_LENGTH:
      raise MethodError(f"PREFIX_LENGTH must be an integer in 1..{MAX_PREFIX_LENGTH}, "
                        f"got {self.length}")
    if self.hidden_dim is not None and (not isinstance(self.hidden_dim, int)
                                        or self.hidden_dim < 1):
      raise MethodError(f"PREFIX_HIDDEN_DIM must be None or a positive integer, "
                        f"got {self.hidden_dim}")

  def prefix(self, where):
    if where in self.attentions:
      return functools.partial(Prefix, self.length, self.emb_dim, self.hidden_dim, name="prefix")
    return None

  def prefix_positions(self, where):
    return self.length if self.positioned and where in self.attentions else 0


@dataclasses.dataclass(frozen=True)
class AdapterMethod(layers.Sites):
  """Bottleneck adapters of width `bottleneck` after (sequential) or beside
  (parallel) each sublayer named in `sublayers`, output scaled by `scale`."""
  bottleneck: int = 64
  scale: float = 1.0
  parallel: bool = False
  sublayers: Tuple[str, ...] = SUBLAYERS

  def __post_init__(self):
    object.__setattr__(self, "sublayers",
                       _sublayer_names(self.sublayers, SUBLAYERS, "ADAPTER_SUBLAYERS"))
    if not isinstance(self.bottleneck, int) or self.bottleneck < 1:
      raise MethodError(f"ADAPTER_BOTTLENECK must be a positive integer, got {self.bottleneck}")
    if not self.scale > 0:
      raise MethodError(f"ADAPTER_SCALE must be > 0, got {self.scale}")

  def adapter(self, where):
    if where in self.sublayers:
      name = where.split("/")[-1] + "_adapter"
      return functools.partial(Adapter, self.bottleneck, self.scale, self.parallel, name=name)
    return None


@dataclasses.dataclass(frozen=True)
class Methods(layers.Sites):
  """The methods a run combines, one per slot (gin/methods/*.gin each bind one):
  each site is filled by the one method that fills it."""
  lora: Optional[layers.Sites] = None
  prefix_tuning: Optional[layers.Sites] = None
  adapters: Optional[layers.Sites] = None

  @property
  def parts(self):
    return tuple(p for p in (self.lora, self.prefix_tuning, self.adapters)
                 if p is not None)

  def _one(self, kind, where):
    found = [f for f in (getattr(p, kind)(where) for p in self.parts) if f is not None]
    return found[0] if found else None

  def projection(self, where):
    return self._one("projection", where)

  def prefix(self, where):
    return self._one("prefix", where)

  def adapter(self, where):
    return self._one("adapter", where)

  def prefix_positions(self, where):
    return max([p.prefix_positions(where) for p in self.parts] + [0])


# ---------------------------------------------------------------- counting


def count(tree) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def describe_counts(trainable, frozen) -> str:
  """'trainable parameters: N (x% of the frozen model's M)'."""
  n, m = count(trainable), count(frozen)
  return (f"trainable parameters: {n:,} ({100.0 * n / max(m, 1):.4g}% of the frozen "
          f"model's {m:,})")
