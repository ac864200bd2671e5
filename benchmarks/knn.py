"""Seconds and peak memory of the whole-dataset kNN affinity (paper 002 eq. 14, in row blocks).

  python benchmarks/knn.py [--dataset fashion-mnist] [--n 70000] [--neighbors 3]
      [--block-size 1024] [--features pixels|codes] [--repeats 3] [--json PATH]

Runs :func:`jaxclust.spectral.knn_graph` (``[block, N]`` squared distances per block, reduced
with ``lax.top_k``), the median neighbour distance and :func:`knn_affinity_edges` over the
first ``--n`` images of ``--dataset``: on their pixels (``[N, 784]`` for Fashion-MNIST) or on
a 10-dimensional projection of them standing in for an autoencoder's codes (``--features
codes``). Reported: the first call's seconds (compilation included), the median of
``--repeats`` further calls, the peak memory (the device's peak bytes in use on an
accelerator, the growth of the process's peak resident set on CPU) beside the ``N x N``
float32 matrix that the blocks avoid, and the neighbours' recall against scikit-learn's exact
search on 500 random points.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxclust import xla_cpu  # noqa: E402


def rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None) -> int:
  xla_cpu.configure()  # before the first JAX computation, as bin/train does
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", default="fashion-mnist")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--n", type=int, default=70000)
  parser.add_argument("--neighbors", type=int, default=3)
  parser.add_argument("--block-size", type=int, default=1024)
  parser.add_argument("--features", choices=["pixels", "codes"], default="pixels")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp

  from jaxclust import data, spectral

  dataset = data.load_dataset(args.dataset, data_dir=args.data_dir)
  if args.n > dataset.n:
    raise SystemExit(f"{args.dataset} has {dataset.n} images; asked for {args.n}")
  x = dataset.x[: args.n].reshape(args.n, -1).astype(np.float32)
  if args.features == "codes":
    x = x @ np.random.default_rng(0).normal(size=(x.shape[1], 10)).astype(np.float32) / np.sqrt(x.shape[1])
  before = rss()
  x_device = jax.device_put(x)

  @jax.jit
  def affinity(points):
    neighbors, sq = spectral.knn_graph(points, args.neighbors, block_size=args.block_size)
    scale = jnp.sqrt(jnp.median(sq[:, -1]))
    return neighbors, spectral.knn_affinity_edges(neighbors, sq, scale)

  start = time.perf_counter()
  neighbors, edges = jax.block_until_ready(affinity(x_device))
  first = time.perf_counter() - start
  seconds = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(affinity(x_device))
    seconds.append(time.perf_counter() - start)

  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    peak, kind = int(stats["peak_bytes_in_use"]), "device peak bytes in use"
  else:
    peak, kind = rss() - before, "growth of the process's peak RSS"

  from sklearn.neighbors import NearestNeighbors

  probe = np.random.default_rng(0).choice(args.n, size=min(500, args.n), replace=False)
  exact = NearestNeighbors(n_neighbors=args.neighbors + 1).fit(x).kneighbors(x[probe], return_distance=False)
  found = np.asarray(neighbors)[probe]
  recall = float(np.mean([len(set(f) & set(e[e != i])) / args.neighbors for f, e, i in zip(found, exact, probe)]))

  record = {"dataset": args.dataset, "n": args.n, "dim": int(x.shape[1]), "features": args.features,
            "neighbors": args.neighbors, "block_size": args.block_size,
            "device": f"{device.platform}: {device.device_kind}", "first_call_seconds": first,
            "seconds": statistics.median(seconds), "peak_memory_bytes": peak, "peak_memory_kind": kind,
            "dense_matrix_bytes": 4 * args.n * args.n, "edges": int(edges[0].shape[0]), "recall": recall}
  command = "python benchmarks/knn.py " + " ".join(argv if argv is not None else sys.argv[1:])
  print(f"command: `{command}`\n")
  print(f"device: {record['device']}; {platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}\n")
  print("| N | dim | k | block | s (first call, with compilation) | s (median) | peak memory MiB | N x N float32 MiB | recall vs exact |")
  print("|---|---|---|---|---|---|---|---|---|")
  print(f"| {args.n} | {x.shape[1]} | {args.neighbors} | {args.block_size} | {first:.2f} | {record['seconds']:.2f} "
        f"| {peak / 2**20:.0f} ({kind}) | {record['dense_matrix_bytes'] / 2**20:.0f} | {recall:.3f} |")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
