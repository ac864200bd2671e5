"""How good a clustering DEPICT's warm-up embedding allows, against warm-up epochs and against
the clustering algorithm run on it (DEPICT's Algorithm 1, line 1: "initialize Q using a
clustering algorithm"; the paper names K-means or AC-PIC).

  python benchmarks/warmup_embedding.py --dataset fashion-mnist-test --epochs 10 20 30 50
  python benchmarks/warmup_embedding.py --set hidden_reconstruction_weight=0.1 --set dropout_rates=[0.1,0.1,0.0]
  python benchmarks/warmup_embedding.py --pretrained runs/q6/depict-fashion-mnist-test-seed{0,1,2}

Runs DEPICT's warm-up (reconstruction only, the engine's own epochs and random draws, so the
embedding at epoch E is the one ``bin/train`` clusters when ``warmup_epochs=E``) and, at each
epoch of ``--epochs``, clusters the clean embedding of the whole dataset with k-means (what the
engine does, scikit-learn's, 10 restarts), a full-covariance Gaussian mixture, Ward's
agglomerative clustering (unconstrained, and on a 10-nearest-neighbour graph) and AC-PIC
(``jaxclust.acpic``, what ``init_clustering="acpic"`` runs). ``--pretrained WORKDIR ...``
clusters instead the warmed-up embedding of finished ``bin/train --algo depict`` runs (the
network their rounds started from, each with its own seed and config), with no warm-up here.
Prints one JSON line per epoch and method with ACC and NMI against the labels (never used for
training), the smallest cluster's size, and the seconds of that clustering; ``--json PATH``
writes them all.
Ward without a graph holds all pairwise distances: it is skipped above ``--ward-max`` samples.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxclust import xla_cpu  # noqa: E402


def clusterings(z: np.ndarray, k: int, seed: int, ward_max: int) -> dict:
  """Each method's labels for the embedding ``z`` ``[N, D]``."""
  from sklearn.cluster import AgglomerativeClustering, KMeans
  from sklearn.mixture import GaussianMixture
  from sklearn.neighbors import kneighbors_graph

  from jaxclust.algos import depict

  methods = {
      "kmeans": lambda: KMeans(k, n_init=10, random_state=seed).fit_predict(z),
      "gmm": lambda: GaussianMixture(k, covariance_type="full", n_init=3, random_state=seed).fit_predict(z),
      "ward-knn10": lambda: AgglomerativeClustering(k, connectivity=kneighbors_graph(z, 10)).fit_predict(z),
      "acpic": lambda: depict.acpic_clusters(z, k)[0],  # what init_clustering="acpic" runs
  }
  if len(z) <= ward_max:
    methods["ward"] = lambda: depict.ward_clusters(z, k)[0]  # what init_clustering="ward" runs
  out = {}
  for name, fit in methods.items():
    t0 = time.time()
    out[name] = (np.asarray(fit()), time.time() - t0)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", default="fashion-mnist-test")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 30, 50])
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="a DEPICT config value, as bin/train's --set")
  parser.add_argument("--ward-max", type=int, default=20000)
  parser.add_argument("--json", type=pathlib.Path, default=None)
  parser.add_argument("--pretrained", type=pathlib.Path, nargs="+", default=None, metavar="WORKDIR",
                      help="cluster these finished DEPICT runs' warmed-up embeddings instead")
  args = parser.parse_args(argv)
  xla_cpu.configure()

  import jax

  from jaxclust import cli, data, metrics
  from jaxclust.algos import depict
  from jaxclust.engine import WARMUP, Engine

  dataset = data.load_dataset(args.dataset, data_dir=args.data_dir)
  if dataset.y is None:
    parser.error(f"{args.dataset} has no labels to score the clusterings against")
  overrides = dict(cli.parse_override(item) for item in args.overrides)
  records = []

  def score(z, config, epoch, loss, source=None):
    z = np.asarray(z, np.float64)
    for method, (labels, seconds) in clusterings(z, config.n_clusters, config.seed, args.ward_max).items():
      record = {"dataset": args.dataset, "seed": config.seed, "overrides": overrides, "epoch": epoch,
                "loss": loss, "method": method, "acc": metrics.acc(dataset.y, labels),
                "nmi": metrics.nmi(dataset.y, labels), "smallest": int(np.bincount(labels).min()),
                "seconds": seconds}
      if source is not None:
        record["pretrained"] = str(source)
      records.append(record)
      print(json.dumps(record), flush=True)

  if args.pretrained:
    for workdir in args.pretrained:
      saved = json.loads((workdir / "config.json").read_text())
      if saved.get("algo") != "depict" or saved.get("dataset") != args.dataset:
        parser.error(f"{workdir} is not a DEPICT run on {args.dataset}")
      fields = {k: v for k, v in saved.items() if k not in ("algo", "dataset", "split")}
      config = cli.build_config(depict, dataset, {**fields, **overrides, "pretrained": str(workdir)})
      algo = depict.Depict(config, dataset.image_shape)
      engine = Engine(algo, dataset.x, dataset.y, workdir=None, verbosity=0)
      params = engine._load_pretrained(jax.jit(algo.init)(engine._key(99, 0), engine.x[: engine.batch_size]))
      score(engine.embed(params), config, saved.get("warmup_epochs"), None, workdir)
  else:
    config = cli.build_config(depict, dataset, {**overrides, "seed": args.seed, "warmup_epochs": max(args.epochs)})
    algo = depict.Depict(config, dataset.image_shape)
    engine = Engine(algo, dataset.x, dataset.y, workdir=None, verbosity=0)
    params = jax.jit(algo.init)(engine._key(99, 0), engine.x[: engine.batch_size])
    template = engine._state_template(params, WARMUP)
    state = {"params": template["params"], "opt_state": template["opt_state"]}
    for epoch in range(1, max(args.epochs) + 1):
      state, terms = engine.run_epoch(WARMUP, state, template["targets"], epoch, 0, f"warm-up {epoch}")
      if epoch in args.epochs:
        score(engine.embed(state["params"]), config, epoch, terms["loss"])
  if args.json:
    args.json.write_text(json.dumps(records, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
