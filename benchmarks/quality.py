"""Clustering quality of an algorithm over seeds, as a markdown table for BENCHMARKS.md.

  python benchmarks/quality.py --algo depict --datasets digits fashion-mnist-test --seeds 0 1 2

Each (dataset, seed) run goes to ``ROOT/ALGO-DATASET-seedN`` through the same code path as
``bin/train`` with the default config; a finished run (``summary.json`` present) is read back
instead of rerun, an interrupted one resumes. ``--pretrained-from dec`` starts each run from the warmed-up
network of the DEC run with the same dataset and seed (IDEC pretrains exactly as DEC does, so
its result is unchanged; only the time of its own warm-up is saved). Reported: ACC, NMI, ARI as mean +- std over
seeds, wall time, and the mean seconds per warm-up epoch and per round, beside k-means on the
pixels as a baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxclust import cli, data, metrics, xla_cpu


def run_one(algo: str, dataset: str, seed: int, root: pathlib.Path, overrides: dict) -> dict:
  workdir = root / f"{algo}-{dataset}-seed{seed}"
  summary_path = workdir / "summary.json"
  if not summary_path.exists():
    cli.train_and_evaluate(algo, dataset, workdir, {**overrides, "seed": seed}, verbosity=1)
  summary = json.loads(summary_path.read_text())
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  summary["warmup_epoch_seconds"] = float(np.median([r["seconds"] for r in records if r["phase"] == "warmup"] or [np.nan]))
  summary["round_seconds"] = float(np.median([r["seconds"] for r in records if r["phase"] == "round"] or [np.nan]))
  initial = [r for r in records if r["phase"] == "init"]
  summary["init_acc"] = initial[-1].get("acc", np.nan) if initial else np.nan
  return summary


def kmeans_baseline(dataset: str, seed: int) -> dict:
  from sklearn.cluster import KMeans

  ds = data.load_dataset(dataset)
  x = ds.x.reshape(ds.n, -1)
  labels = KMeans(ds.n_classes, n_init=10, random_state=seed).fit_predict(x)
  return metrics.clustering_scores(ds.y, labels)


def mean_std(values) -> str:
  values = np.asarray(values, float)
  return f"{values.mean():.3f} ± {values.std():.3f}"


def main(argv=None) -> int:
  xla_cpu.configure()  # before the first JAX computation, as bin/train does
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algo", default="depict")
  parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist-test"])
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--root", default="runs/quality")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--json", default=None, help="also write the rows as JSON here")
  parser.add_argument("--pretrained-from", default=None, metavar="ALGO",
                      help="start each run from the warm-up of ALGO's run with the same dataset and seed "
                           "under ROOT (IDEC after DEC: the same pretraining, done once)")
  args = parser.parse_args(argv)
  overrides = dict(cli.parse_override(item) for item in args.set)
  root = pathlib.Path(args.root)

  rows = []
  for dataset in args.datasets:
    runs = []
    for seed in args.seeds:
      extra = {}
      if args.pretrained_from:
        extra["pretrained"] = str(root / f"{args.pretrained_from}-{dataset}-seed{seed}")
      runs.append(run_one(args.algo, dataset, seed, root, {**overrides, **extra}))
    baseline = kmeans_baseline(dataset, 0)
    rows.append({
        "dataset": dataset,
        "n": runs[0]["n"],
        "seeds": args.seeds,
        "acc": [r["acc"] for r in runs],
        "nmi": [r["nmi"] for r in runs],
        "ari": [r["ari"] for r in runs],
        "init_acc": [r["init_acc"] for r in runs],
        "seconds": [r["seconds"] for r in runs],
        "rounds": [r["rounds"] for r in runs],
        "warmup_epoch_seconds": float(np.mean([r["warmup_epoch_seconds"] for r in runs])),
        "round_seconds": float(np.mean([r["round_seconds"] for r in runs])),
        "kmeans_pixels": baseline,
    })

  machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
  import jax

  print(f"\n{args.algo}, seeds {args.seeds}, {jax.default_backend()} ({jax.devices()[0].device_kind}), {machine}")
  print("command: python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
  print("| dataset | N | ACC | NMI | ARI | rounds | s / warm-up epoch | s / round | total s | k-means on the warmed-up embedding ACC | k-means on pixels ACC / NMI |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    b = r["kmeans_pixels"]
    print(f"| {r['dataset']} | {r['n']} | {mean_std(r['acc'])} | {mean_std(r['nmi'])} | {mean_std(r['ari'])} "
          f"| {np.mean(r['rounds']):.0f} | {r['warmup_epoch_seconds']:.2f} | {r['round_seconds']:.2f} "
          f"| {np.mean(r['seconds']):.0f} | {mean_std(r['init_acc'])} | {b['acc']:.3f} / {b['nmi']:.3f} |")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
