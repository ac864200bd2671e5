"""Data parallelism over all devices of all processes: one mesh axis, ``data``.

The engine places the dataset and the training state replicated on every device of the mesh
and shards each minibatch (and each evaluation chunk) along ``data``; ``jax.jit`` then
partitions the step, and reduces the gradients and any batch statistic (batch-norm moments,
the Gram matrix of an orthonormalization) across devices as the program's global semantics
require. A batch that the device count does not divide is padded with rows of weight 0,
which every loss already ignores, so the result does not depend on the number of devices
beyond the order of float reductions.

Several hosts: each process calls :func:`initialize` (``jax.distributed.initialize``) before
any other JAX call; the mesh then spans the devices of every process, and the same program
runs on each. Every process computes the same host-side values (minibatch positions, k-means
on the gathered features) from the same seed, so the replicated dataset and state agree
across processes; each process places only its own rows of a sharded array on its devices
(:func:`shard_rows`), and whatever comes back to the host is the global value
(:func:`to_host`). Only process 0 writes logs and results (:func:`is_main_process`); all
processes take part in checkpoint saves, as Orbax requires. With one process (the default)
none of this changes anything.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxclust.errors import ConfigError

DATA = "data"
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):([0-9]{1,5})")


def check_distributed(coordinator_address: str | None, num_processes: int, process_id: int | None) -> None:
  """Raises :class:`ConfigError` unless the settings describe a valid run of ``num_processes``
  processes: ``HOST:PORT`` of the coordinator (process 0) and ``0 <= process_id < num_processes``."""
  if num_processes < 1:
    raise ConfigError(f"the number of processes must be at least 1; got {num_processes}")
  if process_id is None and num_processes > 1:
    raise ConfigError(f"a run of {num_processes} processes needs the id of this process (--process-id)")
  if process_id is not None and not 0 <= process_id < num_processes:
    raise ConfigError(f"the process id must be between 0 and {num_processes - 1}; got {process_id}")
  if num_processes == 1 and coordinator_address is None:
    return
  match = None if coordinator_address is None else _ADDRESS.fullmatch(coordinator_address)
  if match is None or not 0 < int(match.group(2)) < 65536:
    raise ConfigError(f"the coordinator address must look like HOST:PORT (a port 1-65535); got "
                      f"{coordinator_address!r}")


def initialize(coordinator_address: str | None, num_processes: int, process_id: int | None) -> None:
  """Joins a run of ``num_processes`` processes (``jax.distributed.initialize``); must come
  before any other JAX call. One process needs no coordinator: nothing happens then.

  On CPU, the processes' collectives go through Gloo (the default of this JAX; selected here
  where an older one defaults to none).
  """
  check_distributed(coordinator_address, num_processes, process_id)
  if num_processes == 1:
    return
  try:
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # the option is gone where Gloo is the only choice
    pass
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  except (RuntimeError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"process {process_id} of {num_processes} cannot join the coordinator at "
                      f"{coordinator_address}: {first}") from None


def is_main_process() -> bool:
  """Process 0, the one that writes logs and results (always true with one process)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes) with axis ``data``."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, PartitionSpec())


def sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Split along ``axis`` over the ``data`` axis of the mesh."""
  return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA))


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of ``multiple`` that is at least ``n``."""
  return math.ceil(n / multiple) * multiple


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` with every array leaf placed replicated on ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def constrain_batch(tree: Any, mesh: Mesh) -> Any:
  """Inside ``jit``: asks the partitioner to split every leaf's first axis over ``data``."""
  if mesh.size == 1:
    return tree
  return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharded(mesh)), tree)


def shard_rows(array: np.ndarray, mesh: Mesh, axis: int = 0) -> jax.Array:
  """The host array ``array`` (the same on every process) split along ``axis`` over ``data``.

  Each process hands ``jax.make_array_from_process_local_data`` only the rows of its own
  devices; with one process this is ``jax.device_put``.
  """
  sharding = sharded(mesh, axis)
  if jax.process_count() == 1:
    return jax.device_put(array, sharding)
  spans = {index[axis].indices(array.shape[axis])[:2]
           for index in sharding.addressable_devices_indices_map(array.shape).values()}
  start, stop = min(s for s, _ in spans), max(e for _, e in spans)
  if sum(e - s for s, e in spans) != stop - start:
    raise ValueError(f"the devices of process {jax.process_index()} do not hold contiguous rows of the mesh")
  local = array[(slice(None),) * axis + (slice(start, stop),)]
  return jax.make_array_from_process_local_data(sharding, local, array.shape)


def to_host(tree: Any) -> Any:
  """Every leaf's global value as a NumPy array, on every process.

  With several processes, a leaf split over devices of other processes is gathered
  (``process_allgather``, a collective: every process must call this at the same point).
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  from jax.experimental import multihost_utils

  def fetch(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)

  return jax.tree.map(fetch, tree)
