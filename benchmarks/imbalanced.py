"""Clustering accuracy on imbalanced data: the protocol of paper 003, section 4.5 (Table 2).

  python benchmarks/imbalanced.py --dataset fashion-mnist-test --algos dec ics --rates 0.1 0.3 0.5 0.7 0.9

For a minimum retention rate ``r``, each sample of class ``c`` (of ``K``) is kept with
probability ``r + (1 - r) * c / (K - 1)``: class 0 with probability ``r``, the last class with
1, the others linearly in between (DEC's protocol, section 5.5 of Xie et al.). Each subset is
written once to ``ROOT/data/DATASET-rR-seedS.npz`` (uint8, so it loads exactly as the original)
and every algorithm runs on it through the same code path as ``bin/train``, with the
settings it has for the full dataset (``DATASET``'s entry in the algorithm's per-dataset
settings) and no tuning. A finished run (``summary.json`` present) is read back, not rerun;
an unfinished one resumes from its last checkpoint. ``--table-only`` trains nothing and prints
the finished runs, a dash where a run is missing or unfinished.
Printed: one markdown row per algorithm with its ACC per rate, beside k-means on the pixels.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxclust import algos, cli, data, metrics, xla_cpu


def retention_probabilities(n_classes: int, rate: float) -> np.ndarray:
  """``[K]`` keep probabilities: ``rate`` for class 0, 1 for class ``K - 1``, linear between."""
  return rate + (1.0 - rate) * np.arange(n_classes) / (n_classes - 1)


def imbalanced_subset(y: np.ndarray, rate: float, seed: int) -> np.ndarray:
  """Sorted indices of the samples kept at minimum retention rate ``rate``."""
  n_classes = int(y.max()) + 1
  keep = np.random.default_rng([seed, round(rate * 1000)]).uniform(size=len(y))
  return np.flatnonzero(keep < retention_probabilities(n_classes, rate)[y])


def write_subset(dataset: data.Dataset, rate: float, seed: int, root: pathlib.Path) -> pathlib.Path:
  path = root / "data" / f"{dataset.name}-r{rate:g}-seed{seed}.npz"
  if not path.exists():
    index = imbalanced_subset(dataset.y, rate, seed)
    pixels = np.rint((dataset.x[index] + 1.0) * 127.5).astype(np.uint8)  # inverts the [-1, 1] scaling
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, x=pixels, y=dataset.y[index])
    tmp.replace(path)
  return path


def run(algo: str, base: data.Dataset, subset: pathlib.Path, seed: int, workdir: pathlib.Path,
        train: bool = True) -> dict | None:
  """The run's ``summary.json``, training it first where it is missing and ``train`` is set;
  ``None`` for a missing run when ``train`` is not."""
  summary_path = workdir / "summary.json"
  if not summary_path.exists():
    if not train:
      return None
    settings = algos.REGISTRY[algo].dataset_settings(base.name, base.image_shape)
    cli.train_and_evaluate(algo, f"npz:{subset}", workdir, {**settings, "seed": seed}, verbosity=1)
  return json.loads(summary_path.read_text())


def markdown_rows(table: dict[str, dict[float, float | None]], rates: list[float], sizes: dict[float, int]) -> list[str]:
  """The table's markdown: one row per method, ACC per rate, a dash where it is missing."""
  lines = ["| method | " + " | ".join(f"r = {r:g} (N = {sizes[r]})" for r in rates) + " |",
           "|---|" + "---|" * len(rates)]
  for name, row in table.items():
    cells = ("—" if row.get(r) is None else f"{row[r]:.3f}" for r in rates)
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def kmeans_on_pixels(subset: pathlib.Path, seed: int) -> float:
  from sklearn.cluster import KMeans

  ds = data.load_dataset(f"npz:{subset}")
  labels = KMeans(ds.n_classes, n_init=10, random_state=seed).fit_predict(ds.x.reshape(ds.n, -1))
  return metrics.acc(ds.y, labels)


def main(argv=None) -> int:
  xla_cpu.configure()  # before the first JAX computation, as bin/train does
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", default="fashion-mnist-test")
  parser.add_argument("--algos", nargs="+", default=["dec", "ics"])
  parser.add_argument("--rates", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
  parser.add_argument("--seed", type=int, default=0, help="seed of the subsets and of the runs")
  parser.add_argument("--root", default="runs/imbalanced")
  parser.add_argument("--json", default=None, help="also write the table as JSON here")
  parser.add_argument("--table-only", action="store_true", help="train nothing: print the finished runs")
  args = parser.parse_args(argv)
  for rate in args.rates:
    if not 0 < rate <= 1:
      parser.error(f"rates must be in (0, 1]; got {rate}")

  root = pathlib.Path(args.root)
  base = data.load_dataset(args.dataset)
  if base.y is None:
    parser.error(f"{args.dataset} has no labels; the protocol needs them")
  subsets = {rate: write_subset(base, rate, args.seed, root) for rate in args.rates}
  sizes = {rate: int(np.load(path)["y"].shape[0]) for rate, path in subsets.items()}
  table = {"k-means on pixels": {rate: kmeans_on_pixels(path, args.seed) for rate, path in subsets.items()}}
  for algo in args.algos:
    table[algo] = {}
    for rate, path in subsets.items():
      workdir = root / f"{algo}-{args.dataset}-r{rate:g}-seed{args.seed}"
      summary = run(algo, base, path, args.seed, workdir, train=not args.table_only)
      table[algo][rate] = None if summary is None else summary["acc"]

  print(f"\nACC on {args.dataset} with minimum retention rate r (seed {args.seed}):\n")
  print("\n".join(markdown_rows(table, args.rates, sizes)))
  if args.json:
    records = [{"method": name, "rate": r, "n": sizes[r], "acc": acc}
               for name, row in table.items() for r, acc in row.items() if acc is not None]
    pathlib.Path(args.json).write_text(json.dumps(records, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
