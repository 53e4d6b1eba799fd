"""The T5 encoder-decoder (T5 1.0, T5 1.1, LM-adapted T5 1.1, mT5) in Flax.

The parameter tree and shapes are T5X's (`token_embedder/embedding`,
`encoder/layers_0/attention/query/kernel`, `decoder/logits_dense/kernel`, ...),
so a T5X checkpoint's `target` tree loads into it unchanged.

Prompt tuning hooks in at one place: `Encoder` takes an optional prompt module
(`prompts.Prompt`, `smop.SMoP`, ...) that receives the embedded inputs and
returns them with the prompt prepended, plus the extended mask. Its parameters
live under `encoder/prompt/...`, the path the authors' released checkpoints use
(`encoder.prompt.prompt.npy`).

The other parameter-efficient methods (prefix tuning, adapters, LoRA: see
methods.py) fill the layers' named sites (`layers.Sites`): `Transformer.sites`
is passed down to every attention, MLP and layer with the site's name; the
default `layers.IDENTITY` fills none, so the plain model is unchanged.
"""
import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import gin_utils
from prompt_tuning.model import layers
from prompt_tuning.model import weights

# Rematerialisation of the stacks' layers (`T5Config.remat_policy`, gin macro
# REMAT_POLICY): what the backward pass recomputes instead of keeping.
#   'none'     keep every activation (fastest, most memory);
#   'layer'    `nn.remat` of each encoder and decoder layer: only the layers'
#              inputs are kept, each layer's forward runs again in the backward;
#   'matmuls'  the same, but the outputs of the weight matmuls are kept
#              (`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`): only
#              the cheap elementwise work (norms, activations, softmax, attention
#              einsums) is recomputed;
#   'auto'     'none' on CPU, 'matmuls' on GPU and TPU.
# Parameter names are the same under every policy.
REMAT_POLICIES = ("auto", "none", "layer", "matmuls")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Dimensions and numerics of a T5 model (T5X's gin macro names in comments)."""
  vocab_size: int = 32128              # NUM_EMBEDDINGS
  emb_dim: int = 512                   # EMBED_DIM
  num_heads: int = 6                   # NUM_HEADS
  head_dim: int = 64                   # HEAD_DIM
  mlp_dim: int = 1024                  # MLP_DIM
  num_encoder_layers: int = 8          # NUM_ENCODER_LAYERS
  num_decoder_layers: int = 8          # NUM_DECODER_LAYERS
  mlp_activations: Sequence[str] = ("gelu", "linear")
  logits_via_embedding: bool = False   # True for T5 1.0 (tied, scaled logits)
  dropout_rate: float = 0.1            # DROPOUT_RATE
  dtype: str = "bfloat16"              # ACTIVATION_DTYPE
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  remat_policy: str = "auto"           # REMAT_POLICY (see REMAT_POLICIES)

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise gin_utils.ConfigError(
          f"REMAT_POLICY must be one of {', '.join(map(repr, REMAT_POLICIES))}, "
          f"got {self.remat_policy!r}")

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)


def resolve_remat_policy(policy: str) -> str:
  """'auto' -> the policy for the default backend; others unchanged. While
  only shapes are traced (weights.shapes_only), 'none' (the shapes are the
  same): asking for the backend would start one (pt-sweep's parent must not)."""
  if policy == "auto":
    if weights.tracing_shapes_only():
      return "none"
    return "none" if jax.default_backend() == "cpu" else "matmuls"
  return policy


def _remat(layer_class, policy, deterministic_argnum):
  """The layer class under a remat policy; `nn.remat` of a class keeps the
  instances' names, so the parameter tree is unchanged."""
  policy = resolve_remat_policy(policy)
  if policy == "none":
    return layer_class
  saveable = (None if policy == "layer"
              else jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  return nn.remat(layer_class, static_argnums=(deterministic_argnum,), policy=saveable)


def _sublayer(module, stack, name, sublayer, normed, *args, deterministic):
  """A sublayer's output, through the adapter site `{stack}/{name}` (if filled)."""
  y = sublayer(normed, *args, deterministic)
  adapter = module.sites.adapter(f"{stack}/{name}")
  if adapter is not None:
    y = adapter()(normed, y, deterministic)
  return y


class EncoderLayer(nn.Module):
  config: T5Config
  sites: layers.Sites = layers.IDENTITY

  @nn.compact
  def __call__(self, x, bias, deterministic):
    cfg = self.config
    dt = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = layers.RMSNorm(dtype=dt, name="pre_attention_layer_norm")(x)
    attention = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt,
                                          self.sites, "encoder/attention", name="attention")
    y = _sublayer(self, "encoder", "attention", lambda y, b, d: attention(y, y, b, d), y, bias,
                  deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype=dt, name="pre_mlp_layer_norm")(x)
    mlp = layers.MlpBlock(cfg.mlp_dim, tuple(cfg.mlp_activations), cfg.dropout_rate, dt,
                          self.sites, "encoder/mlp", name="mlp")
    y = _sublayer(self, "encoder", "mlp", mlp, y, deterministic=deterministic)
    return x + dropout(y, deterministic=deterministic)


class DecoderLayer(nn.Module):
  config: T5Config
  sites: layers.Sites = layers.IDENTITY

  @nn.compact
  def __call__(self, x, encoded, self_bias, cross_bias, deterministic, cache=None, step=None,
               cross_kv_only=False):
    """Teacher forcing: x [b, T, d] -> [b, T, d].

    Incremental decoding: `cross_kv_only` returns the cross-attention's
    (key, value) of `encoded` (computed once per decode); with `cache`
    ({'self': (key, value) [b, max_len, h*d], 'cross': (key, value) [b, S, h*d]})
    x [b, 1, d] is the token at position `step` (encoded unused) and the
    result is (output, updated cache).
    """
    cfg = self.config
    dt = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    attention = lambda name: layers.MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, self.sites, f"decoder/{name}",
        name=name)
    if cross_kv_only:
      return attention("encoder_decoder_attention")(None, encoded, None, deterministic,
                                                    kv_only=True)
    new_cache = {}
    self_attention = attention("self_attention")
    cross_attention = attention("encoder_decoder_attention")

    def self_attend(y, b, d):
      if cache is None:
        return self_attention(y, y, b, d)
      out, new_cache["self"] = self_attention(y, y, b, d, cache=cache["self"], cache_index=step)
      return out

    def cross_attend(y, e, b, d):
      if cache is None:
        return cross_attention(y, e, b, d)
      new_cache["cross"] = cache["cross"]
      return cross_attention(y, None, b, d, cache=cache["cross"])

    y = layers.RMSNorm(dtype=dt, name="pre_self_attention_layer_norm")(x)
    y = _sublayer(self, "decoder", "self_attention", self_attend,
                  y, self_bias, deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype=dt, name="pre_cross_attention_layer_norm")(x)
    y = _sublayer(self, "decoder", "encoder_decoder_attention",
                  cross_attend, y, encoded, cross_bias,
                  deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype=dt, name="pre_mlp_layer_norm")(x)
    mlp = layers.MlpBlock(cfg.mlp_dim, tuple(cfg.mlp_activations), cfg.dropout_rate, dt,
                          self.sites, "decoder/mlp", name="mlp")
    y = _sublayer(self, "decoder", "mlp", mlp, y, deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    return x if cache is None else (x, new_cache)


class Encoder(nn.Module):
  """Embeds tokens, prepends the prompt (if any), runs the stack.

  Returns (encoded [b, P+L, d], encoder mask [b, P+L] bool).
  """
  config: T5Config
  shared_embedding: nn.Module
  prompt: Optional[nn.Module] = None
  sites: layers.Sites = layers.IDENTITY

  @nn.compact
  def __call__(self, input_tokens, deterministic=True):
    cfg = self.config
    dt = cfg.activation_dtype
    x = self.shared_embedding(input_tokens)
    mask = input_tokens > 0
    if self.prompt is not None:
      x, mask = self.prompt(input_tokens, x, mask, deterministic=deterministic)
      x = jnp.asarray(x, dt)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    length = x.shape[1]
    bias = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, dt, name="relpos_bias")(length, length, bidirectional=True)
    bias = bias + layers.attention_bias(mask[:, None, None, :] & mask[:, None, :, None], dt)
    layer = _remat(EncoderLayer, cfg.remat_policy, 3)  # 3: `deterministic` (self is 0)
    for i in range(cfg.num_encoder_layers):
      x = layer(cfg, self.sites, name=f"layers_{i}")(x, bias, deterministic)
    x = layers.RMSNorm(dtype=dt, name="encoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    return x, mask


class Decoder(nn.Module):
  """Teacher-forced decoder; returns float32 logits [b, T, vocab].

  Incremental decoding (models.greedy_decode): `init_cache_length=L` returns
  the decoding cache of a sequence of L tokens for the encoder outputs (per
  layer: the cross-attention keys/values, computed once, and empty
  self-attention keys/values [b, L, heads*head_dim]); with `cache`, the input
  is the one token [b, 1] at position `step` and the result is (logits
  [b, 1, vocab], updated cache). Its self-attention bias and mask are row
  `step` of the teacher-forced ones for L tokens (whatever they hold, e.g. a
  positioned prefix), so both paths compute the same thing.
  """
  config: T5Config
  shared_embedding: nn.Module
  sites: layers.Sites = layers.IDENTITY

  @nn.compact
  def __call__(self, encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens=None,
               deterministic=True, cache=None, step=None, init_cache_length=None):
    cfg = self.config
    dt = cfg.activation_dtype
    if init_cache_length is not None:
      empty = jnp.zeros((encoded.shape[0], init_cache_length, cfg.num_heads * cfg.head_dim), dt)
      return {f"layers_{i}": {
          "self": (empty, empty),
          "cross": DecoderLayer(cfg, self.sites, name=f"layers_{i}")(
              None, encoded, None, None, True, cross_kv_only=True)}
              for i in range(cfg.num_decoder_layers)}
    incremental = cache is not None
    length = (cache["layers_0"]["self"][0].shape[1] if incremental
              else decoder_input_tokens.shape[1])
    # T5X: padding is read off the targets (inputs start with id 0 = pad).
    real = (decoder_target_tokens if decoder_target_tokens is not None
            else jnp.ones_like(decoder_input_tokens)) > 0
    cross_mask = real[:, None, :, None] & encoder_mask[:, None, None, :]
    # A positioned prefix (PEFT's placement) sits at positions 0..l-1, visible
    # to every query, and the tokens follow it.
    offset = self.sites.prefix_positions("decoder/self_attention")
    relpos = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, dt, name="relpos_bias")
    if incremental:
      # Only the query row of the token at `step` (cross is [b, 1, 1, S]
      # already): the prefix and the tokens up to `step` are visible.
      self_bias = relpos(length, offset + length, bidirectional=False, offset=offset,
                         query_index=step)
      visible = jnp.arange(offset + length) <= offset + step
      self_bias = self_bias + layers.attention_bias(visible[None, None, None, :], dt)
    else:
      causal = jnp.tril(jnp.ones((length, length), bool))
      self_mask = causal[None, None] & real[:, None, None, :] & real[:, None, :, None]
      if offset:
        seen = jnp.broadcast_to(real[:, None, :, None], real.shape[:1] + (1, length, offset))
        self_mask = jnp.concatenate([seen, self_mask], axis=-1)
      self_bias = relpos(length, offset + length, bidirectional=False, offset=offset)
      self_bias = self_bias + layers.attention_bias(self_mask, dt)
    cross_bias = layers.attention_bias(cross_mask, dt)

    x = self.shared_embedding(decoder_input_tokens)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    layer = _remat(DecoderLayer, cfg.remat_policy, 5)  # 5: `deterministic` (self is 0)
    new_cache = {}
    for i in range(cfg.num_decoder_layers):
      name = f"layers_{i}"
      if incremental:  # no gradient here: no remat
        x, new_cache[name] = DecoderLayer(cfg, self.sites, name=name)(
            x, None, self_bias, cross_bias, deterministic, cache=cache[name], step=step)
      else:
        x = layer(cfg, self.sites, name=name)(x, encoded, self_bias, cross_bias, deterministic)
    x = layers.RMSNorm(dtype=dt, name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(x / jnp.sqrt(jnp.asarray(x.shape[-1], x.dtype)))
    else:
      logits = layers.Dense(cfg.vocab_size, ("embed", "vocab"), dt,
                            kernel_init=nn.initializers.variance_scaling(
                                1.0, "fan_in", "truncated_normal"),
                            name="logits_dense")(x)
    logits = jnp.asarray(logits, jnp.float32)
    return (logits, new_cache) if incremental else logits


class Transformer(nn.Module):
  """Encoder-decoder T5 with an optional prompt module in the encoder and the
  layers' sites filled by `sites` (methods.py; default: none)."""
  config: T5Config
  prompt: Optional[Any] = None  # an unbound prompt module (cloned into the encoder)
  sites: layers.Sites = layers.IDENTITY

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
    prompt = self.prompt.clone(name="prompt") if self.prompt is not None else None
    self.encoder = Encoder(cfg, self.token_embedder, prompt, self.sites)
    self.decoder = Decoder(cfg, self.token_embedder, self.sites)

  def encode(self, encoder_input_tokens, deterministic=True):
    return self.encoder(encoder_input_tokens, deterministic=deterministic)

  def decode(self, encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens=None,
             deterministic=True):
    return self.decoder(encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens,
                        deterministic=deterministic)

  def init_decode_cache(self, encoded, encoder_mask, length):
    """The decoding cache for `length` decoder tokens (see `Decoder`)."""
    return self.decoder(encoded, encoder_mask, None, init_cache_length=length)

  def decode_step(self, encoder_mask, tokens, step, cache):
    """(logits [b, 1, vocab], updated cache) of the tokens [b, 1] at `step`."""
    return self.decoder(None, encoder_mask, tokens, cache=cache, step=step)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               deterministic=True):
    encoded, mask = self.encode(encoder_input_tokens, deterministic)
    return self.decode(encoded, mask, decoder_input_tokens, decoder_target_tokens,
                       deterministic)
