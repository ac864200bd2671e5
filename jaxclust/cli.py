"""``bin/train``: train one algorithm on one dataset and write the results to a workdir.

The logic is :func:`train_and_evaluate`, which tests call directly; :func:`main` only parses
arguments, joins a run of several processes where asked (``--num-processes``, before any
other JAX call), and turns :class:`~jaxclust.errors.JaxclustError` into a one-line message
and a non-zero exit.

Several processes (hosts) share one workdir, as on a shared filesystem: every process writes
its part of the checkpoints, process 0 alone writes ``config.json``, ``metrics.jsonl``,
``summary.json`` and the assignments, and prints progress. The plots and report, which
recompute embeddings on every device, are then left to ``bin/report WORKDIR`` after the run.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import pathlib
import re
import shutil
import sys
import time
import types
import typing

import jax
import numpy as np

from jaxclust import algos, data, metrics, parallel, report, xla_cpu
from jaxclust.checkpoint import write_json
from jaxclust.engine import Engine
from jaxclust.errors import CheckpointError, ConfigError, JaxclustError

# Keys that may change between a run and its resumption without making the checkpoint foreign.
_RESUMABLE_KEYS = {"max_rounds", "eval_batch_size", "epoch_mode"}


def parse_override(text: str) -> tuple[str, object]:
  """``"key=value"`` -> ``(key, value)``; the value is a Python literal or else a string."""
  if "=" not in text:
    raise ConfigError(f"config override {text!r} must look like key=value")
  key, raw = text.split("=", 1)
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  return key.strip().replace("-", "_"), value


def _coerce(field: dataclasses.Field, value, hints: dict):
  """Converts an override to the field's declared type, or says why it cannot."""
  kind = hints[field.name]
  options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
  if value is None and type(None) in options:
    return None
  for option in options:
    origin = typing.get_origin(option) or option
    try:
      if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
      if origin is bool and isinstance(value, bool):
        return value
      if origin is int and isinstance(value, int) and not isinstance(value, bool):
        return value
      if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
      if origin is str and isinstance(value, str):
        return value
    except TypeError:
      continue
  raise ConfigError(f"config key {field.name} expects {kind}; got {value!r}")


def build_config(algo_module, dataset: data.Dataset, overrides: dict) -> object:
  """Defaults <- per-dataset settings <- the number of classes <- command-line overrides."""
  config_cls = algo_module.Config
  fields = {f.name: f for f in dataclasses.fields(config_cls)}
  hints = typing.get_type_hints(config_cls)
  values = dict(algo_module.dataset_settings(dataset.name, dataset.image_shape))
  if dataset.n_classes is not None and "n_clusters" not in algo_module.DATASET_SETTINGS.get(dataset.name, {}):
    values["n_clusters"] = dataset.n_classes
  for key, value in overrides.items():
    if key not in fields:
      close = [k for k in fields if k.split("_")[0] == key.split("_")[0]]
      hint = f"; did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(f"unknown config key {key!r} for this algorithm{hint} (see --help)")
    values[key] = _coerce(fields[key], value, hints)
  return config_cls(**values)


def config_from_record(record: dict, dataset: data.Dataset, overrides: dict | None = None):
  """``(algorithm module, config)`` of a run from its ``config.json`` ``record`` (which also
  names the algorithm, dataset and split), with ``overrides`` on top."""
  module = algos.REGISTRY[record["algo"]]
  names = {f.name for f in dataclasses.fields(module.Config)}
  saved = {k: v for k, v in record.items() if k in names}
  return module, build_config(module, dataset, {**saved, **(overrides or {})})


def _config_record(algo: str, dataset_spec: str, split: str, config) -> dict:
  return {"algo": algo, "dataset": dataset_spec, "split": split, **dataclasses.asdict(config)}


def _prepare_workdir(workdir: pathlib.Path, record: dict, restart: bool) -> None:
  """Checks that ``workdir`` is writable and holds no checkpoint of another config, then (on
  process 0) clears it for ``restart`` and writes ``config.json``. Every process checks
  before any process changes the workdir, so all of them fail alike."""
  process = jax.process_index()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / (".write-test" + (f"-{process}" if process else ""))
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise CheckpointError(f"workdir {workdir} is not writable: {e.strerror or e}") from None
  config_path = workdir / "config.json"
  if not restart:
    _check_resumable(workdir, record)
  parallel.barrier("workdir checked")
  if process == 0:
    if restart:
      for name in ("checkpoints", "metrics.jsonl", "summary.json", "assignments.npy", "assignments.csv",
                   "soft_assignments.npy"):
        target = workdir / name
        if target.is_dir():
          shutil.rmtree(target)
        elif target.exists():
          target.unlink()
    write_json(config_path, record)
  parallel.barrier("workdir ready")


def _check_resumable(workdir: pathlib.Path, record: dict) -> None:
  config_path = workdir / "config.json"
  if config_path.exists() and (workdir / "checkpoints").exists():
    try:
      previous = json.loads(config_path.read_text())
    except (OSError, ValueError):
      raise CheckpointError(f"{config_path} is unreadable; start over with --restart") from None
    differing = sorted(
        k for k in set(previous) | set(record)
        if k not in _RESUMABLE_KEYS and _jsonable(previous.get(k)) != _jsonable(record.get(k))
    )
    if differing:
      raise CheckpointError(
          f"workdir {workdir} holds a checkpoint of another config (differs in {', '.join(differing)}); "
          "use another --workdir or pass --restart"
      )


def _jsonable(value):
  return json.loads(json.dumps(value))


def default_workdir(algo: str, dataset_spec: str, seed: int) -> pathlib.Path:
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_spec).strip("_")
  return pathlib.Path("runs") / f"{algo}-{safe}-seed{seed}"


def train_and_evaluate(
    algo: str = "depict",
    dataset: str = data.DEFAULT_DATASET,
    workdir: str | os.PathLike | None = None,
    overrides: dict | None = None,
    *,
    data_dir: str | None = None,
    split: str = "all",
    restart: bool = False,
    verbosity: int = 1,
    plots: bool = True,
) -> dict:
  """Trains ``algo`` on ``dataset`` and writes the results to ``workdir``.

  Outputs: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``assignments.npy`` (int,
  dataset order), ``assignments.csv``, ``soft_assignments.npy`` and ``summary.json``; with
  ``plots`` (and matplotlib), ``plots/*.png`` and ``report.html`` (:mod:`jaxclust.report`).
  Rerunning with the same workdir resumes from the last complete round. With several
  processes, each calls this with the same workdir: all write the checkpoints, process 0 alone
  the other files and the console output; the plots are left to ``bin/report`` then.

  Returns:
    the summary dict (also in ``summary.json``).
  """
  start = time.time()
  main_process = parallel.is_main_process()
  verbosity = verbosity if main_process else 0
  if algo not in algos.REGISTRY:
    raise ConfigError(f"unknown algorithm {algo!r}; available: {', '.join(sorted(algos.REGISTRY))}")
  module = algos.REGISTRY[algo]
  dataset_obj = data.load_dataset(dataset, data_dir=data_dir, split=split)
  config = build_config(module, dataset_obj, dict(overrides or {}))
  config.validate(dataset_obj.n)
  workdir = pathlib.Path(workdir) if workdir is not None else default_workdir(algo, dataset, config.seed)
  _prepare_workdir(workdir, _config_record(algo, dataset, split, config), restart)

  if verbosity:
    print(f"{algo} on {dataset_obj.name}: {dataset_obj.n} images of shape {dataset_obj.image_shape}, "
          f"{config.n_clusters} clusters, workdir {workdir}", file=sys.stderr)
  algorithm = module.ALGORITHM(config, dataset_obj.image_shape)
  result = Engine(algorithm, dataset_obj.x, dataset_obj.y, workdir=workdir, verbosity=verbosity).fit()

  summary = {
      "algo": algo,
      "dataset": dataset_obj.name,
      "n": dataset_obj.n,
      "n_clusters": config.n_clusters,
      "rounds": result.rounds,
      "converged": result.converged,
      "seconds": time.time() - start,
      "train_seconds": result.seconds,
  }
  if dataset_obj.y is not None:
    summary.update(metrics.clustering_scores(dataset_obj.y, result.assignments))
  # The plots recompute embeddings from the checkpoints on all devices of the mesh, a collective
  # that process 0 cannot run alone: a run of several processes leaves them to bin/report.
  draw = plots and jax.process_count() == 1
  if main_process:
    _write_results(workdir, result, dataset_obj.y, summary, dataset_obj if draw else None, verbosity)
  if plots and not draw and verbosity:
    print(f"plots not drawn in a run of {jax.process_count()} processes; draw them with bin/report {workdir}",
          file=sys.stderr)
  if verbosity:
    shown = ", ".join(f"{k} {summary[k]:.4f}" for k in ("acc", "nmi", "ari") if k in summary)
    print(f"done in {summary['seconds']:.1f}s after {result.rounds} rounds"
          + (f": {shown}" if shown else "") + f"; results in {workdir}", file=sys.stderr)
  return summary


def _write_results(workdir: pathlib.Path, result, labels, summary: dict, plot_dataset, verbosity: int) -> None:
  """The assignments, ``summary.json`` and (for ``plot_dataset``) the plots and report."""
  np.save(workdir / "assignments.npy", result.assignments)
  np.save(workdir / "soft_assignments.npy", result.soft_assignments)
  with open(workdir / "assignments.csv", "w") as f:
    f.write("index,cluster" + ("" if labels is None else ",label") + "\n")
    f.writelines(f"{i},{k}" + ("" if labels is None else f",{labels[i]}") + "\n"
                 for i, k in enumerate(result.assignments))
  write_json(workdir / "summary.json", summary)
  if plot_dataset is not None:
    report.draw_after_training(workdir, plot_dataset, verbosity)


def _config_help(algo: str) -> str:
  module = algos.REGISTRY[algo]
  lines = [f"config keys of {algo} (override with --set KEY=VALUE):"]
  for f in dataclasses.fields(module.Config):
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    lines.append(f"  {f.name} = {default!r}")
  return "\n".join(lines)


def _example(algo: str) -> str:
  keys = [f.name for f in dataclasses.fields(algos.REGISTRY[algo].Config)]
  key = "warmup_epochs" if "warmup_epochs" in keys else keys[0]
  return f"example: bin/train --algo {algo} --dataset fashion-mnist-test --set {key}=20"


def make_parser(algo: str | None = None) -> argparse.ArgumentParser:
  epilog = _config_help(algo) if algo in algos.REGISTRY else "pass --algo NAME --help to list its config keys"
  parser = argparse.ArgumentParser(
      prog="bin/train",
      description="Train a deep clustering algorithm and write assignments, metrics and checkpoints.",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=epilog + "\n\n" + _example(algo if algo in algos.REGISTRY else "depict"),
  )
  parser.add_argument("--algo", default="depict", help=f"one of: {', '.join(sorted(algos.REGISTRY))}")
  parser.add_argument("--dataset", default=data.DEFAULT_DATASET,
                      help=f"a name ({', '.join(data.available_datasets())}) or npz:PATH, h5:PATH, "
                           "folder:PATH, tfds:NAME")
  parser.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
  parser.add_argument("--split", default="all", help="all, train or test (where the dataset has splits)")
  parser.add_argument("--workdir", default=None, help="output directory (default runs/ALGO-DATASET-seedN)")
  parser.add_argument("--seed", type=int, default=None)
  parser.add_argument("--n-clusters", type=int, default=None)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value, e.g. --set warmup_epochs=20 (repeatable)")
  parser.add_argument("--pretrained", default=None, metavar="WORKDIR",
                      help="start from the warmed-up network of an earlier run (same architecture) "
                           "and skip the warm-up; same as --set pretrained=WORKDIR")
  parser.add_argument("--restart", action="store_true", help="ignore checkpoints in the workdir and start over")
  parser.add_argument("--no-plots", action="store_true",
                      help="skip the plots and report.html drawn at the end (bin/report WORKDIR draws them later)")
  hosts = parser.add_argument_group(
      "several hosts", "run one process per host (or per group of devices) with the same arguments, each with "
      "its own --process-id; they train as one over the devices of all, sharing the --workdir (process 0 writes "
      "logs and results, all write checkpoints). Each flag falls back on the environment variable named. "
      "Two hosts: bin/train ARGS --coordinator-address HOST0:1234 --num-processes 2 --process-id 0 on HOST0 "
      "and the same with --process-id 1 on the other.")
  hosts.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                     help="where process 0 listens for the others [JAX_COORDINATOR_ADDRESS]")
  hosts.add_argument("--num-processes", type=int, default=None, metavar="N",
                     help="how many processes take part (default 1) [JAX_NUM_PROCESSES]")
  hosts.add_argument("--process-id", type=int, default=None, metavar="I",
                     help="this process's id, 0 to N-1 [JAX_PROCESS_ID]")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--quiet", action="store_true", help="print errors only")
  group.add_argument("--verbose", action="store_true", help="also print every warm-up epoch")
  return parser


def distributed_settings(args: argparse.Namespace, environ=None) -> tuple[str | None, int, int | None]:
  """``(coordinator address, number of processes, process id)`` from the flags, or where a
  flag is absent from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``."""
  environ = os.environ if environ is None else environ
  values = []
  for flag, name, kind in ((args.coordinator_address, "JAX_COORDINATOR_ADDRESS", str),
                           (args.num_processes, "JAX_NUM_PROCESSES", int),
                           (args.process_id, "JAX_PROCESS_ID", int)):
    if flag is None and environ.get(name, "").strip():
      try:
        flag = kind(environ[name].strip())
      except ValueError:
        raise ConfigError(f"{name} must be an integer; got {environ[name]!r}") from None
    values.append(flag)
  address, count, process = values
  return address, 1 if count is None else count, process


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  xla_cpu.configure()  # before the first JAX computation: convolutions on every core
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--algo", default="depict")
  known, _ = pre.parse_known_args(argv)
  args = make_parser(known.algo).parse_args(argv)
  try:
    parallel.initialize(*distributed_settings(args))
    overrides = dict(parse_override(item) for item in args.set)
    if args.seed is not None:
      overrides["seed"] = args.seed
    if args.n_clusters is not None:
      overrides["n_clusters"] = args.n_clusters
    if args.pretrained is not None:
      overrides["pretrained"] = args.pretrained
    train_and_evaluate(
        args.algo, args.dataset, args.workdir, overrides,
        data_dir=args.data_dir, split=args.split, restart=args.restart,
        verbosity=0 if args.quiet else (2 if args.verbose else 1), plots=not args.no_plots,
    )
  except JaxclustError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted; the last complete round is checkpointed, rerun the same command to resume",
          file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
