"""How good a clustering an algorithm's warm-up embedding allows, against warm-up epochs and
against the clustering algorithm run on it (DEPICT's Algorithm 1, line 1: "initialize Q using
a clustering algorithm"; the paper names K-means or AC-PIC; SpectralNet and DSCDAN cluster a
graph of their codes).

  python benchmarks/warmup_embedding.py --dataset fashion-mnist-test --epochs 10 20 30 50
  python benchmarks/warmup_embedding.py --set hidden_reconstruction_weight=0.1 --set dropout_rates=[0.1,0.1,0.0]
  python benchmarks/warmup_embedding.py --pretrained runs/q6/depict-fashion-mnist-test-seed{0,1,2}
  python benchmarks/warmup_embedding.py --dataset digits --pretrained runs/q8/dscdan-digits-seed{0,1,2} \
      --methods kmeans spectral --spectral-neighbors 3 5 10 20

Runs an algorithm's warm-up (``--algo``, DEPICT by default; the engine's own epochs and random
draws, so the embedding at epoch E is the one ``bin/train`` clusters when ``warmup_epochs=E``)
and, at each epoch of ``--epochs``, clusters the clean features of the whole dataset that the
algorithm's initial clustering reads (``Algorithm.clustering_features``: the embedding;
SpectralNet's and DSCDAN's codes; `ics`' embedding without Algorithm 1's radius) with each
method of ``--methods``: k-means (what the engines of DEPICT, DEC and SpectralNet run;
scikit-learn's, 10 restarts), a full-covariance Gaussian mixture (and, as ``gmm-means``, each
point's nearest of the mixture's means: where a Student-t layer initialised at them starts),
Ward's agglomerative clustering (unconstrained, and on a 10-nearest-neighbour graph), AC-PIC
(``jaxclust.acpic``, what DEPICT's ``init_clustering="acpic"`` runs), and exact spectral
clustering (scikit-learn's ``SpectralClustering`` on the symmetrised 0/1 graph of each point's
``--spectral-neighbors`` nearest neighbours, the point itself counted; the eigenvectors
SpectralNet's and DSCDAN's networks approximate, with another affinity).
``--pretrained WORKDIR ...`` clusters instead the warmed-up features of finished ``bin/train``
runs of any algorithm (the network their rounds started from, each with its own seed and
config), with no warm-up here.
Prints one JSON line per epoch and method with ACC and NMI against the labels (never used for
training), the smallest cluster's size, the number of feature columns clustered and the
seconds of that clustering; ``--json PATH`` writes them all.
Ward without a graph holds all pairwise distances: it is skipped above ``--ward-max`` samples.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxclust import xla_cpu  # noqa: E402


METHODS = ("kmeans", "gmm", "ward-knn10", "acpic", "ward", "spectral")


def clusterings(z: np.ndarray, k: int, seed: int, ward_max: int, methods=METHODS,
                spectral_neighbors=(10,)) -> dict:
  """Each method's ``(labels, seconds)`` for the embedding ``z`` ``[N, D]``, in the order of
  :data:`METHODS`; ``"spectral"`` gives one entry ``"spectral-knn{n}"`` per ``n`` of
  ``spectral_neighbors``."""
  from sklearn.cluster import AgglomerativeClustering, KMeans
  from sklearn.mixture import GaussianMixture
  from sklearn.neighbors import kneighbors_graph

  from jaxclust import cluster
  from jaxclust.algos import depict

  def spectral(n):  # what init_clustering="spectral" runs, with spectral_neighbors=n
    return lambda: depict.spectral_clusters(z, k, n, seed)[0]

  @functools.cache
  def mixture():  # fitted once for both of its entries
    return GaussianMixture(k, covariance_type="full", n_init=3, random_state=seed).fit(z)

  candidates = {
      "kmeans": {"kmeans": lambda: KMeans(k, n_init=10, random_state=seed).fit_predict(z)},
      "gmm": {"gmm": lambda: mixture().predict(z), "gmm-means": lambda: cluster.assign(z, mixture().means_)},
      "ward-knn10": {"ward-knn10": lambda: AgglomerativeClustering(k, connectivity=kneighbors_graph(z, 10)).fit_predict(z)},
      "acpic": {"acpic": lambda: depict.acpic_clusters(z, k)[0]},  # what init_clustering="acpic" runs
      # what init_clustering="ward" runs
      "ward": {"ward": lambda: depict.ward_clusters(z, k)[0]} if len(z) <= ward_max else {},
      "spectral": {f"spectral-knn{n}": spectral(n) for n in spectral_neighbors},
  }
  out = {}
  for method in METHODS:
    if method not in methods:
      continue
    for name, fit in candidates[method].items():
      t0 = time.time()
      with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        out[name] = (np.asarray(fit()), time.time() - t0)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algo", default="depict", help="the algorithm to warm up (not with --pretrained, "
                      "whose runs name theirs)")
  parser.add_argument("--dataset", default="fashion-mnist-test")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 30, 50])
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="a config value of the algorithm, as bin/train's --set")
  parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
  parser.add_argument("--spectral-neighbors", type=int, nargs="+", default=[10], metavar="N",
                      help="the neighbours of each point in the graphs of the spectral method (default: 10)")
  parser.add_argument("--ward-max", type=int, default=20000)
  parser.add_argument("--json", type=pathlib.Path, default=None)
  parser.add_argument("--pretrained", type=pathlib.Path, nargs="+", default=None, metavar="WORKDIR",
                      help="cluster these finished runs' warmed-up features instead")
  args = parser.parse_args(argv)
  if min(args.spectral_neighbors) < 1:
    parser.error("--spectral-neighbors must be positive")
  xla_cpu.configure()

  import jax

  from jaxclust import algos, cli, data, metrics
  from jaxclust.engine import WARMUP, Engine

  dataset = data.load_dataset(args.dataset, data_dir=args.data_dir)
  if dataset.y is None:
    parser.error(f"{args.dataset} has no labels to score the clusterings against")
  overrides = dict(cli.parse_override(item) for item in args.overrides)
  records = []

  def score(name, algo, features, epoch, loss, source=None):
    config = algo.config
    z = np.asarray(algo.clustering_features(np.asarray(features, np.float64)))
    found = clusterings(z, config.n_clusters, config.seed, args.ward_max, args.methods, args.spectral_neighbors)
    for method, (labels, seconds) in found.items():
      record = {"algo": name, "dataset": args.dataset, "seed": config.seed, "overrides": overrides,
                "epoch": epoch, "loss": loss, "method": method, "acc": metrics.acc(dataset.y, labels),
                "nmi": metrics.nmi(dataset.y, labels), "smallest": int(np.bincount(labels).min()),
                "dims": int(z.shape[1]), "seconds": seconds}
      if source is not None:
        record["pretrained"] = str(source)
      records.append(record)
      print(json.dumps(record), flush=True)

  if args.pretrained:
    for workdir in args.pretrained:
      try:
        saved = json.loads((workdir / "config.json").read_text())
      except (OSError, ValueError) as e:
        parser.error(f"{workdir} is not a finished bin/train run: {e}")
      if saved.get("algo") not in algos.REGISTRY or saved.get("dataset") != args.dataset:
        parser.error(f"{workdir} is not a run on {args.dataset}")
      module, config = cli.config_from_record(saved, dataset, {**overrides, "pretrained": str(workdir)})
      algo = module.ALGORITHM(config, dataset.image_shape)
      engine = Engine(algo, dataset.x, dataset.y, workdir=None, verbosity=0)
      params = engine._load_pretrained(jax.jit(algo.init)(engine._key(99, 0), engine.x[: engine.batch_size]))
      score(saved["algo"], algo, engine.embed(params), saved.get("warmup_epochs"), None, workdir)
  else:
    if args.algo not in algos.REGISTRY:
      parser.error(f"--algo must be one of {sorted(algos.REGISTRY)}; got {args.algo!r}")
    module = algos.REGISTRY[args.algo]
    config = cli.build_config(module, dataset, {**overrides, "seed": args.seed, "warmup_epochs": max(args.epochs)})
    algo = module.ALGORITHM(config, dataset.image_shape)
    engine = Engine(algo, dataset.x, dataset.y, workdir=None, verbosity=0)
    params = jax.jit(algo.init)(engine._key(99, 0), engine.x[: engine.batch_size])
    template = engine._state_template(params, WARMUP)
    state = {"params": template["params"], "opt_state": template["opt_state"]}
    for epoch in range(1, max(args.epochs) + 1):
      state, terms = engine.run_epoch(WARMUP, state, template["targets"], epoch, 0, f"warm-up {epoch}")
      if epoch in args.epochs:
        score(args.algo, algo, engine.embed(state["params"]), epoch, terms["loss"])
  if args.json:
    args.json.write_text(json.dumps(records, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
