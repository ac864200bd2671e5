"""Faults: a run killed with SIGKILL (mid-round, or while a checkpoint is being written)
resumes in the same workdir and ends as an uninterrupted run; a half-written checkpoint is
ignored; a corrupted one gives a clear error naming it, and --restart starts over."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import pattern_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# DEC with a small network: the faults are the engine's, and each process compiles quickly.
CONFIG = {"hidden_dims": (32, 32, 64), "embedding_dim": 4, "batch_size": 32, "eval_batch_size": 64,
          "warmup_epochs": 2, "steps_per_round": 5, "max_rounds": 5, "kmeans_n_init": 2, "tol": 0.0}

# Runs bin/train's main() in a fresh process; with DIE_AT set, the process SIGKILLs itself
# at the DIE_AT-th call of the patched function (no cleanup, no finally blocks).
RUNNER = textwrap.dedent("""
    import os, signal, sys
    from jaxclust import checkpoint, cli, engine

    die_at, where = os.environ.get("DIE_AT"), os.environ.get("DIE_WHERE")
    if die_at:
      calls = {"n": 0}
      if where == "mid-round":  # after the M-step of a round, before its E-step and save
        original = engine.Engine.run_epoch
        def patched(self, phase, *args, **kwargs):
          out = original(self, phase, *args, **kwargs)
          calls["n"] += phase == engine.CLUSTERING
          if calls["n"] == int(die_at):
            os.kill(os.getpid(), signal.SIGKILL)
          return out
        engine.Engine.run_epoch = patched
      else:  # "saving": right after an asynchronous save has started
        original = checkpoint.Checkpointer.save
        def patched(self, step, state):
          original(self, step, state)
          calls["n"] += 1
          if calls["n"] == int(die_at):
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.Checkpointer.save = patched
    sys.exit(cli.main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  base = tmp_path_factory.mktemp("faults")
  x, y = pattern_images()
  data_path = base / "patterns.npz"
  np.savez(data_path, x=(x * 255).astype(np.uint8), y=y)
  runner = base / "runner.py"
  runner.write_text(RUNNER)
  (base / "xla-cache").mkdir()
  reference = base / "reference"
  assert train(runner, data_path, reference).returncode == 0
  return runner, data_path, np.load(reference / "assignments.npy")


def train(runner, data_path, workdir, *extra, die_at=None, where=None):
  # The processes share one compilation cache, so only the first one compiles.
  cache = runner.parent / "xla-cache"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "JAX_COMPILATION_CACHE_DIR": str(cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  if die_at is not None:
    env.update(DIE_AT=str(die_at), DIE_WHERE=where)
  args = [sys.executable, str(runner), "--algo", "dec", "--dataset", f"npz:{data_path}", "--workdir", str(workdir), "--quiet",
          *[a for k, v in CONFIG.items() for a in ("--set", f"{k}={v!r}")], *extra]
  return subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=900)


def rounds_logged(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["round"] for line in lines if json.loads(line)["phase"] == "round"]


@pytest.mark.parametrize("where, die_at", [("mid-round", 3), ("saving", CONFIG["warmup_epochs"] + 3)])
def test_sigkill_then_rerun_ends_as_an_uninterrupted_run(setup, tmp_path, where, die_at):
  runner, data_path, expected = setup
  killed = train(runner, data_path, tmp_path, die_at=die_at, where=where)
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert not (tmp_path / "assignments.npy").exists()
  resumed = train(runner, data_path, tmp_path)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from checkpoint step" in resumed.stderr
  np.testing.assert_array_equal(np.load(tmp_path / "assignments.npy"), expected)
  rounds = rounds_logged(tmp_path)
  assert rounds[-1] == CONFIG["max_rounds"] and rounds.count(1) == 1  # the finished rounds were not redone


def test_half_written_checkpoint_is_ignored(setup, tmp_path):
  runner, data_path, expected = setup
  assert train(runner, data_path, tmp_path, "--set", "max_rounds=2").returncode == 0
  checkpoints = tmp_path / "checkpoints"
  latest = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  # What a writer killed before the final rename leaves behind: a temporary step directory.
  partial = checkpoints / f"{latest + 1}.orbax-checkpoint-tmp-1234567890"
  shutil.copytree(checkpoints / str(latest), partial)
  for f in partial.rglob("*"):
    if f.is_file():
      f.write_bytes(b"\0" * 7)
  resumed = train(runner, data_path, tmp_path)
  assert resumed.returncode == 0, resumed.stderr
  assert f"resuming from checkpoint step {latest} " in resumed.stderr
  np.testing.assert_array_equal(np.load(tmp_path / "assignments.npy"), expected)


def test_corrupted_checkpoint_is_named_and_restart_starts_over(setup, tmp_path):
  runner, data_path, expected = setup
  assert train(runner, data_path, tmp_path, "--set", "max_rounds=2").returncode == 0
  checkpoints = tmp_path / "checkpoints"
  latest = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  for f in (checkpoints / str(latest)).rglob("*"):
    if f.is_file() and f.name != "commit_success.txt":
      f.write_bytes(b"not a checkpoint")
  failed = train(runner, data_path, tmp_path)
  assert failed.returncode == 2
  message = failed.stderr.strip().splitlines()[-1]
  assert message.startswith("error: ") and str(checkpoints / str(latest)) in message and "--restart" in message
  restarted = train(runner, data_path, tmp_path, "--restart")
  assert restarted.returncode == 0, restarted.stderr
  np.testing.assert_array_equal(np.load(tmp_path / "assignments.npy"), expected)
