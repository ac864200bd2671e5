"""Several hosts: bin/train in two processes of 2 (emulated CPU) devices each, joined over
127.0.0.1, gives the result of one process of 4 devices; process 0 alone writes the results.
Bad distributed settings give one clear line."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxclust import cli, data, metrics, parallel
from jaxclust.checkpoint import Checkpointer
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
  digits = data.load_dataset("digits")
  x = np.round((digits.x[:N_SAMPLES, ..., 0] + 1) / 2 * 255).astype(np.uint8)
  path = tmp_path_factory.mktemp("data") / "digits400.npz"
  np.savez(path, x=x, y=digits.y[:N_SAMPLES])
  return path, digits.y[:N_SAMPLES]


def train_args(dataset, workdir):
  config = {**DEC, "n_clusters": N_CLUSTERS, "batch_size": 30}  # 4 devices do not divide 30
  sets = [arg for k, v in config.items() for arg in ("--set", f"{k}={tuple(v) if isinstance(v, list) else v!r}")]
  return ["--algo", "dec", "--dataset", f"npz:{dataset}", "--workdir", str(workdir), *sets]


def device_env(devices, **extra):
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(digits_subset, tmp_path_factory):
  """One process of 4 devices; then two processes of 2 devices sharing one workdir, process 0
  told by flags, process 1 by the environment variables."""
  dataset, labels = digits_subset
  root = tmp_path_factory.mktemp("runs")
  single = root / "single"
  done = subprocess.run([sys.executable, TRAIN, *train_args(dataset, single), "--quiet", "--no-plots"],
                        env=device_env(4), capture_output=True, text=True, check=False, timeout=900)
  assert done.returncode == 0, done.stderr

  shared, address = root / "shared", f"127.0.0.1:{free_port()}"
  flags = ["--coordinator-address", address, "--num-processes", "2", "--process-id", "0"]
  variables = {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  processes = []
  for pid, (extra_args, extra_env) in enumerate([(flags, {}), ([], variables)]):
    env = device_env(2, WRITES_LOG=str(root / f"writes{pid}.txt"), **extra_env)
    processes.append(subprocess.Popen([sys.executable, "-c", AUDITED_TRAIN, TRAIN, *train_args(dataset, shared),
                                       *extra_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
  outputs = []
  for process in processes:
    try:
      _, err = process.communicate(timeout=900)
    finally:
      if process.poll() is None:
        process.kill()
    outputs.append((process.returncode, err))
  for pid, (code, err) in enumerate(outputs):
    assert code == 0, f"process {pid}:\n{err}"
  writes = [(root / f"writes{pid}.txt").read_text().splitlines() for pid in (0, 1)]
  return {"single": single, "shared": shared, "labels": labels, "stderr": [err for _, err in outputs],
          "writes": writes}


def test_two_processes_give_the_result_of_one(runs):
  single, shared, y = runs["single"], runs["shared"], runs["labels"]
  one, two = np.load(single / "assignments.npy"), np.load(shared / "assignments.npy")
  assert one.shape == two.shape == (N_SAMPLES,)
  for score in (metrics.acc, metrics.nmi):
    assert abs(score(y, one) - score(y, two)) <= 0.01
  assert metrics.acc(one, two) > 0.99
  np.testing.assert_allclose(np.load(single / "soft_assignments.npy"), np.load(shared / "soft_assignments.npy"),
                             atol=2e-2)
  summary = json.loads((shared / "summary.json").read_text())
  assert summary["acc"] == pytest.approx(metrics.acc(y, two)) and summary["rounds"] == DEC["max_rounds"]
  # One writer: the same records as the single process's, none twice.
  records = [[(r["phase"], r.get("epoch"), r.get("round")) for r in map(json.loads, (w / "metrics.jsonl").open())]
             for w in (single, shared)]
  assert records[0] == records[1]
  # Every process wrote its part of each checkpoint; the steps are those of the single run, and
  # this one process reads the last one back: the last E-step's assignments.
  steps = [sorted(int(p.name) for p in (w / "checkpoints").iterdir() if p.name.isdigit()) for w in (single, shared)]
  assert steps[0] == steps[1] and steps[0]
  with Checkpointer(shared / "checkpoints") as checkpoints:
    saved = checkpoints.restore_saved(steps[1][-1])
  np.testing.assert_array_equal(np.asarray(saved["assignments"]), two)
  assert int(saved["phase"]) == 1 and int(saved["counter"]) == DEC["max_rounds"]


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
