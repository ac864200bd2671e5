"""XLA:CPU settings that make jaxclust's convolutions use every core.

jaxlib 0.10 hands XLA:CPU's convolutions to YNNPACK ("YNN fusions"), which runs each one on a
single thread: on a 2-core Xeon, DEPICT's 5x5 convolution of 50 to 50 channels (batch 100,
forward and backward) takes 23.5 ms there, and 15.7 ms when XLA runs it with Eigen on both
cores. Eigen's convolutions use XLA's intra-op thread pool. With YNN fusions off, DEPICT's
train step on two cores goes from 1194 to 1439 samples/s (BENCHMARKS.md, "CPU throughput");
on one core YNNPACK is as fast or faster, so the flag is set only where more than one core is
usable.

``configure()`` appends the flag to ``XLA_FLAGS``. XLA reads ``XLA_FLAGS`` once, when JAX
first initialises a backend, so it must run before the first JAX computation; ``bin/train``
and the benchmarks call it at their start. A library user who wants the same calls
``jaxclust.xla_cpu.configure()`` first thing. It leaves alone an ``XLA_FLAGS`` that already
chooses the YNN fusion types, and does nothing once a backend is initialised (too late to
matter) or when ``JAXCLUST_XLA_CPU=0``. XLA aborts on a flag it does not know, so the flag is
set only for the jaxlib releases where it was measured (:data:`JAXLIBS`).
"""

from __future__ import annotations

import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
#: The flags :func:`configure` adds: no YNN fusions, so XLA's own (Eigen) kernels, multi-threaded.
FLAGS = (f"{YNN_FLAG}=",)
#: ``(major, minor)`` of the jaxlib releases that know the flag and where it was measured.
JAXLIBS = ((0, 10),)


def _jaxlib_release() -> tuple[int, int] | None:
  try:
    major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def usable_cores() -> int:
  """The cores this process may run on (its CPU affinity, where the OS has one)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # a JAX without the check: assume not yet
    return False


def configure(cores: int | None = None, environ: dict | None = None) -> bool:
  """Append :data:`FLAGS` to ``XLA_FLAGS`` in ``environ`` (``os.environ``) if they apply.

  They apply when ``cores`` (the usable cores by default) is more than one, the installed
  jaxlib is one of :data:`JAXLIBS`, ``XLA_FLAGS`` does not set the YNN fusion types already,
  ``JAXCLUST_XLA_CPU`` is not ``0`` and, for this process's own environment, no JAX backend is
  initialised yet (``environ`` may also be a child process's). Returns whether the flags
  were added.
  """
  own = environ is None or environ is os.environ
  environ = os.environ if environ is None else environ
  cores = usable_cores() if cores is None else cores
  current = environ.get("XLA_FLAGS", "")
  if (cores < 2 or _jaxlib_release() not in JAXLIBS or YNN_FLAG in current
      or environ.get("JAXCLUST_XLA_CPU", "1") == "0" or (own and _backends_initialized())):
    return False
  environ["XLA_FLAGS"] = " ".join([current, *FLAGS]).strip()
  return True
