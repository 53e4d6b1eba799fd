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
  """This process's part of the input (T5X's DataLayout).

  num_shards: seqio input shards of each global batch. T5X's rule by default:
    one per host group (processes that hold devices of the same mesh rows
    form a group and read the same data), so a small task is never spread so
    thin that a shard is empty; DATA_SHARDS sets another count, a multiple
    of the groups (each group reads that many / groups, consecutive).
  shards: the shards this process reads, consecutive; their rows are split
    over its devices' mesh rows in order.
  num_groups / group: the host groups, and this process's; the groups split
    evaluation data between them.
  rows: the mesh's 'data' axis size (data-parallel devices): a global batch
    splits into that many equal parts.
  """
  num_shards: int
  shards: tuple
  num_groups: int
  group: int
  rows: int = 1

  def per_shard(self, global_batch: int) -> int:
    return global_batch // self.num_shards

  def local_batch(self, global_batch: int) -> int:
    return self.per_shard(global_batch) * len(self.shards)

  def batch_problem(self, global_batch) -> Optional[str]:
    """Why a BATCH_SIZE cannot be laid out so, or None."""
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch <= 0:
      return f"BATCH_SIZE must be a positive integer, got {global_batch!r}"
    for count, what in ((self.rows, "data-parallel devices (devices / NUM_PARTITIONS)"),
                        (self.num_shards, "input shards (DATA_SHARDS)")):
      if global_batch % count:
        return f"BATCH_SIZE {global_batch} must be a multiple of the {count} {what}"
    return None


@gin.configurable(module="partitioning")
def configured_data_shards(data_shards: Optional[int] = None) -> Optional[int]:
  """DATA_SHARDS (runs/data.gin): None for T5X's one shard per host group."""
  return data_shards


def data_layout(mesh: Mesh, process_index: Optional[int] = None,
                num_shards: Optional[int] = None) -> DataLayout:
  """Which input shards this process reads, from the mesh (and DATA_SHARDS,
  `num_shards` when given, else the configured value)."""
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
  group = groups.index(mine)
  count = configured_data_shards() if num_shards is None else num_shards
  count = len(groups) if count is None else count
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.check_int("DATA_SHARDS", count, none_means="for one per host (T5X's rule)")
  if count % len(groups):
    raise gin_utils.ConfigError(
        f"DATA_SHARDS {count} must be a multiple of the {len(groups)} host groups reading "
        "different data")
  per_group = count // len(groups)
  return DataLayout(num_shards=count,
                    shards=tuple(range(group * per_group, (group + 1) * per_group)),
                    num_groups=len(groups), group=group, rows=devices.shape[0])


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
