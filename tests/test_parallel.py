"""Data parallel: the engine on 4 (emulated CPU) devices gives the result of 1 device, also
when the device count does not divide the batch."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxclust import parallel
from tests.helpers import assert_same_clustering

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains ALGO with CONFIG (JSON) on the test patterns; writes assignments and the device count.
RUNNER = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    from jaxclust import algos, data
    from jaxclust.engine import Engine
    from tests.helpers import pattern_images

    algo, config, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    x, y = pattern_images(n_per_class=40)  # one flipped sample moves ACC by 1/160
    x = data.scale_to_unit_range(x[..., None])
    module = algos.REGISTRY[algo]
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    engine = Engine(module.ALGORITHM(module.Config(**config), x.shape[1:]), x, y, verbosity=0)
    result = engine.fit()
    np.savez(out, assignments=result.assignments, soft=result.soft_assignments, devices=engine.mesh.size,
             traces=json.dumps(engine.trace_counts))
""")

DEC = {"hidden_dims": [32, 32, 64], "embedding_dim": 4, "n_clusters": 4, "eval_batch_size": 64, "warmup_epochs": 3,
       "steps_per_round": 5, "max_rounds": 4, "kmeans_n_init": 2, "tol": 0.0}
DEPICT = {"n_clusters": 4, "warmup_epochs": 2, "init_epochs": 2, "max_rounds": 3, "eval_batch_size": 64,
          "conv_features": [8, 8], "kernel_sizes": [4, 3], "strides": [2, 1], "paddings": [1, 1],
          "learning_rate": 1e-3, "kmeans_n_init": 2, "tol": 0.0}
ICS = {"n_clusters": 4, "conv_features": [8], "embedding_dim": 4, "warmup_epochs": 2, "steps_per_round": 4,
       "max_rounds": 2, "eval_batch_size": 64, "kmeans_n_init": 2, "negative_candidates": 4, "tol": 0.0}


def train(tmp_path, algo, config, devices):
  out = tmp_path / f"{algo}-{devices}.npz"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  done = subprocess.run([sys.executable, "-c", RUNNER, algo, json.dumps(config), str(out)], env=env,
                        capture_output=True, text=True, check=False, timeout=900)
  assert done.returncode == 0, done.stderr
  result = np.load(out)
  assert int(result["devices"]) == devices
  assert all(count == 1 for count in json.loads(str(result["traces"])).values())
  return result


@pytest.mark.parametrize("algo, config", [
    ("dec", {**DEC, "batch_size": 30}),  # 4 does not divide 30: padded with weight-0 rows
    ("depict", {**DEPICT, "batch_size": 32}),
    ("ics", {**ICS, "batch_size": 30}),
])
def test_four_devices_give_the_result_of_one(tmp_path, algo, config):
  one, four = train(tmp_path, algo, config, 1), train(tmp_path, algo, config, 4)
  y = np.repeat(np.arange(4), 40)
  assert_same_clustering(y, one["assignments"], four["assignments"], one["soft"], four["soft"])


def test_round_up_and_shardings():
  assert [parallel.round_up(n, 4) for n in (1, 4, 30, 32)] == [4, 4, 32, 32]
  mesh = parallel.make_mesh()
  assert mesh.axis_names == (parallel.DATA,) and mesh.size == len(__import__("jax").devices())
  assert tuple(parallel.sharded(mesh, axis=1).spec) == (None, parallel.DATA)
