"""Clustering quality of the algorithms over datasets and seeds, as one markdown table for BENCHMARKS.md.

  python benchmarks/quality.py --datasets digits fashion-mnist-test --seeds 0 1 2
  python benchmarks/quality.py --algos dec idec --pretrained-from dec --root runs/q3
  python benchmarks/quality.py --root runs/q3 --table-only
  python benchmarks/quality.py --algo depict --datasets digits        # the one-algorithm table

Each (algorithm, dataset, seed) run goes to ``ROOT/ALGO-DATASET-seedN`` through the same code
path as ``bin/train`` with the default config; a finished run (``summary.json`` present) is read
back instead of rerun, an interrupted one resumes. ``--algos`` names the algorithms (default:
all of them, depict dec idec ics spectralnet dscdan); ``--set KEY=VALUE`` applies to each.
``--datasets`` defaults to digits and the Fashion-MNIST test split (10,000 images, for a CPU);
where a GPU is at hand, add ``fashion-mnist`` (all 70,000, as the papers use). A dataset whose
files are not installed here is skipped with a one-line note on stderr; an unknown name is an
error.

``--pretrained-from ALGO`` starts each run of the other algorithms from the warmed-up network
of ALGO's run with the same dataset and seed (ALGO's own runs come first). It suits the
algorithms that share ALGO's network and warm-up: IDEC pretrains exactly as DEC does, so
``--algos dec idec --pretrained-from dec`` leaves IDEC's result unchanged and saves only the time
of its own warm-up (IDEC's wall time then leaves that warm-up out).

``--table-only`` trains nothing: it reads back the finished runs under ``ROOT`` (made at any
time, on any machine) and marks what is missing: "2 of 3 (no seed 1)", "0 of 3 (seed 0
unfinished; no seed 1, 2)" (a workdir without ``summary.json``) or "not run", so one table can be
assembled from runs made at different times. There a dataset is checked for its files only when
no run of it is found.

The table has one row per algorithm and dataset: N, the seeds finished, ACC, NMI and ARI as
mean ± std over those seeds, the mean wall seconds of a run (all of it: loading, warm-up,
rounds, evaluation), the mean seconds per warm-up epoch and per round (the median within a
run), the ACC of k-means on the warmed-up embedding (the rounds' starting point), and the
papers' ACC / NMI for the same algorithm and dataset (``PAPER_RESULTS``; the short label names
the paper and table, spelled out under the table). Where the paper's data differ in size from
the row's (Fashion-MNIST: all 70,000 images in the papers, the 10,000 of the test split here),
the cell says the paper's size, e.g. "0.518 / 0.546 (70k)"; "—" where the papers report none.

``--algo ALGO`` (one algorithm) prints the older table of one algorithm instead, with k-means
on the pixels as a baseline beside it and without the papers' column (``--table-only`` still
prints the table above). ``--json PATH`` also writes the rows as JSON.
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

from jaxclust import algos, cli, data, metrics, xla_cpu
from jaxclust.errors import DataError, JaxclustError

ALGO_ORDER = ("depict", "dec", "idec", "ics", "spectralnet", "dscdan")
"""The order of the rows, and of ``--algos`` by default."""

SOURCES = {
    "DEPICT T2": "Ghasedi Dizaji et al., Deep Clustering via Joint Convolutional Autoencoder Embedding and "
                 "Relative Entropy Minimization (DEPICT), ICCV 2017, Table 2: mean of 5 runs; MNIST-full "
                 "70,000, MNIST-test 10,000, USPS 11,000 images",
    "DSCDAN T3": "Yang et al., Deep Spectral Clustering using Dual Autoencoder Network (DSCDAN), CVPR 2019, "
                 "Table 3: DSCDAN's mean of 10 runs, the others as reported there (* there: the authors' "
                 "runs of the released code); MNIST-full 70,000, MNIST-test 10,000, USPS 9,298, "
                 "Fashion-MNIST 70,000 images",
    "ICS T1": "Das, Ghosh, Bhowmick, Deep Representation Learning Characterized by Inter-class Separation "
              "for Image Clustering, WACV 2019, Table 1: ACC only (in %); MNIST 70,000, USPS 11,000 images",
}
"""The papers behind ``PAPER_RESULTS``, by the short label the table shows (../shared/papers)."""


def _paper(acc, nmi, n, cite):
  return {"acc": acc, "nmi": nmi, "n": n, "cite": cite}


PAPER_RESULTS = {
    "depict": {
        "mnist": _paper(0.965, 0.917, 70000, "DEPICT T2"),
        "mnist-test": _paper(0.963, 0.915, 10000, "DEPICT T2"),
        "usps": _paper(0.964, 0.927, 11000, "DEPICT T2"),
        "fashion-mnist": _paper(0.392, 0.392, 70000, "DSCDAN T3"),
    },
    "dec": {
        "mnist": _paper(0.863, 0.834, 70000, "DSCDAN T3"),
        "mnist-test": _paper(0.856, 0.830, 10000, "DSCDAN T3"),
        "usps": _paper(0.762, 0.767, 9298, "DSCDAN T3"),
        "fashion-mnist": _paper(0.518, 0.546, 70000, "DSCDAN T3"),
    },
    "idec": {
        "mnist": _paper(0.881, 0.867, 70000, "DSCDAN T3"),
        "mnist-test": _paper(0.846, 0.802, 10000, "DSCDAN T3"),
        "usps": _paper(0.761, 0.785, 9298, "DSCDAN T3"),
        "fashion-mnist": _paper(0.529, 0.557, 70000, "DSCDAN T3"),
    },
    "ics": {
        "mnist": _paper(0.9893, None, 70000, "ICS T1"),
        "usps": _paper(0.9763, None, 11000, "ICS T1"),
    },
    "spectralnet": {
        "mnist": _paper(0.800, 0.814, 70000, "DSCDAN T3"),
        "mnist-test": _paper(0.817, 0.821, 10000, "DSCDAN T3"),
    },
    "dscdan": {
        "mnist": _paper(0.978, 0.941, 70000, "DSCDAN T3"),
        "mnist-test": _paper(0.980, 0.946, 10000, "DSCDAN T3"),
        "usps": _paper(0.869, 0.857, 9298, "DSCDAN T3"),
        "fashion-mnist": _paper(0.662, 0.645, 70000, "DSCDAN T3"),
    },
}
"""The papers' ACC and NMI (``None``: not reported) per algorithm and dataset (our loader's name),
with the number of images they were measured on and the short label of the source in ``SOURCES``.
Only numbers printed in the papers; a dataset a paper does not report is absent. DEPICT's own
numbers come first (DSCDAN T3 gives 0.899 / 0.906 for it on the 9,298-image USPS). The text copy
of DSCDAN's Table 3 lost its layout: its columns are read by counting the table's 15 methods in
order, which its text confirms (DSCDAN's MNIST-test ACC "over 98%", 1.6 and 3.1 points above
DEPICT's ACC and NMI)."""

PAPER_FALLBACK = {"fashion-mnist-test": "fashion-mnist", "mnist-test": "mnist"}
"""Where the papers report no number for a split, the whole dataset's (marked by its size)."""


def workdir_of(root: pathlib.Path, algo: str, dataset: str, seed: int) -> pathlib.Path:
  return root / f"{algo}-{dataset}-seed{seed}"


def read_run(workdir: pathlib.Path) -> dict | None:
  """The summary of the finished run in ``workdir`` with its per-phase times, or ``None``."""
  summary_path = workdir / "summary.json"
  if not summary_path.exists():
    return None
  summary = json.loads(summary_path.read_text())
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  summary["warmup_epoch_seconds"] = float(np.median([r["seconds"] for r in records if r["phase"] == "warmup"] or [np.nan]))
  summary["round_seconds"] = float(np.median([r["seconds"] for r in records if r["phase"] == "round"] or [np.nan]))
  initial = [r for r in records if r["phase"] == "init"]
  summary["init_acc"] = initial[-1].get("acc", np.nan) if initial else np.nan
  return summary


def run_one(algo: str, dataset: str, seed: int, root: pathlib.Path, overrides: dict) -> dict:
  workdir = workdir_of(root, algo, dataset, seed)
  if not (workdir / "summary.json").exists():
    cli.train_and_evaluate(algo, dataset, workdir, {**overrides, "seed": seed}, verbosity=1)
  return read_run(workdir)


def kmeans_baseline(dataset: str, seed: int) -> dict:
  from sklearn.cluster import KMeans

  ds = data.load_dataset(dataset)
  x = ds.x.reshape(ds.n, -1)
  labels = KMeans(ds.n_classes, n_init=10, random_state=seed).fit_predict(x)
  return metrics.clustering_scores(ds.y, labels)


def check_dataset_name(dataset: str) -> None:
  """Raises :class:`DataError` for a name that is neither a registry dataset nor a prefix form."""
  prefix, sep, _ = dataset.partition(":")
  if dataset.lower() not in data.available_datasets() and not (sep and prefix.lower() in data.PREFIXES):
    raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(data.available_datasets())} "
                    f"or {', '.join(p + ':...' for p in data.PREFIXES)}")


def missing_reason(dataset: str) -> str | None:
  """Why ``dataset`` cannot be loaded here (its files are missing or unusable), or ``None``."""
  try:
    data.load_dataset(dataset)
  except DataError as e:
    return str(e)
  return None


def by_dataset(known: dict, dataset: str):
  """``known[dataset]``, else the whole dataset's entry for a split (``PAPER_FALLBACK``), else ``None``."""
  return known.get(dataset.lower()) or known.get(PAPER_FALLBACK.get(dataset.lower(), ""))


def paper_result(algo: str, dataset: str) -> dict | None:
  """The papers' numbers for ``algo`` on ``dataset`` (or on the whole of a split), or ``None``."""
  return by_dataset(PAPER_RESULTS.get(algo, {}), dataset)


def summarize(algo: str, dataset: str, seeds: list[int], runs: dict[int, dict], unfinished=()) -> dict:
  """One row from the finished runs (``seed -> read_run(...)``) among ``seeds``; ``unfinished``:
  the seeds whose runs were started but have not finished."""
  finished = [s for s in seeds if s in runs]
  done = [runs[s] for s in finished]

  def mean(key):
    values = [r[key] for r in done if not np.isnan(r[key])]
    return float(np.mean(values)) if values else float("nan")

  return {
      "algo": algo,
      "dataset": dataset,
      "n": done[0]["n"] if done else None,
      "seeds": list(seeds),
      "seeds_finished": finished,
      "seeds_unfinished": [s for s in seeds if s in unfinished and s not in runs],
      **{key: [r[key] for r in done] for key in ("acc", "nmi", "ari", "init_acc", "seconds", "rounds")},
      "warmup_epoch_seconds": mean("warmup_epoch_seconds"),
      "round_seconds": mean("round_seconds"),
      "paper": paper_result(algo, dataset),
  }


def mean_std(values) -> str:
  values = np.asarray(values, float)
  if values.size == 0:
    return "—"
  return f"{values.mean():.3f} ± {values.std():.3f}"


def _number(value: float, digits: int) -> str:
  return "—" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def seeds_cell(row: dict) -> str:
  """``"3 of 3"``, ``"2 of 3 (no seed 1)"``, ``"0 of 3 (seed 0 unfinished; no seed 1, 2)"``, ``"not run"``."""
  finished, unfinished, asked = row["seeds_finished"], row.get("seeds_unfinished", []), row["seeds"]
  if not finished and not unfinished:
    return "not run"
  absent = [s for s in asked if s not in finished and s not in unfinished]
  notes = []
  if unfinished:
    notes.append(f"seed {', '.join(map(str, unfinished))} unfinished")
  if absent:
    notes.append(f"no seed {', '.join(map(str, absent))}")
  return f"{len(finished)} of {len(asked)}" + (f" ({'; '.join(notes)})" if notes else "")


def paper_cell(paper: dict | None, n: int | None) -> str:
  """``"ACC / NMI [label]"``, with the paper's size where it is not the row's ``n``."""
  if paper is None:
    return "—"
  shown = " / ".join("—" if v is None else f"{v:.3f}" if round(v, 3) == v else f"{v:g}"
                     for v in (paper["acc"], paper["nmi"]))
  if paper["n"] != n:
    shown += f" ({paper['n'] / 1000:.3g}k)"
  return f"{shown} [{paper['cite']}]"


def markdown(header: list[str], rows: list[list]) -> list[str]:
  """The lines of a markdown table."""
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(map(str, cells)) + " |" for cells in rows])


def markdown_table(rows: list[dict]) -> str:
  """The combined table, one row per algorithm and dataset, and the papers' sources under it."""
  header = ["algo", "dataset", "N", "seeds", "ACC", "NMI", "ARI", "total s / run", "s / warm-up epoch", "s / round",
            "k-means on the warmed-up embedding ACC", "paper ACC / NMI"]
  lines = markdown(header, [
      [r["algo"], r["dataset"], r["n"] if r["n"] is not None else "—", seeds_cell(r),
       mean_std(r["acc"]), mean_std(r["nmi"]), mean_std(r["ari"]),
       _number(np.mean(r["seconds"]) if r["seconds"] else None, 0),
       _number(r["warmup_epoch_seconds"], 2), _number(r["round_seconds"], 2),
       mean_std(r["init_acc"]), paper_cell(r["paper"], r["n"])]
      for r in rows])
  return "\n".join(lines + papers_footnote(rows, SOURCES))


def papers_footnote(rows: list[dict], sources: dict[str, str]) -> list[str]:
  """The lines under a table naming the sources its rows' ``paper`` cells cite (none if none)."""
  cited = sorted({r["paper"]["cite"] for r in rows if r.get("paper")})
  if not cited:
    return []
  return ["", "paper ACC / NMI: " + "; ".join(f"[{label}] {sources[label]}" for label in cited)
          + ". A size in brackets, as (70k): the paper's number is on that many images, not on the row's N."]


def legacy_table(rows: list[dict]) -> str:
  """The one-algorithm table of ``--algo``, with k-means on the pixels beside it."""
  header = ["dataset", "N", "ACC", "NMI", "ARI", "rounds", "s / warm-up epoch", "s / round", "total s",
            "k-means on the warmed-up embedding ACC", "k-means on pixels ACC / NMI"]
  return "\n".join(markdown(header, [
      [r["dataset"], r["n"], mean_std(r["acc"]), mean_std(r["nmi"]), mean_std(r["ari"]),
       f"{np.mean(r['rounds']):.0f}", f"{r['warmup_epoch_seconds']:.2f}", f"{r['round_seconds']:.2f}",
       f"{np.mean(r['seconds']):.0f}", mean_std(r["init_acc"]),
       f"{r['kmeans_pixels']['acc']:.3f} / {r['kmeans_pixels']['nmi']:.3f}"]
      for r in rows]))


def note(text: str) -> None:
  print(f"note: {text}", file=sys.stderr)


def collect(algo_names: list[str], datasets: list[str], seeds: list[int], root: pathlib.Path, *,
            table_only: bool, overrides: dict, pretrained_from: str | None) -> list[dict]:
  """The rows, dataset by dataset in the algorithms' order; trains what is missing unless
  ``table_only``. A dataset that cannot be loaded here (and, with ``table_only``, has no run
  under ``root``) is skipped with a note."""
  rows = []
  for dataset in datasets:
    if table_only:
      runs = {a: {s: r for s in seeds if (r := read_run(workdir_of(root, a, dataset, s))) is not None}
              for a in algo_names}
      started = {a: [s for s in seeds if workdir_of(root, a, dataset, s).is_dir()] for a in algo_names}
      if not any(started.values()) and (reason := missing_reason(dataset)):
        note(f"skipping {dataset} (no runs under {root}, not available here): {reason}")
        continue
    else:
      if reason := missing_reason(dataset):
        note(f"skipping {dataset}, not available here: {reason}")
        continue
      runs, started = {}, {}
      for algo in algo_names:
        runs[algo] = {}
        for seed in seeds:
          extra = {}
          if pretrained_from and pretrained_from != algo:
            extra["pretrained"] = str(workdir_of(root, pretrained_from, dataset, seed))
          runs[algo][seed] = run_one(algo, dataset, seed, root, {**overrides, **extra})
        started[algo] = list(seeds)
    rows.extend(summarize(a, dataset, seeds, runs[a], started[a]) for a in algo_names)
  return rows


def ordered_algos(names: list[str] | None, pretrained_from: str | None) -> list[str]:
  """The algorithms asked for (default: all, in ``ALGO_ORDER``), ``pretrained_from`` first."""
  known = [a for a in ALGO_ORDER if a in algos.REGISTRY] + [a for a in algos.REGISTRY if a not in ALGO_ORDER]
  names = list(dict.fromkeys(names)) if names else known
  unknown = [a for a in names + ([pretrained_from] if pretrained_from else []) if a not in algos.REGISTRY]
  if unknown:
    raise JaxclustError(f"unknown algorithm {unknown[0]!r}; known: {', '.join(known)}")
  if pretrained_from in names:
    names.remove(pretrained_from)
    names.insert(0, pretrained_from)
  return names


def main(argv=None) -> int:
  xla_cpu.configure()  # before the first JAX computation, as bin/train does
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  which = parser.add_mutually_exclusive_group()
  which.add_argument("--algos", nargs="+", default=None, metavar="ALGO",
                     help=f"the algorithms (default: all, {' '.join(ALGO_ORDER)})")
  which.add_argument("--algo", default=None, metavar="ALGO",
                     help="one algorithm, with the older one-algorithm table (k-means on pixels beside it)")
  parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist-test"])
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--root", default="runs/quality")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value of every algorithm's runs (repeatable)")
  parser.add_argument("--json", default=None, help="also write the rows as JSON here")
  parser.add_argument("--pretrained-from", default=None, metavar="ALGO",
                      help="start each run from the warm-up of ALGO's run with the same dataset and seed "
                           "under ROOT (IDEC after DEC: the same pretraining, done once)")
  parser.add_argument("--table-only", action="store_true",
                      help="train nothing: read back the finished runs under ROOT and mark the missing ones")
  args = parser.parse_args(argv)
  root = pathlib.Path(args.root)
  try:
    names = ordered_algos([args.algo] if args.algo else args.algos, args.pretrained_from)
    for dataset in args.datasets:
      check_dataset_name(dataset)
    overrides = dict(cli.parse_override(item) for item in args.set)
    rows = collect(names, args.datasets, args.seeds, root, table_only=args.table_only,
                   overrides=overrides, pretrained_from=args.pretrained_from)
    legacy = args.algo is not None and not args.table_only
    if legacy:
      for row in rows:
        row["kmeans_pixels"] = kmeans_baseline(row["dataset"], 0)
  except JaxclustError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  command = "command: python benchmarks/quality.py " + " ".join(argv) + "\n"
  if args.table_only:
    print(f"\n{' '.join(names)}, seeds {args.seeds}, finished runs read back from {root}")
  else:
    import jax

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    print(f"\n{' '.join(names)}, seeds {args.seeds}, {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{machine}")
  print(command)
  print(legacy_table(rows) if legacy else markdown_table(rows))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
