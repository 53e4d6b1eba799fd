"""The optimizer of the paper, through optax, configured by gin.

Lester et al. (2021): Adafactor, constant learning rate 0.3, second-moment
decay exponent 0.8, weight decay 1e-5, no parameter scaling; T5X's update
clipping threshold 1.0 and factoring of matrices whose two largest dims are
both >= 128 (a [100, d] prompt is therefore not factored).
"""
import gin
import optax


@gin.configurable
def adafactor(learning_rate: float = 0.3,
              decay_rate: float = 0.8,
              weight_decay_rate: float = 1e-5,
              multiply_by_parameter_scale: bool = False,
              clipping_threshold: float = 1.0,
              min_dim_size_to_factor: int = 128,
              momentum=None,
              factored: bool = True) -> optax.GradientTransformation:
  return optax.adafactor(
      learning_rate=learning_rate,
      decay_rate=decay_rate,
      weight_decay_rate=weight_decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      min_dim_size_to_factor=min_dim_size_to_factor,
      momentum=momentum,
      factored=factored)
