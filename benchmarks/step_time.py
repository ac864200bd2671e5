"""Seconds per DEPICT train step by convolution form, beside the PyTorch twin's eager step.

  python benchmarks/step_time.py [--batch-size 100] [--steps 10] [--repeats 7]
      [--forms auto dilated subpixel dilated/autodiff] [--torch] [--layers] [--epochs]
      [--single-thread]

A form is ``METHOD[/GRADIENT]``: the transposed convolutions' forward form (the ``method`` of
``jaxclust.nn.conv_transpose``: ``auto``, ``dilated`` or ``subpixel``) and the backward pass of
every conv layer (``adjoint``, the default, or ``autodiff``: jax's gradient of the plain forms,
the network as it was before the adjoint VJPs).

The step is the engine's jitted M-step (noisy and clean encoder, decoder, softmax, backward,
Adam; the state donated) on Fashion-MNIST-shaped input (28x28x1, K=10, Table 5's MNIST
network), dispatched ``--steps`` times in a row. ``--torch`` adds the PyTorch twin's eager step
(benchmarks/torch_twins.py, the same initial weights). Every candidate runs once per repeat, in
turn, and the median over repeats is reported, the process's CPU time beside the wall time:
where other jobs load the cores, the wall time includes waiting for them, and the ratios
between candidates timed in turn are what to compare. ``--single-thread`` runs XLA and PyTorch
on one thread each (``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``,
``torch.set_num_threads(1)``), which keeps contended measurements steadier.

``--layers`` times each conv layer's forward and backward pass alone at the same batch size,
per form (and PyTorch's ``conv2d`` / ``conv_transpose2d`` with ``--torch``). ``--epochs`` times
an epoch of ``--steps`` steps as the engine's Python loop of jitted steps and as one
``lax.scan``: the first epoch (including compilation) and the median of the next ones.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

IMAGE_SHAPE = (28, 28, 1)


def parse_form(form: str) -> tuple[str, str]:
  method, _, gradient = form.partition("/")
  return method, gradient or "adjoint"


def interleaved(candidates: dict, repeats: int, per: int = 1) -> dict:
  """``{name: (median wall seconds, median CPU seconds)}`` per call of each candidate (divided
  by ``per``), the candidates called in turn ``repeats`` times after one untimed call each."""
  for run in candidates.values():
    run()
  wall = {name: [] for name in candidates}
  cpu = {name: [] for name in candidates}
  for _ in range(repeats):
    for name, run in candidates.items():
      cpu_start, wall_start = time.process_time(), time.perf_counter()
      run()
      wall[name].append((time.perf_counter() - wall_start) / per)
      cpu[name].append((time.process_time() - cpu_start) / per)
  return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in candidates}


def table(results: dict, reference: str | None) -> list[str]:
  """Markdown rows of ``interleaved``'s results in milliseconds, with ratios to ``reference``."""
  head = "| candidate | wall ms | CPU ms |" + (f" wall / {reference} | CPU / {reference} |" if reference else "")
  lines = [head, "|---" * (head.count("|") - 1) + "|"]
  for name, (wall, cpu) in results.items():
    row = f"| {name} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} |"
    if reference:
      ref_wall, ref_cpu = results[reference]
      row += f" {wall / ref_wall:.2f} | {cpu / ref_cpu:.2f} |"
    lines.append(row)
  return lines


# ----------------------------------------------------------------------------- the step


def make_algo(form: str, batch_size: int, epoch_mode: str = "loop"):
  from jaxclust.algos import depict

  method, gradient = parse_form(form)
  config = depict.DepictConfig(n_clusters=10, batch_size=batch_size, epoch_mode=epoch_mode)
  algo = depict.Depict(config, IMAGE_SHAPE)
  algo.model = algo.model.clone(transposed_conv=method, conv_gradient=gradient)
  return algo


def jax_steps(form: str, x, targets, index, args):
  """A function that runs ``len(index)`` engine steps of ``form`` from its current state."""
  import jax
  import numpy as np

  from jaxclust.engine import CLUSTERING, Engine

  engine = Engine(make_algo(form, args.batch_size), x, verbosity=0)
  params = jax.jit(engine.algo.init)(jax.random.key(0), engine.x[: engine.batch_size])
  state = {"state": engine._replicate({"params": params, "opt_state": engine.optimizers[CLUSTERING].init(params)})}
  step = engine._steps[CLUSTERING]
  rows = [jax.device_put(row) for row in index]
  weights = jax.device_put(np.ones(args.batch_size, np.float32))
  keys = [jax.random.fold_in(jax.random.key(1), s) for s in range(len(index))]
  targets = jax.device_put(targets)

  def run():
    current = state["state"]
    for row, key in zip(rows, keys):
      current, _ = step(current, engine.x, targets, row, weights, key)
    state["state"] = jax.block_until_ready(current)

  return run, params


def torch_steps(params, x, targets, index, args):
  """The PyTorch twin's eager M-step with Adam, from the Flax parameters ``params``."""
  import numpy as np
  import torch
  import torch_twins

  from jaxclust.algos import depict

  config = depict.DepictConfig(n_clusters=10, batch_size=args.batch_size)
  twin = torch_twins.DepictTwin(config, IMAGE_SHAPE)
  twin.load_flax(params)
  twin.train()
  optimizer = torch.optim.Adam(twin.parameters(), lr=config.learning_rate)
  x_all = torch.from_numpy(torch_twins.to_nchw(x))
  targets_all = torch.from_numpy(targets)
  rows = [torch.from_numpy(row.astype(np.int64)) for row in index]
  weights = torch.ones(args.batch_size)

  def run():
    for row in rows:
      optimizer.zero_grad(set_to_none=True)
      loss, _ = twin.m_step_loss(x_all[row], weights, targets_all[row])
      loss.backward()
      optimizer.step()

  return run


def time_steps(args) -> list[str]:
  import numpy as np

  n = args.batch_size * args.steps
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (n, *IMAGE_SHAPE)).astype(np.float32)
  targets = rng.dirichlet(np.ones(10), n).astype(np.float32)
  index = rng.permutation(n).astype(np.int32).reshape(args.steps, args.batch_size)
  candidates = {}
  for form in args.forms:
    candidates[f"jax {form}"], params = jax_steps(form, x, targets, index, args)
  if args.torch:
    candidates["torch eager"] = torch_steps(params, x, targets, index, args)
  results = interleaved(candidates, args.repeats, per=args.steps)
  title = (f"### train step, batch {args.batch_size} (per step, median of {args.repeats} repeats of "
           f"{args.steps} steps)")
  return [title, "", *table(results, "torch eager" if args.torch else None)]


# ----------------------------------------------------------------------------- the layers


# name: (input [H, W, C], output channels, kernel, stride, padding, transposed) of the MNIST network.
LAYERS = {
    "conv1": ((28, 28, 1), 50, 4, 2, 0, False),
    "conv2": ((13, 13, 50), 50, 5, 2, 2, False),
    "deconv2": ((7, 7, 50), 50, 5, 2, 2, True),
    "deconv1": ((13, 13, 50), 1, 4, 2, 0, True),
}


def time_layers(args) -> list[str]:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxclust import nn

  rng = np.random.default_rng(0)
  lines = []
  for name, ((h, w, c_in), c_out, k, s, p, transposed) in LAYERS.items():
    x = rng.normal(size=(args.batch_size, h, w, c_in)).astype(np.float32)
    kernel = (rng.normal(size=(k, k, c_in, c_out)) / k).astype(np.float32)
    out_hw = tuple((n - 1) * s + k - 2 * p for n in (h, w)) if transposed else tuple(
        (n + 2 * p - k) // s + 1 for n in (h, w))
    dy = rng.normal(size=(args.batch_size, *out_hw, c_out)).astype(np.float32)
    wrt = (0, 1) if c_in > 1 else (1,)  # conv1's input is the data: no input gradient
    candidates = {}
    for form in args.forms:
      method, gradient = parse_form(form)
      label = f"jax {form if transposed else gradient}"  # a strided conv has no forward forms
      if label in candidates:
        continue
      if transposed:
        f = functools.partial(nn.conv_transpose, stride=s, crop=p, output_size=out_hw, method=method,
                              gradient=gradient)
      else:
        f = functools.partial(nn.conv, stride=s, padding=p, gradient=gradient)

      def forward_backward(x, kernel, dy, f=f, wrt=wrt):
        y, pullback = jax.vjp(f, x, kernel)
        return y, [g for i, g in enumerate(pullback(dy)) if i in wrt]

      run = jax.jit(forward_backward)
      args_ = (jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(dy))
      candidates[label] = lambda run=run, args_=args_: jax.block_until_ready(run(*args_))
    if args.torch:
      candidates["torch"] = torch_layer(x, kernel, dy, s, p, transposed, wrt)
    results = interleaved(candidates, args.repeats)
    title = (f"### {name}: {h}x{w}x{c_in} -> {out_hw[0]}x{out_hw[1]}x{c_out}, {k}x{k}, stride {s}, "
             f"{'crop' if transposed else 'padding'} {p}; forward and backward")
    lines += ["", title, "", *table(results, "torch" if args.torch else None)]
  return lines


def torch_layer(x, kernel, dy, s, p, transposed, wrt):
  import torch
  import torch_twins
  from torch.nn import functional as F

  x_t = torch.from_numpy(torch_twins.to_nchw(x)).requires_grad_(0 in wrt)
  if transposed:
    weight = torch.from_numpy(torch_twins.conv_transpose_weight(kernel).copy()).requires_grad_()
  else:
    weight = torch.from_numpy(torch_twins.conv_weight(kernel).copy()).requires_grad_()
  dy_t = torch.from_numpy(torch_twins.to_nchw(dy))
  inputs = [t for i, t in enumerate((x_t, weight)) if i in wrt]

  def run():
    y = (F.conv_transpose2d(x_t, weight, stride=s, padding=p) if transposed
         else F.conv2d(x_t, weight, stride=s, padding=p))
    torch.autograd.grad(y, inputs, dy_t)

  return run


# ----------------------------------------------------------------------------- epochs


def time_epochs(args) -> list[str]:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxclust.engine import CLUSTERING, Engine

  n = args.batch_size * args.steps
  x = np.random.default_rng(0).uniform(-1, 1, (n, *IMAGE_SHAPE)).astype(np.float32)
  targets = jax.nn.one_hot(jnp.arange(n) % 10, 10)
  title = (f"### epochs of {args.steps} steps (first epoch including compilation; median of "
           f"{args.repeats} after it)")
  lines = ["", title, "", "| form | epoch mode | first epoch s | s / step | samples / s |", "|---|---|---|---|---|"]
  for form in args.forms:
    for mode in ("loop", "scan"):
      engine = Engine(make_algo(form, args.batch_size, mode), x, verbosity=0)
      params = engine.algo.init(jax.random.key(0), engine.x[: engine.batch_size])
      state = engine._replicate({"params": params, "opt_state": engine.optimizers[CLUSTERING].init(params)})
      times = []
      for epoch in range(args.repeats + 1):
        start = time.perf_counter()
        state, _ = engine.run_epoch(CLUSTERING, state, targets, 0, epoch, "")
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
      step = statistics.median(times[1:]) / args.steps
      lines.append(f"| {form} | {mode} | {times[0]:.2f} | {step:.4f} | {args.batch_size / step:.0f} |")
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat (and per epoch)")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--forms", nargs="+", default=["auto", "dilated", "subpixel", "dilated/autodiff"],
                      metavar="METHOD[/GRADIENT]")
  parser.add_argument("--torch", action="store_true", help="time the PyTorch twin beside")
  parser.add_argument("--layers", action="store_true", help="also time each conv layer alone")
  parser.add_argument("--epochs", action="store_true", help="also time loop and scan epochs")
  parser.add_argument("--single-thread", action="store_true", help="XLA and PyTorch on one thread each")
  args = parser.parse_args(argv)
  for form in args.forms:
    method, gradient = parse_form(form)
    if method not in ("auto", "dilated", "subpixel") or gradient not in ("adjoint", "autodiff"):
      parser.error(f"unknown form {form!r}: METHOD is auto, dilated or subpixel; GRADIENT adjoint or autodiff")
  if args.single_thread:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
  else:
    from jaxclust import xla_cpu

    xla_cpu.configure()  # as bin/train runs: XLA:CPU's convolutions on every core
  import jax

  jax.config.update("jax_default_matmul_precision", "highest")  # as benchmarks/throughput.py
  if args.torch:
    import torch

    torch.set_num_threads(1 if args.single_thread else len(os.sched_getaffinity(0)))
  print(f"{jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} cores, "
        f"{'one thread' if args.single_thread else 'all threads'}, jax {jax.__version__}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  lines = time_steps(args)
  if args.layers:
    lines += time_layers(args)
  if args.epochs:
    lines += time_epochs(args)
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
