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

from prompt_tuning import layers


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

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)


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
  def __call__(self, x, encoded, self_bias, cross_bias, deterministic):
    cfg = self.config
    dt = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    attention = lambda name: layers.MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, self.sites, f"decoder/{name}",
        name=name)
    y = layers.RMSNorm(dtype=dt, name="pre_self_attention_layer_norm")(x)
    self_attention = attention("self_attention")
    y = _sublayer(self, "decoder", "self_attention", lambda y, b, d: self_attention(y, y, b, d),
                  y, self_bias, deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype=dt, name="pre_cross_attention_layer_norm")(x)
    y = _sublayer(self, "decoder", "encoder_decoder_attention",
                  attention("encoder_decoder_attention"), y, encoded, cross_bias,
                  deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype=dt, name="pre_mlp_layer_norm")(x)
    mlp = layers.MlpBlock(cfg.mlp_dim, tuple(cfg.mlp_activations), cfg.dropout_rate, dt,
                          self.sites, "decoder/mlp", name="mlp")
    y = _sublayer(self, "decoder", "mlp", mlp, y, deterministic=deterministic)
    return x + dropout(y, deterministic=deterministic)


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
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, self.sites, name=f"layers_{i}")(x, bias, deterministic)
    x = layers.RMSNorm(dtype=dt, name="encoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    return x, mask


class Decoder(nn.Module):
  """Teacher-forced decoder; returns float32 logits [b, T, vocab]."""
  config: T5Config
  shared_embedding: nn.Module
  sites: layers.Sites = layers.IDENTITY

  @nn.compact
  def __call__(self, encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens=None,
               deterministic=True):
    cfg = self.config
    dt = cfg.activation_dtype
    length = decoder_input_tokens.shape[1]
    # T5X: padding is read off the targets (inputs start with id 0 = pad).
    real = (decoder_target_tokens if decoder_target_tokens is not None
            else jnp.ones_like(decoder_input_tokens)) > 0
    causal = jnp.tril(jnp.ones((length, length), bool))
    self_mask = causal[None, None] & real[:, None, None, :] & real[:, None, :, None]
    cross_mask = real[:, None, :, None] & encoder_mask[:, None, None, :]
    self_bias = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, dt, name="relpos_bias")(length, length, bidirectional=False)
    self_bias = self_bias + layers.attention_bias(self_mask, dt)
    cross_bias = layers.attention_bias(cross_mask, dt)

    x = self.shared_embedding(decoder_input_tokens)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    for i in range(cfg.num_decoder_layers):
      x = DecoderLayer(cfg, self.sites, name=f"layers_{i}")(x, encoded, self_bias, cross_bias,
                                                           deterministic)
    x = layers.RMSNorm(dtype=dt, name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(x / jnp.sqrt(jnp.asarray(x.shape[-1], x.dtype)))
    else:
      logits = layers.Dense(cfg.vocab_size, ("embed", "vocab"), dt,
                            kernel_init=nn.initializers.variance_scaling(
                                1.0, "fan_in", "truncated_normal"),
                            name="logits_dense")(x)
    return jnp.asarray(logits, jnp.float32)


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

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               deterministic=True):
    encoded, mask = self.encode(encoder_input_tokens, deterministic)
    return self.decode(encoded, mask, decoder_input_tokens, decoder_target_tokens,
                       deterministic)
