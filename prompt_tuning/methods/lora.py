"""LoRA (Hu et al., 2022): `x @ A @ B * alpha / r` added to a projection's
output, A [in, r] initialised as PEFT's, B [r, out] at zero, so training starts
at the frozen model. Parameters `.../{projection}/lora/{a,b}`."""
import dataclasses
import functools
from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from prompt_tuning.methods.sites import MethodError, PROJECTIONS
from prompt_tuning.model import layers

# A's initialisation as PEFT's (torch's kaiming_uniform with a=sqrt(5)):
# uniform in +-1/sqrt(fan_in).
lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


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


