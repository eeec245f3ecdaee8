"""Every device- and process-level detail of data parallelism lives here.

One axis name (`AXIS`), one place that applies `jax.pmap` (`pmap`), and the
helpers that move a host batch onto the local devices. A later move to
`jax.jit` with `NamedSharding` changes this file only.

`jax.shard_map` with its default check (`check_vma=True`) types every value
as varying or invariant over each mesh axis. `varying_like` gives the
modules' loop carries the type of their inputs (no axis name needed) and
`vary` marks this step's parameters as varying over `AXIS`, so that their
gradients are this device's share, to be `psum`'d (what `pmap` gives).

Multi-host: `initialize(coordinator, num_processes, process_id)` calls
`jax.distributed.initialize`; every process then computes the same global
batch plan and feeds rows `process_slice(global_batch)` of each batch to its
local devices, and `lax.psum`/`lax.pmean` over `AXIS` span all processes.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
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


def prefetch_to_devices(global_batches, buffer_size: int = 2) -> Iterator[Any]:
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


def varying_like(x: Any, *refs: Any) -> Any:
  """`x` bit for bit, typed to vary over every mesh axis a leaf of `refs` varies over.

  Under `jax.shard_map` (default `check_vma=True`) a `lax.scan` or
  `lax.while_loop` carry must have one type going in and coming out. A carry
  built from constants (`jnp.zeros`, `jnp.full`) is invariant, while the
  body's output varies with the sharded inputs it reads; start the carry as
  `varying_like(jnp.zeros(...), inputs...)` instead. No mesh axis is named,
  so the modules need not know the caller's mesh. Outside `shard_map` (plain
  calls, `jit`, `pmap`) it is a select on a constant `True`, which XLA
  removes.
  """
  keep = functools.reduce(operator.and_, (jnp.ones_like(leaf, dtype=bool, shape=())
                                          for leaf in jax.tree.leaves(refs)),
                          jnp.ones((), bool))
  return jax.tree.map(lambda v: jnp.where(keep, v, v), x)


def cotangent_of(primal: jax.Array, ct: jax.Array) -> jax.Array:
  """`ct` with `primal`'s type, for a `custom_vjp` backward rule.

  Under `shard_map`, an invariant (replicated) `primal` used with varying
  inputs has a varying hand-made gradient `ct`; autodiff's own answer is that
  gradient summed over the devices (the transpose of the implicit
  broadcast), and a backward rule must return that type. Elsewhere (plain
  calls, `jit`, `pmap`, or a `primal` varying like `ct`) `ct` comes back as
  it is: the transpose of an add, no arithmetic.
  """
  _, pullback = jax.vjp(lambda p: p + jnp.zeros_like(ct), primal)
  return pullback(ct)[0]


def vary(tree: Any, axis_name: str = AXIS) -> Any:
  """`tree` bit for bit, marked as varying over `axis_name` (inside `shard_map` or `pmap`).

  Under `shard_map` with its default check, the gradient with respect to an
  invariant (replicated, `P()`) parameter is already summed over the
  devices (autodiff transposes the implicit broadcast into a `psum`), so a
  step that `psum`s its gradients itself, like `steps.train_step`, counts
  them `device_count` times. Differentiate with respect to `vary(params)`
  instead: every device gets its own share, as under `pmap`, where this is
  a no-op (as it is for values that vary already).
  """
  return varying_like(tree, jax.lax.axis_index(axis_name))


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
