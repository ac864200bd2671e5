"""Data parallelism over all devices: one mesh axis, ``data``.

The engine places the dataset and the training state replicated on every device of the mesh
and shards each minibatch (and each evaluation chunk) along ``data``; ``jax.jit`` then
partitions the step, and reduces the gradients and any batch statistic (batch-norm moments,
the Gram matrix of an orthonormalization) across devices as the program's global semantics
require. A batch that the device count does not divide is padded with rows of weight 0,
which every loss already ignores, so the result does not depend on the number of devices
beyond the order of float reductions.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"


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
