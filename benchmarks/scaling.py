"""How the cost of training grows with the dataset: seconds and peak memory against N.

  python benchmarks/scaling.py --algos depict dec --dataset fashion-mnist \\
      --sizes 1000 5000 10000 20000 70000 [--repeats 3] [--json PATH] [--plot PATH]

For each algorithm and each N (the first N images of ``--dataset``), a process of its own
builds the engine with the algorithm's settings for that dataset and times, after compilation
and one untimed call, the median over ``--repeats`` calls of:

- ``warmup epoch``: one pass of the warm-up objective over the N images;
- ``round``: one clustering round as the engine runs it, the E-step over the N images (predict
  in fixed-size chunks, then the targets) followed by the round's M-step minibatches (one epoch
  for DEPICT; ``steps_per_round`` steps for DEC, whose round length does not depend on N);
- ``E-step`` and ``M-step epoch`` (one pass of the clustering objective over the N images) alone;
- ``k-means init``: the initial clustering of the embedding (``init_clusters``, on the device).

Peak memory: the device's peak bytes in use on an accelerator; on CPU the process's peak
resident set, which includes the libraries and the dataset. The table ends with the exponent
``b`` of a least-squares fit ``seconds ~ N^b`` over the sizes from 5000 up (below, fixed
costs dominate): ``b`` near 1 means linear growth. The plot (``--plot``, needs matplotlib)
shows seconds against N on log-log axes with a dotted line of slope 1 through each series.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import throughput  # noqa: E402  (its timing loop)
from jaxclust import xla_cpu  # noqa: E402

PHASES = ("warmup_epoch", "round", "e_step", "m_step_epoch", "kmeans_init")
LABELS = {"warmup_epoch": "warm-up epoch", "round": "round", "e_step": "E-step",
          "m_step_epoch": "M-step epoch", "kmeans_init": "k-means init"}
FIT_FROM = 5000


def timed(fn, repeats: int) -> float:
  """Median seconds of ``repeats`` calls, after one call that compiles and one untimed call."""
  return throughput.timed(fn, repeats)[1]


def measure(algo_name: str, dataset_name: str, n: int, repeats: int, data_dir: str | None,
            overrides: dict) -> dict:
  import jax

  from jaxclust import algos, cli, data
  from jaxclust.engine import CLUSTERING, WARMUP, Engine

  module = algos.REGISTRY[algo_name]
  full = data.load_dataset(dataset_name, data_dir=data_dir)
  if n > full.n:
    raise SystemExit(f"{dataset_name} has {full.n} images; asked for {n}")
  dataset = data.Dataset(x=np.ascontiguousarray(full.x[:n]), y=None, name=full.name)
  config = cli.build_config(module, full, overrides)  # the full dataset's settings, as a user gets
  config.validate(n)
  algo = module.ALGORITHM(config, dataset.x.shape[1:])
  engine = Engine(algo, dataset.x, verbosity=0)
  params = jax.jit(algo.init)(jax.random.key(config.seed), engine.x[: engine.batch_size])
  copy = lambda tree: jax.tree.map(lambda a: a.copy(), tree)  # the train steps donate their state
  state = {phase: {"params": copy(params), "opt_state": engine.optimizers[phase].init(copy(params))}
           for phase in (WARMUP, CLUSTERING)}
  e_step = jax.jit(algo.e_step)
  targets = e_step(engine.predict(params))
  counter = iter(range(1_000_000))

  def epoch(phase, indices=None):
    def run():
      state[phase], _ = engine.run_epoch(phase, state[phase], targets, 0, next(counter), "", indices)
      jax.block_until_ready(state[phase])
    return run

  def run_e_step():
    jax.block_until_ready(e_step(engine.predict(state[CLUSTERING]["params"])))

  round_indices = engine._round_indices(1) if config.steps_per_round else None
  m_step_round = epoch(CLUSTERING, round_indices)

  def run_round():
    run_e_step()
    m_step_round()

  features = np.asarray(engine.embed(params))

  def run_kmeans():
    jax.block_until_ready(algo.init_clusters(params, features, jax.random.key(0)))

  seconds = {
      "warmup_epoch": timed(epoch(WARMUP), repeats),
      "m_step_epoch": timed(epoch(CLUSTERING), repeats),
      "e_step": timed(run_e_step, repeats),
      "round": timed(run_round, repeats),
      "kmeans_init": timed(run_kmeans, max(1, repeats // 2)),
  }
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  record = {"algo": algo_name, "dataset": dataset_name, "n": n, "batch_size": engine.batch_size,
            "steps_per_epoch": engine.steps_per_epoch, "epoch_mode": engine.epoch_mode,
            "round_steps": int(round_indices[0].shape[0]) if round_indices else engine.steps_per_epoch,
            "device": f"{device.platform}: {device.device_kind}", "seconds": seconds}
  if stats and "peak_bytes_in_use" in stats:
    record.update(peak_memory_bytes=int(stats["peak_bytes_in_use"]), peak_memory_kind="device peak bytes in use")
  else:
    record.update(peak_memory_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  peak_memory_kind="process peak RSS")
  return record


def exponent(ns, values) -> float | None:
  """Least-squares slope of log(seconds) on log(N) over the sizes from FIT_FROM up."""
  points = [(n, v) for n, v in zip(ns, values) if n >= FIT_FROM and v and v > 0]
  if len(points) < 2:
    return None
  x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
  return float(np.polyfit(x, y, 1)[0])


def markdown(records: list[dict], command: str) -> str:
  ok = [r for r in records if not r.get("error")]
  device = ok[0]["device"] if ok else "?"
  lines = [f"command: `{command}`", "",
           f"device: {device}; {platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}",
           "", "| algo | N | " + " | ".join(f"s / {LABELS[p]}" for p in PHASES) + " | peak memory MiB |",
           "|---|---|" + "---|" * len(PHASES) + "---|"]
  for r in records:
    if r.get("error"):
      lines.append(f"| {r['algo']} | {r['n']} | failed: {r['error']} |" + " |" * len(PHASES))
      continue
    cells = " | ".join(f"{r['seconds'][p]:.4g}" for p in PHASES)
    lines.append(f"| {r['algo']} | {r['n']} | {cells} | {r['peak_memory_bytes'] / 2**20:.0f} ({r['peak_memory_kind']}) |")
  for algo in dict.fromkeys(r["algo"] for r in ok):
    rows = [r for r in ok if r["algo"] == algo]
    ns = [r["n"] for r in rows]
    fits = [exponent(ns, [r["seconds"][p] for r in rows]) for p in PHASES]
    memory = exponent(ns, [r["peak_memory_bytes"] for r in rows])
    lines.append(f"| {algo} | exponent b (N >= {FIT_FROM}) | "
                 + " | ".join("—" if b is None else f"{b:.2f}" for b in fits)
                 + f" | {'—' if memory is None else f'{memory:.2f}'} |")
  return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ok = [r for r in records if not r.get("error")]
  if not ok:
    return
  algos = list(dict.fromkeys(r["algo"] for r in ok))
  fig, axes = plt.subplots(1, len(algos), figsize=(5.5 * len(algos), 4.2), squeeze=False)
  for ax, algo in zip(axes[0], algos):
    rows = [r for r in ok if r["algo"] == algo]
    ns = np.array([r["n"] for r in rows], float)
    for p in PHASES:
      values = np.array([r["seconds"][p] for r in rows])
      (line,) = ax.plot(ns, values, "o-", label=LABELS[p])
      ax.plot(ns, values[-1] * ns / ns[-1], ":", color=line.get_color(), linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (images)")
    ax.set_ylabel("seconds")
    ax.set_title(f"{algo} on {rows[0]['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> int:
  xla_cpu.configure()  # before the first JAX computation, as bin/train does
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algos", nargs="+", default=["depict", "dec"])
  parser.add_argument("--dataset", default="fashion-mnist")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 5000, 10000, 20000, 70000])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
  parser.add_argument("--json", default=None, help="write the records here as a JSON list")
  parser.add_argument("--plot", default=None, help="write the log-log plot here (PNG)")
  parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--worker-output", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  from jaxclust import algos, cli

  overrides = dict(cli.parse_override(item) for item in args.set)
  if args.worker:
    algo, n = args.worker[0], int(args.worker[1])
    record = measure(algo, args.dataset, n, args.repeats, args.data_dir, overrides)
    pathlib.Path(args.worker_output).write_text(json.dumps(record))
    return 0
  unknown = [a for a in args.algos if a not in algos.REGISTRY]
  if unknown:
    raise SystemExit(f"unknown algorithm(s) {', '.join(unknown)}; available: {', '.join(sorted(algos.REGISTRY))}")
  passthrough = ["--dataset", args.dataset, "--repeats", str(args.repeats)]
  passthrough += ["--data-dir", args.data_dir] if args.data_dir else []
  for item in args.set:
    passthrough += ["--set", item]
  records = []
  for algo in args.algos:
    for n in sorted(args.sizes):
      print(f"measuring {algo} at N={n} ...", file=sys.stderr, flush=True)
      with tempfile.TemporaryDirectory() as tmp:
        output = pathlib.Path(tmp) / "record.json"
        result = subprocess.run([sys.executable, __file__, *passthrough, "--worker", algo, str(n),
                                 "--worker-output", str(output)], check=False)
        if output.exists():
          records.append(json.loads(output.read_text()))
        else:
          records.append({"algo": algo, "n": n, "error": f"exit code {result.returncode} (stderr above)"})
      if args.json:  # written as it goes: a long sweep that is stopped keeps what it measured
        pathlib.Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
  command = "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
  print(markdown(records, command))
  if args.plot:
    plot(records, args.plot)
  return 0 if all(not r.get("error") for r in records) else 1


if __name__ == "__main__":
  sys.exit(main())
