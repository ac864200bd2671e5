"""Several hosts: bin/train in two processes of 2 (emulated CPU) devices each, joined over
127.0.0.1, gives the result of one process of 4 devices, for DEC and for SpectralNet (whose
rounds end with a whole-dataset pass and k-means on its outputs); process 0 alone writes the
results. Two processes stopped after some rounds and rerun in the same workdir resume from the
last complete round and end as an uninterrupted run. Bad distributed settings give one clear
line."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from jaxclust import cli, metrics, parallel
from jaxclust.checkpoint import Checkpointer
from jaxclust.engine import MODEL_STATE
from tests.helpers import assert_same_clustering, write_digits_subset
from tests.test_parallel import DEC

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bin", "train")
N_SAMPLES, N_CLUSTERS = 400, 10

# Runs bin/train (argv[1:]) and lists in $WRITES_LOG every path it creates, writes, renames or
# removes (Python's audit events: np.save, json, tensorboardX and shutil all go through them).
AUDITED_TRAIN = textwrap.dedent("""
    import os, runpy, sys
    log = open(os.environ["WRITES_LOG"], "w", buffering=1)
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
      if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
        paths = [path] if writes else []
      elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
        paths = list(args[:2]) if event == "os.rename" else [args[0]]
      else:
        return
      for p in paths:
        if isinstance(p, (str, bytes, os.PathLike)):
          log.write(os.path.abspath(os.fsdecode(p)) + "\\n")

    sys.addaudithook(hook)
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.fixture(scope="module")
def digits_subset(tmp_path_factory):
  """The first 400 of the 8x8 digits as an npz file (uint8, like the test patterns)."""
  path = tmp_path_factory.mktemp("data") / "digits400.npz"
  return path, write_digits_subset(path, N_SAMPLES)


DEC_CONFIG = {**DEC, "n_clusters": N_CLUSTERS, "batch_size": 30}  # 4 devices do not divide 30
# SpectralNet with small networks; its orthogonalization batches, affinities and per-round
# k-means all see the global minibatch or dataset.
SPECTRALNET = {"n_clusters": N_CLUSTERS, "hidden_dims": [32, 32, 64], "embedding_dim": 8, "spectral_hidden": [32, 32],
               "batch_size": 30, "eval_batch_size": 64, "warmup_epochs": 3, "steps_per_round": 4, "max_rounds": 2,
               "kmeans_n_init": 2, "tol": 0.0}
# Two rounds: the first is resumed from, the second runs after it. This small run is far from
# converged (a tenth of the assignments change each round), so rounding differences between one
# process and two grow round after round: one sample apart after round 2, 19 of 400 after
# round 3 on one CPU (AMD EPYC), past what assert_same_clustering allows. With one warm-up
# epoch and the packages pip resolved on 2026-11-24 (jax 0.10.2, flax 0.12.8, numpy 2.4.6) the
# two runs disagreed on 10% of the samples after round 2; after three epochs the codes are
# tight enough that their rounds stay within the bound.


def train_args(dataset, workdir, algo="dec", config=DEC_CONFIG):
  sets = [arg for k, v in config.items() for arg in ("--set", f"{k}={tuple(v) if isinstance(v, list) else v!r}")]
  return ["--algo", algo, "--dataset", f"npz:{dataset}", "--workdir", str(workdir), *sets]


def device_env(devices, cache, **extra):
  # The runs share one compilation cache: a run compiles only what no earlier run of the same
  # devices and processes did.
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
          **extra}


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def logged_records(workdir):
  """``(phase, epoch, round)`` of every line of ``metrics.jsonl``."""
  return [(r["phase"], r.get("epoch"), r.get("round")) for r in map(json.loads, (workdir / "metrics.jsonl").open())]


def train_alone(args, cache):
  """bin/train ARGS in one process of 4 devices; fails unless it exits with 0."""
  done = subprocess.run([sys.executable, TRAIN, *args, "--quiet", "--no-plots"], env=device_env(4, cache),
                        capture_output=True, text=True, check=False, timeout=900)
  assert done.returncode == 0, done.stderr


def train_together(args, cache, writes_logs=(None, None)):
  """bin/train ARGS in two processes of 2 devices each joined over 127.0.0.1, process 0 told
  by flags, process 1 by the environment variables; a process given a path in ``writes_logs``
  lists there every path it writes. Fails unless both exit with 0; returns their stderr."""
  address = f"127.0.0.1:{free_port()}"
  flags = ["--coordinator-address", address, "--num-processes", "2", "--process-id", "0"]
  variables = {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  processes, outputs = [], []
  try:
    for (extra_args, extra_env), log in zip([(flags, {}), ([], variables)], writes_logs):
      runner = [TRAIN] if log is None else ["-c", AUDITED_TRAIN, TRAIN]
      env = device_env(2, cache, **extra_env, **({} if log is None else {"WRITES_LOG": str(log)}))
      # Output goes to files, not pipes: a process blocked on a full pipe while the other is
      # awaited would stall both at their next collective.
      outputs.append(tempfile.TemporaryFile("w+"))
      processes.append(subprocess.Popen([sys.executable, *runner, *args, *extra_args], env=env,
                                        stdout=subprocess.DEVNULL, stderr=outputs[-1]))
    codes = [process.wait(timeout=900) for process in processes]
    errs = []
    for output in outputs:
      output.seek(0)
      errs.append(output.read())
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
    for output in outputs:
      output.close()
  for pid, (code, err) in enumerate(zip(codes, errs)):
    assert code == 0, f"process {pid}:\n{err}"
  return errs


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="module")
def runs(digits_subset, xla_cache, tmp_path_factory):
  """DEC in one process of 4 devices; then in two processes of 2 devices sharing one workdir."""
  dataset, labels = digits_subset
  root = tmp_path_factory.mktemp("runs")
  single, shared = root / "single", root / "shared"
  train_alone(train_args(dataset, single), xla_cache)
  logs = [root / f"writes{pid}.txt" for pid in (0, 1)]
  stderr = train_together(train_args(dataset, shared), xla_cache, writes_logs=logs)
  writes = [log.read_text().splitlines() for log in logs]
  return {"single": single, "shared": shared, "labels": labels, "stderr": stderr, "writes": writes}


@pytest.fixture(scope="module")
def spectral_runs(digits_subset, xla_cache, tmp_path_factory):
  """SpectralNet in one process of 4 devices; in two processes of 2 devices; and in two
  processes stopped after its first round (``max_rounds=1``), then rerun with the full config
  in the same workdir."""
  dataset, labels = digits_subset
  root = tmp_path_factory.mktemp("spectral")
  single, shared, resumed = root / "single", root / "shared", root / "resumed"
  train_alone(train_args(dataset, single, "spectralnet", SPECTRALNET), xla_cache)
  train_together(train_args(dataset, shared, "spectralnet", SPECTRALNET), xla_cache)
  train_together(train_args(dataset, resumed, "spectralnet", {**SPECTRALNET, "max_rounds": 1}), xla_cache)
  stopped_at = checkpoint_steps(resumed)[-1]
  stderr = train_together(train_args(dataset, resumed, "spectralnet", SPECTRALNET), xla_cache)
  return {"single": single, "shared": shared, "resumed": resumed, "labels": labels,
          "stopped_at": stopped_at, "stderr": stderr}


def check_same_result(single, shared, y, max_rounds):
  """The run of two processes in ``shared`` ends as the run of one in ``single``: the same
  assignments up to the order of float reductions, the same logs and checkpoint steps, all
  ``max_rounds`` rounds. Returns the last checkpoint of ``shared``."""
  one, two = np.load(single / "assignments.npy"), np.load(shared / "assignments.npy")
  assert one.shape == two.shape == (N_SAMPLES,)
  assert_same_clustering(y, one, two, np.load(single / "soft_assignments.npy"),
                         np.load(shared / "soft_assignments.npy"))
  summary = json.loads((shared / "summary.json").read_text())
  assert summary["acc"] == pytest.approx(metrics.acc(y, two)) and summary["rounds"] == max_rounds
  # One writer: the same records as the single process's, none twice.
  assert logged_records(single) == logged_records(shared)
  # Every process wrote its part of each checkpoint; the steps are those of the single run, and
  # this one process reads the last one back: the last E-step's assignments.
  assert checkpoint_steps(single) == checkpoint_steps(shared) != []
  with Checkpointer(shared / "checkpoints") as checkpoints:
    saved = checkpoints.restore_saved(checkpoint_steps(shared)[-1])
  np.testing.assert_array_equal(np.asarray(saved["assignments"]), two)
  assert int(saved["phase"]) == 1 and int(saved["counter"]) == max_rounds
  return saved


def test_two_processes_give_the_result_of_one(runs):
  """DEC: two processes of 2 devices end as one process of 4."""
  check_same_result(runs["single"], runs["shared"], runs["labels"], DEC["max_rounds"])


def test_only_process_0_writes_results_and_prints(runs):
  shared = str(runs["shared"])
  outside_checkpoints = [
      [p for p in writes if p.startswith(shared + os.sep) and not p.startswith(os.path.join(shared, "checkpoints"))
       and not os.path.basename(p).startswith(".write-test")]
      for writes in runs["writes"]]
  written = {os.path.relpath(p, shared).split(os.sep)[0] for p in outside_checkpoints[0]}
  assert {"config.json", "metrics.jsonl", "summary.json", "assignments.npy", "assignments.csv",
          "soft_assignments.npy"} <= written
  assert outside_checkpoints[1] == []
  # Process 1 did write checkpoint files (orbax: every process takes part in a save).
  assert any(p.startswith(os.path.join(shared, "checkpoints")) for p in runs["writes"][1])
  err0, err1 = runs["stderr"]
  assert "[round] round=4" in err0 and "done in" in err0 and "draw them with bin/report" in err0
  assert [line for line in err1.splitlines() if line.startswith("[") or "done in" in line] == []
  assert not (runs["shared"] / "report.html").exists()


def test_spectralnet_in_two_processes_gives_the_result_of_one(spectral_runs):
  """Each round's k-means on the outputs gathered from both processes (and the orthogonalization
  on the whole dataset before it) gives the assignments of one process of 4 devices, up to the
  order of float reductions; the logs, checkpoints and summary are those of that run."""
  saved = check_same_result(spectral_runs["single"], spectral_runs["shared"], spectral_runs["labels"],
                            SPECTRALNET["max_rounds"])
  state = saved["params"][MODEL_STATE]  # the outputs were clustered, on the whole dataset
  assert float(state["clustered"]) == 1.0 and float(state["n_samples"]) == N_SAMPLES


def test_two_processes_resume_from_the_last_complete_round(spectral_runs):
  """Two processes stopped after round 1 and rerun in the same workdir resume from round 1's
  checkpoint (k-means++ on the outputs done, its centroids saved), run the later rounds only,
  and end with the assignments of the uninterrupted run of two processes."""
  resumed, shared = spectral_runs["resumed"], spectral_runs["shared"]
  round_1 = SPECTRALNET["warmup_epochs"] + 1 + 1  # the engine's checkpoint step of round 1
  assert spectral_runs["stopped_at"] == round_1
  err0, err1 = spectral_runs["stderr"]
  assert f"resuming from checkpoint step {round_1} in" in err0 and "resuming" not in err1
  np.testing.assert_array_equal(np.load(resumed / "assignments.npy"), np.load(shared / "assignments.npy"))
  np.testing.assert_allclose(np.load(resumed / "soft_assignments.npy"), np.load(shared / "soft_assignments.npy"),
                             rtol=1e-6)
  # The warm-up and round 1 logged by the first run, the later rounds by the second: none twice.
  assert logged_records(resumed) == logged_records(shared)
  assert json.loads((resumed / "summary.json").read_text())["rounds"] == SPECTRALNET["max_rounds"]


@pytest.mark.parametrize("args, environ, message", [
    (["--num-processes", "0"], {}, "number of processes must be at least 1; got 0"),
    (["--num-processes", "2", "--process-id", "2", "--coordinator-address", "127.0.0.1:1234"], {},
     "process id must be between 0 and 1; got 2"),
    (["--num-processes", "2", "--process-id", "-1", "--coordinator-address", "127.0.0.1:1234"], {},
     "process id must be between 0 and 1; got -1"),
    (["--num-processes", "2", "--process-id", "0", "--coordinator-address", "127.0.0.1"], {}, "HOST:PORT"),
    (["--num-processes", "2", "--process-id", "0", "--coordinator-address", "host:99999"], {}, "HOST:PORT"),
    (["--num-processes", "2", "--process-id", "0"], {}, "HOST:PORT"),
    (["--num-processes", "2", "--coordinator-address", "127.0.0.1:1234"], {}, "needs the id of this process"),
    ([], {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES must be an integer; got 'two'"),
    ([], {"JAX_NUM_PROCESSES": "3", "JAX_PROCESS_ID": "3", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:9000"},
     "process id must be between 0 and 2; got 3"),
    (["--process-id", "0"], {"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "10.0.0.1"}, "HOST:PORT"),
])
def test_bad_distributed_settings_give_one_line(capsys, monkeypatch, tmp_path, args, environ, message):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  code = cli.main(["--dataset", "digits", "--workdir", str(tmp_path / "w"), *args])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not (tmp_path / "w").exists()  # nothing ran


def test_flags_come_before_the_environment():
  parser = cli.make_parser()
  environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:9000", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert cli.distributed_settings(parser.parse_args([]), environ) == ("10.0.0.1:9000", 4, 3)
  args = parser.parse_args(["--coordinator-address", "[::1]:8476", "--num-processes", "2", "--process-id", "1"])
  assert cli.distributed_settings(args, environ) == ("[::1]:8476", 2, 1)
  assert cli.distributed_settings(parser.parse_args([]), {}) == (None, 1, None)
  assert cli.distributed_settings(parser.parse_args([]), {"JAX_NUM_PROCESSES": " "}) == (None, 1, None)


def test_help_names_the_flags_and_their_variables():
  text = cli.make_parser("dec").format_help()
  for flag, variable in (("--coordinator-address", "JAX_COORDINATOR_ADDRESS"),
                         ("--num-processes", "JAX_NUM_PROCESSES"), ("--process-id", "JAX_PROCESS_ID")):
    assert flag in text and variable in text


def test_one_process_places_and_fetches_as_before():
  mesh = parallel.make_mesh()
  rows = np.arange(24, dtype=np.int32).reshape(3, 8)
  placed = parallel.shard_rows(rows, mesh, axis=1)
  assert placed.sharding == parallel.sharded(mesh, axis=1)
  fetched = parallel.to_host({"rows": placed, "n": placed.sum()})
  np.testing.assert_array_equal(fetched["rows"], rows)
  assert isinstance(fetched["rows"], np.ndarray) and int(fetched["n"]) == rows.sum()
  parallel.barrier("no one to wait for")
  assert parallel.is_main_process()
