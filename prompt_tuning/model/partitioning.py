"""Placement of parameters and batches on a jax.sharding mesh.

A 2-D mesh ('data', 'model') over every device of every host (after
`jax.distributed.initialize()` on multi-host setups). Parameters carry logical
axis names (layers.py); T5X-style rules map them to mesh axes, so the frozen
model can be split over 'model' (NUM_PARTITIONS > 1) while batches split over
'data'. The prompt is small and replicated.

Data is laid out by data-parallel shard, not by host (`DataLayout`): each row
of the mesh's 'data' axis is one shard of the input, read by the process(es)
whose devices hold that row. Processes that share rows (NUM_PARTITIONS
spanning hosts) read the same shards; every other shard is read once. The
input therefore depends on the number of data shards (devices / NUM_PARTITIONS),
never on how the devices are spread over hosts: 2 hosts x 4 devices and
1 host x 8 devices train on the same batches.
"""
import dataclasses
from typing import Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

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


@gin.configurable(module="partitioning")
def make_mesh(num_partitions: int = 1, devices: Optional[Sequence] = None) -> Mesh:
  """The ('data', 'model') mesh over every device (NUM_PARTITIONS along
  'model'), laid out by `jax.make_mesh`, which knows a TPU slice's topology
  (model-parallel partners on neighbouring chips), as T5X's mesh_utils does.
  Axes are 'Auto': shardings come from the logical axis rules below."""
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.check_int("NUM_PARTITIONS", num_partitions)
  devices = list(devices if devices is not None else jax.devices())
  if len(devices) % num_partitions:
    raise gin_utils.ConfigError(
        f"NUM_PARTITIONS {num_partitions} does not divide the {len(devices)} devices: use a "
        "divisor of the device count")
  return jax.make_mesh((len(devices) // num_partitions, num_partitions), ("data", "model"),
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def param_shardings(mesh: Mesh, boxed_shapes):
  """NamedShardings for a tree of (boxed) abstract params from model.init."""
  specs = nn.get_partition_spec(boxed_shapes)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicate(mesh: Mesh, tree):
  """Places a tree (identical on every process) replicated on the whole mesh.

  Goes through host numpy: a multi-process sharding takes host data, not
  arrays committed to one local device.
  """
  return jax.device_put(jax.device_get(tree), replicated(mesh))


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """This process's part of the input (T5X's DataLayout, by mesh row).

  num_shards: data-parallel shards, the mesh's 'data' axis size.
  shards: the shards (rows) this process holds devices of, contiguous.
  num_groups / group: processes holding the same rows form a group; the
    groups split evaluation data between them.
  """
  num_shards: int
  shards: tuple
  num_groups: int
  group: int

  def per_shard(self, global_batch: int) -> int:
    return global_batch // self.num_shards

  def local_batch(self, global_batch: int) -> int:
    return self.per_shard(global_batch) * len(self.shards)


def data_layout(mesh: Mesh, process_index: Optional[int] = None) -> DataLayout:
  """Which data shards (mesh rows) this process reads, from the mesh alone."""
  me = jax.process_index() if process_index is None else process_index
  devices = np.asarray(mesh.devices)
  rows_of = {}
  for row in range(devices.shape[0]):
    for device in devices[row].flat:
      rows_of.setdefault(device.process_index, set()).add(row)
  groups = sorted({tuple(sorted(rows)) for rows in rows_of.values()})
  mine = tuple(sorted(rows_of[me]))
  if mine != tuple(range(mine[0], mine[-1] + 1)):
    raise ValueError(f"process {me} holds non-contiguous data shards {mine} of the mesh")
  return DataLayout(num_shards=devices.shape[0], shards=mine, num_groups=len(groups),
                    group=groups.index(mine))


def shard_batch(mesh: Mesh, batch):
  """This process's numpy rows of a global batch -> global jax.Arrays split
  over 'data' (each array's leading dimension: the global batch)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  layout = data_layout(mesh)

  def make(x):
    global_shape = (x.shape[0] // len(layout.shards) * layout.num_shards,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree_util.tree_map(make, batch)


def gather(x) -> np.ndarray:
  """A global array (split over 'data') as one numpy array on every process."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
