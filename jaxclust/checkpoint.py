"""Checkpoints behind a small interface (Orbax ``CheckpointManager`` underneath).

A checkpoint is one pytree of arrays per step. Orbax writes a step into a temporary
directory and renames it when complete, so a step whose writer died is never listed, and
saves are asynchronous: :meth:`Checkpointer.close` waits for them and must run on every exit
path (the class is a context manager). With several processes, every process makes the same
calls on the same directory (a shared filesystem) and writes its part of each step.
"""

import json
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

from jaxclust import parallel
from jaxclust.errors import CheckpointError

_ITEM = "default"  # the directory of a step's one pytree (the manager's name for an unnamed item)


class Checkpointer:
  """Saves and restores the training state of one workdir."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2, keep_steps: tuple[int, ...] = ()):
    """Keeps the latest ``max_to_keep`` steps and, beside them, every step in ``keep_steps``."""
    self.directory = pathlib.Path(directory).absolute()
    policy = cm.AnyPreservationPolicy([cm.LatestN(max_to_keep), cm.CustomSteps(list(keep_steps))])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except OSError as e:
      raise CheckpointError(f"cannot create checkpoints in {self.directory}: {e.strerror or e}") from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Starts saving ``state`` as ``step``; returns before the write finishes."""
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, step: int, like: Any) -> Any:
    """Restores ``step`` into the structure, shapes and dtypes of ``like``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for unreadable or mismatched files
      path = self.directory / str(step)
      raise CheckpointError(
          f"checkpoint {path} cannot be read ({type(e).__name__}); start over with --restart"
      ) from e

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore_saved(self, step: int) -> Any:
    """Restores ``step`` in the structure it was saved with (no template needed), replicated
    on this run's devices, whatever devices and processes saved it."""
    try:
      handler = ocp.StandardCheckpointHandler()
      try:
        saved = handler.metadata(epath.Path(self.directory / str(step) / _ITEM)).tree
      finally:
        handler.close()
      sharding = parallel.replicated(parallel.make_mesh())
      like = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), saved)
      return self._manager.restore(step, args=ocp.args.StandardRestore(like))
    except Exception as e:  # orbax raises many types for unreadable files
      raise CheckpointError(f"checkpoint {self.directory / str(step)} cannot be read ({type(e).__name__})") from e

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_json(path: str | os.PathLike, value: Any) -> None:
  """Writes ``value`` as JSON atomically (write then rename), so a crash never leaves half a file."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)
