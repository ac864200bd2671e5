"""TensorBoard event files beside ``metrics.jsonl``, when tensorboardX is installed.

``pip install 'jaxclust[tensorboard]'`` and every run writes the numbers of each
``metrics.jsonl`` record as scalars into ``WORKDIR/tensorboard/``: tag ``PHASE/KEY`` (as
``warmup/loss``, ``round/acc``, ``round/changed``), step the warm-up epoch or the round. View
them with ``tensorboard --logdir WORKDIR/tensorboard`` (the ``tensorboard`` package). Without
tensorboardX the writer does nothing (``--verbose`` runs say so once).
"""

from __future__ import annotations

import itertools
import os
import pathlib
import sys
import time

EVENTS_DIR = "tensorboard"
_WRITERS = itertools.count()  # tells apart the files of writers opened in the same second


class NoEvents:
  """The writer used without a workdir or without tensorboardX: writes nothing."""

  def write(self, record: dict) -> None:
    del record

  def close(self) -> None:
    pass


class EventWriter:
  """Writes the numeric entries of metrics records as TensorBoard scalars.

  Each record is written and flushed before :meth:`write` returns (tensorboardX's
  ``SummaryWriter`` queues events for a background thread, which can lose the last ones
  when the process ends), into a file of its own per writer.

  Args:
    logdir: the folder of the event files.
  """

  def __init__(self, logdir: str | pathlib.Path):
    from tensorboardX.event_file_writer import EventsWriter

    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    self._writer = EventsWriter(str(logdir / "events"), filename_suffix=f".{os.getpid()}.{next(_WRITERS)}")

  def write(self, record: dict) -> None:
    """One ``metrics.jsonl`` record (``phase`` plus ``epoch`` or ``round``) as scalars."""
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2

    phase = record.get("phase", "run")
    step = record.get("round", record.get("epoch", 0))
    for key, value in record.items():
      if key in ("phase", "epoch", "round") or isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary.scalar(f"{phase}/{key}", value))
      self._writer.write_event(event)
    self._writer.flush()

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
  try:
    if not (workdir / "metrics.jsonl").exists() and logdir.is_dir():
      for stale in logdir.glob("events.out.tfevents.*"):
        stale.unlink()
    return EventWriter(logdir)
  except OSError:  # an unwritable workdir: the checkpoints report it in one clear line
    return NoEvents()
