"""Bottleneck adapters (Houlsby et al., 2019; He et al., 2022): sequential
(after a sublayer's output) or parallel (beside it, from its normed input),
`up` starting at zero. Parameters `{stack}/layers_{i}/{sublayer}_adapter/{down,up}`."""
import dataclasses
import functools
from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from prompt_tuning.methods.lora import lora_a_init
from prompt_tuning.methods.sites import MethodError, SUBLAYERS, sublayer_names
from prompt_tuning.model import layers

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
                       sublayer_names(self.sublayers, SUBLAYERS, "ADAPTER_SUBLAYERS"))
    if not isinstance(self.bottleneck, int) or self.bottleneck < 1:
      raise MethodError(f"ADAPTER_BOTTLENECK must be a positive integer, got {self.bottleneck}")
    if not self.scale > 0:
      raise MethodError(f"ADAPTER_SCALE must be > 0, got {self.scale}")

  def adapter(self, where):
    if where in self.sublayers:
      name = where.split("/")[-1] + "_adapter"
      return functools.partial(Adapter, self.bottleneck, self.scale, self.parallel, name=name)
    return None


