"""TensorBoard event files beside ``metrics.jsonl``, when tensorboardX is installed.

``pip install 'jaxclust[tensorboard]'`` and every run writes the numbers of each
``metrics.jsonl`` record as scalars into ``WORKDIR/tensorboard/``: tag ``PHASE/KEY`` (as
``warmup/loss``, ``round/acc``, ``round/changed``), step the warm-up epoch or the round. View
them with ``tensorboard --logdir WORKDIR/tensorboard`` (the ``tensorboard`` package). Without
tensorboardX the writer does nothing (``--verbose`` runs say so once).
"""

from __future__ import annotations

import pathlib
import sys

EVENTS_DIR = "tensorboard"


class NoEvents:
  """The writer used without a workdir or without tensorboardX: writes nothing."""

  def write(self, record: dict) -> None:
    del record

  def close(self) -> None:
    pass


class EventWriter:
  """Writes the numeric entries of metrics records as TensorBoard scalars.

  Args:
    logdir: the folder of the event files.
  """

  def __init__(self, logdir: str | pathlib.Path):
    from tensorboardX import SummaryWriter

    self._writer = SummaryWriter(str(logdir))

  def write(self, record: dict) -> None:
    """One ``metrics.jsonl`` record (``phase`` plus ``epoch`` or ``round``) as scalars."""
    phase = record.get("phase", "run")
    step = record.get("round", record.get("epoch", 0))
    for key, value in record.items():
      if key in ("phase", "epoch", "round") or isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      self._writer.add_scalar(f"{phase}/{key}", value, global_step=step)
    self._writer.flush()  # a record is an epoch or a round: rare enough to flush each time

  def close(self) -> None:
    self._writer.close()


def event_writer(workdir: str | pathlib.Path | None, *, verbosity: int = 1) -> EventWriter | NoEvents:
  """The TensorBoard writer of a run in ``workdir``: an :class:`EventWriter` into
  ``workdir/tensorboard`` when tensorboardX is installed, else a :class:`NoEvents`.

  A run that starts without ``metrics.jsonl`` (a new run, or one that ``--restart`` cleared)
  first removes the event files an earlier run left there, so that TensorBoard shows one run.
  """
  if workdir is None:
    return NoEvents()
  try:
    import tensorboardX  # noqa: F401
  except ImportError:
    if verbosity >= 2:
      print("TensorBoard events not written: pip install 'jaxclust[tensorboard]' to get them",
            file=sys.stderr)
    return NoEvents()
  workdir = pathlib.Path(workdir)
  logdir = workdir / EVENTS_DIR
  if not (workdir / "metrics.jsonl").exists() and logdir.is_dir():
    for stale in logdir.glob("events.out.tfevents.*"):
      stale.unlink()
  return EventWriter(logdir)
