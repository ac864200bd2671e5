"""jaxclust.xla_cpu: when the XLA:CPU flag is set, and that XLA accepts it and computes the same."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxclust import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def measured_jaxlib(monkeypatch):
  monkeypatch.setattr(xla_cpu, "_jaxlib_release", lambda: xla_cpu.JAXLIBS[0])


def test_adds_the_flag_on_several_cores_keeping_other_flags(measured_jaxlib):
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert xla_cpu.configure(cores=2, environ=environ)
  assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", *xla_cpu.FLAGS]
  fresh = {}
  assert xla_cpu.configure(cores=8, environ=fresh)
  assert fresh["XLA_FLAGS"].split() == list(xla_cpu.FLAGS)


@pytest.mark.parametrize("cores, environ", [
    (1, {}),  # one core: YNNPACK is as fast there
    (2, {"XLA_FLAGS": f"{xla_cpu.YNN_FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}),  # the user chose
    (2, {"JAXCLUST_XLA_CPU": "0"}),  # switched off
])
def test_leaves_the_environment_alone(measured_jaxlib, cores, environ):
  before = dict(environ)
  assert not xla_cpu.configure(cores=cores, environ=environ)
  assert environ == before


def test_only_for_the_measured_jaxlib_releases(monkeypatch):
  monkeypatch.setattr(xla_cpu, "_jaxlib_release", lambda: (99, 0))
  environ = {}
  assert not xla_cpu.configure(cores=4, environ=environ)
  assert environ == {}


def test_too_late_once_a_backend_is_initialised(measured_jaxlib, monkeypatch):
  import jax.numpy as jnp

  jnp.zeros(1).block_until_ready()  # this process's backend exists now
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("JAXCLUST_XLA_CPU", raising=False)
  assert not xla_cpu.configure(cores=2)
  assert "XLA_FLAGS" not in os.environ
  child = {}
  assert xla_cpu.configure(cores=2, environ=child)  # another process's environment still can


CONV = """
import os, sys
import numpy as np
sys.path.insert(0, {root!r})
from jaxclust import xla_cpu
added = xla_cpu.configure(cores=2)
import jax, jax.numpy as jnp
from jaxclust import nn
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(8, 13, 13, 50)), jnp.float32)
w = jnp.asarray(rng.normal(size=(5, 5, 50, 50)) * 0.05, jnp.float32)
loss = lambda x, w: jnp.sum(nn.conv(x, w, 2, 2) ** 2)
value, (dx, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)
np.savez(sys.argv[1], added=added, flags=os.environ.get("XLA_FLAGS", ""), value=value, dx=dx, dw=dw)
"""


def run_conv(tmp_path, name, env):
  out = tmp_path / f"{name}.npz"
  subprocess.run([sys.executable, "-c", CONV.format(root=ROOT), str(out)], env=env, check=True, timeout=300)
  return np.load(out)


def test_xla_accepts_the_flag_and_computes_the_same(tmp_path):
  """With this jaxlib (if it is a measured one) the flag reaches XLA, which does not abort on
  it, and a convolution's value and gradients agree with the run without it."""
  if xla_cpu._jaxlib_release() not in xla_cpu.JAXLIBS:
    pytest.skip("the flag is not set for this jaxlib")
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXCLUST_XLA_CPU")}
  with_flag = run_conv(tmp_path, "with", base)
  without = run_conv(tmp_path, "without", {**base, "JAXCLUST_XLA_CPU": "0"})
  assert bool(with_flag["added"]) and not bool(without["added"])
  assert str(with_flag["flags"]).split() == list(xla_cpu.FLAGS)
  np.testing.assert_allclose(with_flag["value"], without["value"], rtol=1e-4)
  for grad in ("dx", "dw"):
    scale = np.abs(without[grad]).max()
    np.testing.assert_allclose(with_flag[grad], without[grad], atol=1e-4 * scale)
