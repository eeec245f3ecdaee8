"""Every device- and process-level detail of data parallelism lives here.

One axis name (`AXIS`), one place that applies `jax.pmap` (`pmap`), and the
helpers that move a host batch onto the local devices. A later move to
`jax.jit` with `NamedSharding` changes this file only.

Multi-host: `initialize(coordinator, num_processes, process_id)` calls
`jax.distributed.initialize`; every process then computes the same global
batch plan and feeds rows `process_slice(global_batch)` of each batch to its
local devices, and `lax.psum`/`lax.pmean` over `AXIS` span all processes.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

AXIS = "batch"


def initialize(coordinator_address: str | None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts JAX's multi-host runtime when a coordinator is given (else no-op).

  `"auto"` lets JAX discover the cluster itself (Cloud TPU pod slices, SLURM).
  """
  if not coordinator_address:
    return
  if coordinator_address == "auto":
    jax.distributed.initialize()
    return
  # CPU collectives across processes need gloo; GPU/TPU choose their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def device_count() -> int:
  """Devices taking part in one step, across all processes."""
  return jax.device_count()


def pmap(fn: Callable, donate_state: bool = True, static_broadcasted_argnums=()) -> Callable:
  """`jax.pmap(fn)` over `AXIS`, the state (argument 0) donated."""
  return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,) if donate_state else (),
                  static_broadcasted_argnums=static_broadcasted_argnums)


def local_sharding(num_devices: int | None = None) -> jax.sharding.NamedSharding:
  """Leading axis split over this process's devices: what `pmap` takes as is."""
  devices = jax.local_devices()[:num_devices]
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                    jax.sharding.PartitionSpec(AXIS))


def replicate(tree: Any, num_devices: int | None = None) -> Any:
  """Copies a host pytree onto the local devices (leading axis = devices);
  `num_devices` limits it to the first few (tests)."""
  sharding = local_sharding(num_devices)
  n = len(sharding.mesh.devices)
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)
  return jax.device_put(stacked, sharding)


def first_copy(tree: Any) -> Any:
  """The first local device's copy of a replicated tree, left on that device."""
  return jax.tree.map(lambda x: x[0], tree)


def prefetch_to_devices(global_batches, buffer_size: int = 2):
  """An iterable of global numpy batches -> an iterator of this process's
  rows, split over its devices and already copied there: `buffer_size`
  batches are kept in flight. It runs in the calling thread: with JAX's
  asynchronous dispatch the next batch is built and transferred while the
  device runs the current step, and no thread competes with the step for
  the GIL or (on a CPU backend) for the cores."""
  import collections
  sharding = local_sharding()
  source = iter(global_batches)
  queue = collections.deque()
  def put():
    queue.append(jax.device_put(device_batch(next(source)), sharding))
  for _ in range(buffer_size):
    put()
  while True:
    yield queue.popleft()
    put()


def sync(name: str) -> None:
  """Barrier across processes (no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def unreplicate(tree: Any) -> Any:
  """The first device's copy, fetched to host numpy."""
  return jax.tree.map(lambda x: np.asarray(x[0]), tree)


def process_slice(global_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's rows of a global batch (contiguous, equal shares)."""
  n, i = jax.process_count(), jax.process_index()
  rows = next(iter(global_batch.values())).shape[0]
  if rows % n:
    raise ValueError(f"global batch of {rows} rows does not split over {n} processes")
  k = rows // n
  return {key: v[i * k:(i + 1) * k] for key, v in global_batch.items()}


def shard(local_batch: dict[str, np.ndarray], num_devices: int | None = None
          ) -> dict[str, np.ndarray]:
  """`[rows, ...] -> [local_devices, rows / local_devices, ...]`."""
  d = num_devices or jax.local_device_count()
  def split(x):
    if x.shape[0] % d:
      raise ValueError(f"batch of {x.shape[0]} rows does not split over {d} local devices")
    return x.reshape((d, x.shape[0] // d) + x.shape[1:])
  return jax.tree.map(split, local_batch)


def device_batch(global_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """What one process feeds to the pmapped step for a global batch."""
  return shard(process_slice(global_batch))


def psum(x: Any) -> Any:
  return jax.lax.psum(x, AXIS)


def all_gather(x: Any) -> Any:
  """Every device's rows of `x`, concatenated in global batch order."""
  return jax.lax.all_gather(x, AXIS, tiled=True)


def pmean(x: Any) -> Any:
  return jax.lax.pmean(x, AXIS)


def device_index() -> jax.Array:
  """Index of this device in the step (0 .. device_count-1), inside `pmap`."""
  return jax.lax.axis_index(AXIS)


def is_main_process() -> bool:
  return jax.process_index() == 0
