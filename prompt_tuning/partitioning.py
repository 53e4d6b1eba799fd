"""Placement of parameters and batches on a jax.sharding mesh.

A 2-D mesh ('data', 'model') over every device of every host (after
`jax.distributed.initialize()` on multi-host setups). Parameters carry logical
axis names (layers.py); T5X-style rules map them to mesh axes, so the frozen
model can be split over 'model' (NUM_PARTITIONS > 1) while batches split over
'data'. The prompt is small and replicated.
"""
from typing import Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# (logical axis, mesh axis) as in T5X's standard_logical_axis_rules.
LOGICAL_AXIS_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("embed", None),
    ("length", None),
    ("relpos_buckets", None),
    ("prompt", None),
    ("num_prompts", None),
    ("experts", None),
)


@gin.configurable
def make_mesh(num_partitions: int = 1, devices: Optional[Sequence] = None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  if devices.size % num_partitions:
    from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
    raise gin_utils.ConfigError(
        f"NUM_PARTITIONS {num_partitions} does not divide the {devices.size} devices: use a "
        "divisor of the device count")
  return Mesh(devices.reshape(-1, num_partitions), ("data", "model"))


def param_shardings(mesh: Mesh, boxed_shapes):
  """NamedShardings for a tree of (boxed) abstract params from model.init."""
  specs = nn.get_partition_spec(boxed_shapes)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def shard_batch(mesh: Mesh, batch):
  """Host-local numpy batch -> global jax.Arrays split over 'data'."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
