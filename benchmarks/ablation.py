"""The papers' ablations as one table: each variant the default config with some terms dropped.

  python benchmarks/ablation.py --algo ics --datasets digits --seeds 0 1 2
  python benchmarks/ablation.py --algo ics --datasets digits --full-from runs/q3
  python benchmarks/ablation.py --algo dscdan --datasets fashion-mnist-test --seeds 0
  python benchmarks/ablation.py --algo ics --root runs/ablation --table-only
  python benchmarks/ablation.py --algo ics --variants "no triplet" --seeds 1 2

``ics`` (paper 003, Figure 5): the whole objective, without the triplet term, without the
entropy term, without both (``triplet_weight=0``, ``entropy_weight=0``). ``dscdan`` (paper
002, Table 4): ConvAE, ConvAE+MI, ConvAE+RS, ConvAE+MI+RS and ConvAE+MI+RS+SN, with the
settings its module docstring lists (the first four end at k-means on the codes).

Each run goes through ``benchmarks/quality.py``'s code path to
``ROOT/VARIANT/ALGO-DATASET-seedN`` (the variant's name in lower case, ``+`` as ``-``); a
finished run is read back instead of rerun, an interrupted one resumes. ``--full-from DIR``
takes the runs of the variant without overrides (the default config) from ``DIR`` instead,
for example the quality table's runs, so they are not trained twice. Prints one markdown
table: per variant and dataset the overrides, the seeds finished, ACC, NMI and ARI as
mean ± std, the mean rounds and wall seconds, and the paper's figures for the same variant and
dataset where it prints them (``PAPER_ABLATION``); ``--json PATH`` writes the rows. ``--variants``
trains (or reads) only the named variants.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import quality  # noqa: E402

from jaxclust import xla_cpu  # noqa: E402

_DSCDAN_NO_MI = {"global_mi_weight": 0.0, "local_mi_weight": 0.0, "prior_weight": 0.0}

VARIANTS: dict[str, dict[str, dict]] = {
    "ics": {
        "full": {},
        "no triplet": {"triplet_weight": 0.0},
        "no entropy": {"entropy_weight": 0.0},
        "no triplet, no entropy": {"triplet_weight": 0.0, "entropy_weight": 0.0},
    },
    "dscdan": {
        "ConvAE": {"relative_reconstruction_weight": 0.0, **_DSCDAN_NO_MI, "max_rounds": 0},
        "ConvAE+MI": {"relative_reconstruction_weight": 0.0, "max_rounds": 0},
        "ConvAE+RS": {**_DSCDAN_NO_MI, "max_rounds": 0},
        "ConvAE+MI+RS": {"max_rounds": 0},
        "ConvAE+MI+RS+SN": {},
    },
}
"""Per algorithm, the variants in the papers' order: name -> config overrides."""

ABLATION_SOURCES = {
    "DSCDAN T4": "Yang et al., Deep Spectral Clustering using Dual Autoencoder Network (DSCDAN), CVPR 2019, "
                 "Table 4: MNIST-full 70,000, MNIST-test 10,000, USPS 9,298, Fashion-MNIST 70,000 images",
}
"""The tables behind ``PAPER_ABLATION``, by the short label the table shows (../shared/papers)."""


def _table4(*acc_nmi: tuple[float, float], n: int) -> dict[str, dict]:
  names = ("ConvAE", "ConvAE+MI", "ConvAE+RS", "ConvAE+MI+RS", "ConvAE+MI+RS+SN")
  return {name: quality._paper(acc, nmi, n, "DSCDAN T4") for name, (acc, nmi) in zip(names, acc_nmi, strict=True)}


PAPER_ABLATION: dict[str, dict[str, dict[str, dict]]] = {
    "dscdan": {
        "mnist": _table4((0.776, 0.745), (0.835, 0.800), (0.803, 0.841), (0.957, 0.910), (0.978, 0.941), n=70000),
        "mnist-test": _table4((0.781, 0.751), (0.844, 0.796), (0.801, 0.850), (0.961, 0.914), (0.980, 0.946),
                              n=10000),
        "usps": _table4((0.698, 0.652), (0.785, 0.744), (0.798, 0.752), (0.831, 0.827), (0.869, 0.857), n=9298),
        "fashion-mnist": _table4((0.546, 0.556), (0.592, 0.609), (0.614, 0.597), (0.656, 0.640), (0.662, 0.645),
                                 n=70000),
    },
}
"""The papers' ACC and NMI per algorithm, dataset (our loader's name) and variant. The text copy of
DSCDAN's Table 4 lost its layout; its columns are read in the order of the variants' names, which
the last column confirms: it is DSCDAN's own figure in Table 3 on every dataset (MNIST-full 0.978 /
0.941, MNIST-test 0.980 / 0.946, USPS 0.869 / 0.857, Fashion-MNIST 0.662 / 0.645). Table 4's YTF
column is left out (no loader here); paper 003's Figure 5 (``ics``) prints no numbers."""


def paper_ablation(algo: str, dataset: str, variant: str) -> dict | None:
  """The paper's figure for ``variant`` on ``dataset`` (or on the whole of a split), or ``None``."""
  return (quality.by_dataset(PAPER_ABLATION.get(algo, {}), dataset) or {}).get(variant)


def variant_dir(name: str) -> str:
  return name.lower().replace("+", "-").replace(", ", "-").replace(" ", "-")


def variant_root(root: pathlib.Path, name: str, overrides: dict, full_from: pathlib.Path | None) -> pathlib.Path:
  return full_from if (full_from is not None and not overrides) else root / variant_dir(name)


def collect(algo: str, datasets: list[str], seeds: list[int], root: pathlib.Path, *, table_only: bool,
            full_from: pathlib.Path | None = None, variants: list[str] | None = None) -> list[dict]:
  rows = []
  for dataset in datasets:
    if not table_only and (reason := quality.missing_reason(dataset)):
      quality.note(f"skipping {dataset}, not available here: {reason}")
      continue
    for name, overrides in VARIANTS[algo].items():
      if variants is not None and name not in variants:
        continue
      where = variant_root(root, name, overrides, full_from)
      runs = {}
      for seed in seeds:
        workdir = quality.workdir_of(where, algo, dataset, seed)
        if table_only:
          if (run := quality.read_run(workdir)) is not None:
            runs[seed] = run
        else:
          runs[seed] = quality.run_one(algo, dataset, seed, where, overrides)
      started = [s for s in seeds if quality.workdir_of(where, algo, dataset, s).is_dir()]
      row = quality.summarize(algo, dataset, seeds, runs, started)
      rows.append({**row, "variant": name, "overrides": overrides, "root": str(where),
                   "paper": paper_ablation(algo, dataset, name)})
  return rows


def markdown_table(rows: list[dict]) -> str:
  header = ["variant", "overrides", "dataset", "seeds", "ACC", "NMI", "ARI", "rounds", "total s / run",
            "paper ACC / NMI"]
  lines = quality.markdown(header, [
      [r["variant"], " ".join(f"{k}={v:g}" for k, v in r["overrides"].items()) or "(default config)",
       r["dataset"], quality.seeds_cell(r), quality.mean_std(r["acc"]), quality.mean_std(r["nmi"]),
       quality.mean_std(r["ari"]), f"{np.mean(r['rounds']):.0f}" if r["rounds"] else "—",
       f"{np.mean(r['seconds']):.0f}" if r["seconds"] else "—", quality.paper_cell(r.get("paper"), r["n"])]
      for r in rows])
  return "\n".join(lines + quality.papers_footnote(rows, ABLATION_SOURCES))


def main(argv=None) -> int:
  xla_cpu.configure()  # before the first JAX computation, as bin/train does
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algo", required=True, choices=sorted(VARIANTS))
  parser.add_argument("--datasets", nargs="+", default=["digits"])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path("runs/ablation"))
  parser.add_argument("--full-from", type=pathlib.Path, default=None, metavar="DIR",
                      help="read (or write) the default config's runs under DIR instead of ROOT/full")
  parser.add_argument("--table-only", action="store_true", help="train nothing; read back finished runs")
  parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                      help="only these variants (their names in the table; default: all)")
  parser.add_argument("--json", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  unknown = [name for name in args.variants or [] if name not in VARIANTS[args.algo]]
  if unknown:
    parser.error(f"unknown variant {unknown[0]!r} of {args.algo}; choose from {list(VARIANTS[args.algo])}")
  for dataset in args.datasets:
    try:
      quality.check_dataset_name(dataset)
    except quality.DataError as e:
      parser.error(str(e))
  rows = collect(args.algo, args.datasets, args.seeds, args.root, table_only=args.table_only,
                 full_from=args.full_from, variants=args.variants)
  print(markdown_table(rows))
  if args.json:
    args.json.write_text(json.dumps(rows, indent=1, default=float))
  return 0


if __name__ == "__main__":
  sys.exit(main())
