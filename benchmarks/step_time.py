"""Seconds per DEPICT train step and per epoch, by transposed-convolution form and epoch mode.

  python benchmarks/step_time.py [--batch-size 100] [--steps 20]

The step is the engine's M-step (noisy and clean encoder, decoder, softmax, backward, Adam) on
Fashion-MNIST-shaped input (28x28x1, K=10, Table 5's MNIST network). Reported: compile
seconds, median step seconds and samples per second for each transposed-convolution form, and
an epoch of 20 steps run as a Python loop of jitted steps against one ``lax.scan``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxclust.algos import depict
from jaxclust.engine import Engine


def make_engine(n: int, batch_size: int, epoch_mode: str, transposed_conv: str) -> Engine:
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (n, 28, 28, 1)).astype(np.float32)
  config = depict.DepictConfig(n_clusters=10, batch_size=batch_size, epoch_mode=epoch_mode,
                               transposed_conv=transposed_conv)
  return Engine(depict.Depict(config, (28, 28, 1)), x, verbosity=0)


def time_epochs(engine: Engine, repeats: int) -> tuple[float, float]:
  """(first epoch seconds including compilation, median seconds of the next epochs)."""
  params = engine.algo.init(jax.random.key(0), engine.x[: engine.batch_size])
  state = {"params": params, "opt_state": engine.optimizers[1].init(params)}
  targets = jax.nn.one_hot(jnp.arange(engine.n) % 10, 10)
  times = []
  for epoch in range(repeats + 1):
    start = time.perf_counter()
    state, _ = engine.run_epoch(1, state, targets, 0, epoch, "")
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  return times[0], float(np.median(times[1:]))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  n = args.batch_size * args.steps
  print(f"{jax.default_backend()} ({jax.devices()[0].device_kind}), batch {args.batch_size}, "
        f"{args.steps} steps per epoch, median of {args.repeats} epochs after the first")
  print("| transposed conv | epoch mode | first epoch s (incl. compile) | s / step | samples / s |")
  print("|---|---|---|---|---|")
  for method in ("dilated", "subpixel"):
    for mode in ("loop", "scan"):
      first, epoch = time_epochs(make_engine(n, args.batch_size, mode, method), args.repeats)
      step = epoch / args.steps
      print(f"| {method} | {mode} | {first:.2f} | {step:.4f} | {args.batch_size / step:.0f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
