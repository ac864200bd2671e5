"""Training throughput of jaxclust against its PyTorch twin: same model, same weights, same
batch size, float32 on both sides.

  python benchmarks/throughput.py --algo depict [--dataset fashion-mnist-test] [--batch-size 100]
      [--repeats 5] [--steps 20] [--max-samples N] [--modes jax:jit-step ...] [--set KEY=VALUE]
      [--phase m-step|warmup] [--torch-threads N] [--json PATH]

Modes (``--modes`` picks some; all by default):

  jax    jit-step       the engine's jitted train step (batch gather, loss, backward, optimizer),
                        dispatched ``--steps`` times in a row
  jax    epoch-loop     the engine's ``run_epoch`` over the dataset, a Python loop of jitted steps
  jax    epoch-scan     the engine's ``run_epoch`` as one ``lax.scan`` over the steps
  jax    e-step         the engine's ``predict`` over the dataset, then the algorithm's targets
  torch  eager-step     the twin (benchmarks/torch_twins.py): loss, ``backward``, optimizer step
  torch  compile-step   the same with the loss under ``torch.compile``
  torch  e-step         the twin's clean pass over the dataset under ``no_grad``, then the targets

The step is the objective of ``--phase`` (``m-step``: DEPICT eq. 12, dropout included; or
``warmup``) with the algorithm's optimizer (Adam; RMSprop in SpectralNet's M-step), on random
targets shaped as the algorithm's E-step makes them (:func:`example_targets`); each framework
draws the step's randomness (dropout, augmentations, noise, shuffles, orthogonalization
batches) itself. Each mode runs in a process of its own, so each peak memory is that mode's
alone and neither framework's threads or caches sit beside the other's. Samples per second:
the median over ``--repeats`` timed repeats (``--steps`` steps, or one pass over the dataset)
after compilation and one untimed repeat, timed up to ``block_until_ready`` /
``torch.cuda.synchronize``. ``compile_seconds``: the first call's time less a timed call's
(tracing and XLA compilation; Dynamo and Inductor for ``torch.compile``; none in eager mode).
A ``torch.compile`` that fails leaves its error in the record.

Precision: float32 everywhere, TF32 off on both sides (``jax_default_matmul_precision`` =
``highest``; ``allow_tf32 = False`` for cuBLAS and cuDNN), so the GPU figures compare the same
arithmetic. On CPU ``torch.set_num_threads`` is the number of cores the process may use, as
XLA's thread pool is (``--torch-threads`` sets another: where other processes load the cores,
PyTorch's OpenMP threads spend much of a step waiting for each other). Peak memory: on GPU each
framework's peak device memory in use; on CPU the process's peak resident set (``ru_maxrss``),
which counts the framework's own libraries, the dataset and, in the PyTorch processes, JAX on
the CPU (it builds the config, the data and the initial weights). The JAX processes run with
the XLA flags ``bin/train`` sets (:mod:`jaxclust.xla_cpu`: XLA:CPU's convolutions on every
core); ``JAXCLUST_XLA_CPU=0`` measures without them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jaxclust import xla_cpu  # noqa: E402 -- initialises no JAX backend

MODES = {
    "jax": ("jit-step", "epoch-loop", "epoch-scan", "e-step"),
    "torch": ("eager-step", "compile-step", "e-step"),
}
ALL_MODES = [f"{framework}:{mode}" for framework, modes in MODES.items() for mode in modes]


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algo", default="depict", help="an algorithm with a PyTorch twin (torch_twins.TWINS)")
  parser.add_argument("--dataset", default="fashion-mnist-test")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--phase", choices=("m-step", "warmup"), default="m-step")
  parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
  parser.add_argument("--steps", type=int, default=20, help="train steps per timed repeat of the *-step modes")
  parser.add_argument("--max-samples", type=int, default=None, help="use only the first N images")
  parser.add_argument("--modes", nargs="+", default=ALL_MODES, metavar="FRAMEWORK:MODE",
                      help=f"any of {' '.join(ALL_MODES)}")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, as bin/train's --set")
  parser.add_argument("--torch-compile-mode", default="default", help="torch.compile's mode")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch.set_num_threads; default: the cores this process may use, as XLA does")
  parser.add_argument("--json", default=None, metavar="PATH", help="write the records here as a JSON list")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--worker-output", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  unknown = sorted(set(args.modes) - set(ALL_MODES))
  if unknown:
    parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {' '.join(ALL_MODES)}")
  if args.repeats < 1 or args.steps < 1 or args.batch_size < 1:
    parser.error("--repeats, --steps and --batch-size must be at least 1")
  return args


def cpu_cores() -> int:
  return len(os.sched_getaffinity(0))


def cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def cpu_peak_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- the setting


@dataclasses.dataclass
class Setting:
  """What both frameworks are given: the config, the data and the targets of the M-step."""

  algo_name: str
  module: object
  config: object
  x: np.ndarray  # [N, H, W, C]
  targets: np.ndarray | dict  # [N, K], or a dict of [N, ...] arrays: see example_targets
  dataset_name: str

  @property
  def image_shape(self):
    return tuple(self.x.shape[1:])


def make_setting(args) -> Setting:
  from jaxclust import algos, cli, data

  if args.algo not in algos.REGISTRY:
    raise SystemExit(f"unknown algorithm {args.algo!r}; available: {', '.join(sorted(algos.REGISTRY))}")
  module = algos.REGISTRY[args.algo]
  dataset = data.load_dataset(args.dataset, data_dir=args.data_dir)
  x = dataset.x if args.max_samples is None else dataset.x[: args.max_samples]
  dataset = data.Dataset(x=np.ascontiguousarray(x), y=None, name=dataset.name)
  overrides = dict(cli.parse_override(text) for text in args.overrides)
  config = cli.build_config(module, dataset, {**overrides, "batch_size": args.batch_size})
  config.validate(dataset.n)
  targets = example_targets(module, config, dataset.x)
  return Setting(args.algo, module, config, dataset.x, targets, dataset.name)


def example_targets(module, config, x: np.ndarray) -> np.ndarray | dict:
  """Targets shaped as the algorithm's E-step makes them: ``[N, K]`` distributions, or a dict
  of them and per-sample integers (ICS: ``{"q", "negative"}``, each sample's negative). The
  distributions are Dirichlet draws, the integers uniform rows of the dataset."""
  import jax

  algo = module.ALGORITHM(config, x.shape[1:])
  x_shape = jax.ShapeDtypeStruct(x.shape, np.float32)
  shapes = jax.eval_shape(lambda x: algo.e_step(algo.predict(algo.init(jax.random.key(0), x[:2]), x)), x_shape)
  rng = np.random.default_rng(0)
  n = x.shape[0]

  def draw(leaf):
    if np.issubdtype(leaf.dtype, np.integer):
      return rng.integers(0, n, leaf.shape).astype(leaf.dtype)
    return rng.dirichlet(np.ones(leaf.shape[-1]), leaf.shape[:-1]).astype(np.float32)

  return jax.tree.map(draw, shapes)


def with_dataset_size(params, n: int):
  """``params`` with the dataset's size where a spectral head's state records it
  (``init_clusters`` sets it in a run; the orthogonalization batches draw from it)."""
  from jaxclust.engine import MODEL_STATE

  state = params.get(MODEL_STATE) if isinstance(params, dict) else None
  if not isinstance(state, dict) or "n_samples" not in state:
    return params
  return {**params, MODEL_STATE: {**state, "n_samples": np.float32(n)}}


def step_indices(n: int, batch_size: int, steps: int) -> np.ndarray:
  """``[steps, batch_size]`` positions: consecutive shuffled epochs, as the engine walks them."""
  rng = np.random.default_rng(1)
  epochs = -(-steps * batch_size // n)
  return np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch_size].reshape(steps, batch_size)


def timed(fn, repeats: int) -> tuple[float, float]:
  """``(first call seconds, median seconds of `repeats` calls after one untimed call)``."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  fn()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - start)
  return first, statistics.median(seconds)


# ----------------------------------------------------------------------------- JAX


def measure_jax(mode: str, setting: Setting, args) -> dict:
  import jax

  jax.config.update("jax_default_matmul_precision", "highest")

  from jaxclust.engine import CLUSTERING, WARMUP, Engine

  config = setting.config
  if mode.startswith("epoch-"):
    config = dataclasses.replace(config, epoch_mode=mode.removeprefix("epoch-"))
  algo = setting.module.ALGORITHM(config, setting.image_shape)
  engine = Engine(algo, setting.x, verbosity=0)
  phase = WARMUP if args.phase == "warmup" else CLUSTERING
  params = with_dataset_size(jax.jit(algo.init)(jax.random.key(config.seed), engine.x[: engine.batch_size]), engine.n)
  targets = jax.device_put(setting.targets)
  state = {"params": params, "opt_state": engine.optimizers[phase].init(params)}
  batch_size = engine.batch_size

  if mode == "jit-step":
    step = engine._steps[phase]  # the engine's jitted, state-donating train step
    index = step_indices(engine.n, batch_size, args.steps)
    batches = [jax.device_put(row) for row in index]
    weights = jax.device_put(np.ones(batch_size, np.float32))
    keys = [jax.random.fold_in(jax.random.key(0), s) for s in range(args.steps)]

    def run():
      nonlocal state
      for s in range(args.steps):
        state, _ = step(state, engine.x, targets, batches[s], weights, keys[s])
      jax.block_until_ready(state)

    samples = args.steps * batch_size
  elif mode.startswith("epoch-"):
    epoch = iter(range(1_000_000))

    def run():
      nonlocal state
      state, _ = engine.run_epoch(phase, state, targets, 0, next(epoch), "")
      jax.block_until_ready(state)

    samples = engine.n
  else:  # e-step
    e_step = jax.jit(algo.e_step)

    def run():
      jax.block_until_ready(e_step(engine.predict(params)))

    samples = engine.n
  first, median = timed(run, args.repeats)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  name = cpu_model() if device.platform == "cpu" else device.device_kind
  record = {"device": f"{device.platform}: {name}", "compile_seconds": max(first - median, 0.0),
            "seconds": median, "samples": samples}
  if stats and "peak_bytes_in_use" in stats:
    record.update(peak_memory_bytes=int(stats["peak_bytes_in_use"]), peak_memory_kind="device peak bytes in use")
  else:
    record.update(peak_memory_bytes=cpu_peak_rss(), peak_memory_kind="process peak RSS")
  if mode.startswith("epoch-"):
    record["steps_per_epoch"] = engine.steps_per_epoch
  if hasattr(config, "transposed_conv"):
    record["transposed_conv"] = config.transposed_conv
  return record


# ----------------------------------------------------------------------------- PyTorch


def torch_optimizer(setting: Setting, phase: str, parameters):
  """The twin's optimizer: what the algorithm's ``make_optimizer`` builds with optax."""
  import torch

  config = setting.config
  if phase == "warmup":
    return torch.optim.Adam(parameters, lr=config.warmup_learning_rate or config.learning_rate)
  if getattr(config, "optimizer", "adam") == "sgd":
    return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum)
  if getattr(config, "optimizer", "adam") == "rmsprop":  # optax.rmsprop's decay and eps (optax: eps inside the root)
    return torch.optim.RMSprop(parameters, lr=config.learning_rate, alpha=0.9, eps=1e-8)
  return torch.optim.Adam(parameters, lr=config.learning_rate)


def pin_torch_precision(torch) -> None:
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  torch.set_float32_matmul_precision("highest")


def measure_torch(mode: str, setting: Setting, args) -> dict:
  import jax
  import torch
  import torch_twins

  pin_torch_precision(torch)
  torch.set_num_threads(args.torch_threads or cpu_cores())
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  if cuda:
    torch.backends.cudnn.benchmark = True  # pick the fastest conv algorithms, as XLA's autotuner does

  def sync():
    if cuda:
      torch.cuda.synchronize()

  twin = torch_twins.TWINS[setting.algo_name](setting.config, setting.image_shape)
  # The same initial weights as the JAX process (same init, same key), made by JAX on the CPU.
  algo = setting.module.ALGORITHM(setting.config, setting.image_shape)
  batch_size = min(setting.config.batch_size, setting.x.shape[0])
  twin.load_flax(jax.jit(algo.init)(jax.random.key(setting.config.seed), setting.x[:batch_size]))
  twin.to(device)
  x_all = torch.from_numpy(torch_twins.to_nchw(setting.x)).to(device)
  # Integer targets (ICS's negatives) index the dataset, which the twin is given.
  as_tensor = lambda a: torch.from_numpy(a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a)
  targets_all = jax.tree.map(lambda a: as_tensor(a).to(device), setting.targets)
  rows = (lambda t, idx: {k: v[idx] for k, v in t.items()}) if isinstance(targets_all, dict) else (lambda t, idx: t[idx])
  twin.use_dataset(x_all)
  n = x_all.shape[0]
  record = {"device": f"{device.type}: {torch.cuda.get_device_name() if cuda else cpu_model()}",
            "torch_threads": torch.get_num_threads()}

  if mode == "e-step":
    chunk = min(setting.config.eval_batch_size, n)
    twin.eval()

    def run():
      with torch.no_grad():
        outputs = [twin.predict(x_all[i: i + chunk]) for i in range(0, n, chunk)]
        if isinstance(outputs[0], dict):  # soft assignments beside what the E-step needs (ICS)
          twin.e_step({key: torch.cat([o[key] for o in outputs]) for key in outputs[0]})
        else:
          twin.e_step(torch.cat(outputs))
      sync()

    samples, record["compile_seconds"] = n, None
  else:
    twin.train()
    optimizer = torch_optimizer(setting, args.phase, twin.parameters())
    if args.phase == "warmup":
      def loss_fn(x, w, t):
        del t
        return twin.warmup_loss(x, w)
    else:
      loss_fn = twin.m_step_loss
    if mode == "compile-step":
      loss_fn = torch.compile(loss_fn, mode=args.torch_compile_mode)
    index = [torch.from_numpy(row).to(device) for row in step_indices(n, batch_size, args.steps)]
    weights = torch.ones(batch_size, device=device)

    def run():
      for idx in index:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(x_all[idx], weights, rows(targets_all, idx))
        loss.backward()
        optimizer.step()
      sync()

    samples = args.steps * batch_size
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  first, median = timed(run, args.repeats)
  record.update(seconds=median, samples=samples)
  if mode == "compile-step":
    record["compile_seconds"] = max(first - median, 0.0)
  elif "compile_seconds" not in record:
    record["compile_seconds"] = None  # eager: nothing to compile
  if cuda:
    record.update(peak_memory_bytes=int(torch.cuda.max_memory_allocated()), peak_memory_kind="device peak bytes allocated")
  else:
    record.update(peak_memory_bytes=cpu_peak_rss(), peak_memory_kind="process peak RSS")
  return record


# ----------------------------------------------------------------------------- processes


def error_summary(e: BaseException) -> str:
  """``Type: message`` on one line: the message's first line, and its second where the first
  only introduces it (``backend='inductor' raised:``, then the backend's own error)."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  message = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
  return f"{type(e).__name__}: {message}"


def run_worker(args) -> int:
  framework, mode = args.worker.split(":")
  record = {"framework": framework, "mode": mode, "algo": args.algo, "phase": args.phase,
            "batch_size": args.batch_size, "repeats": args.repeats, "samples_per_sec": None,
            "compile_seconds": None, "device": None, "error": None}
  try:
    setting = make_setting(args)
    record.update(dataset=setting.dataset_name, n_samples=int(setting.x.shape[0]),
                  batch_size=min(setting.config.batch_size, setting.x.shape[0]))
    measure = measure_jax if framework == "jax" else measure_torch
    record.update(measure(mode, setting, args))
    record["samples_per_sec"] = record["samples"] / record["seconds"]
  except Exception as e:  # noqa: BLE001 -- a failing mode (a torch.compile that breaks) is a result
    record["error"] = error_summary(e)
    traceback.print_exc()
    print(f"{framework}:{mode} failed: {record['error']}", file=sys.stderr)
  pathlib.Path(args.worker_output).write_text(json.dumps(record))
  return 0


def run_in_subprocess(spec: str, argv: list[str]) -> dict:
  framework, mode = spec.split(":")
  env = dict(os.environ)
  with tempfile.TemporaryDirectory() as tmp:
    if framework == "torch":
      env["JAX_PLATFORMS"] = "cpu"  # JAX only builds the setting there; the accelerator is PyTorch's
      # Cold caches, so that torch.compile's time is a compilation, as JAX's is here.
      env["TORCHINDUCTOR_CACHE_DIR"] = str(pathlib.Path(tmp) / "inductor")
      env["TRITON_CACHE_DIR"] = str(pathlib.Path(tmp) / "triton")
    else:
      xla_cpu.configure(environ=env)  # as bin/train runs: XLA:CPU's convolutions on every core
    output = pathlib.Path(tmp) / "record.json"
    print(f"measuring {spec} ...", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, __file__, *argv, "--worker", spec, "--worker-output", str(output)],
                            env=env, check=False)
    if output.exists():
      return {**json.loads(output.read_text()), "xla_flags": env.get("XLA_FLAGS", "")}
  return {"framework": framework, "mode": mode, "samples_per_sec": None, "compile_seconds": None, "device": None,
          "error": f"the measuring process exited with code {result.returncode} (its stderr is above)"}


def machine_lines(records: list[dict]) -> list[str]:
  devices = sorted({r["device"] for r in records if r.get("device") and not r["device"].startswith("cpu")})
  versions = {"jax": version("jax"), "jaxlib": version("jaxlib"), "flax": version("flax"), "torch": version("torch")}
  threads = sorted({r["torch_threads"] for r in records if r.get("torch_threads")})
  flags = sorted({r["xla_flags"] for r in records if r.get("framework") == "jax" and r.get("xla_flags")})
  accelerator = ", ".join(devices) if devices else "none"
  return [
      f"CPU: {cpu_model()}, {cpu_cores()} cores usable ({os.cpu_count()} on the machine); accelerator: {accelerator}",
      "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())
      + (f"; torch threads {', '.join(map(str, threads))}" if threads else ""),
      f"python {platform.python_version()}, {platform.system()} {platform.release()}",
      *[f"XLA_FLAGS of the JAX processes: `{f}`" for f in flags],
  ]


def markdown(records: list[dict], args) -> str:
  first = next((r for r in records if r.get("dataset")), {})
  title = (f"## {args.algo} {args.phase} throughput, {first.get('dataset', args.dataset)} "
           f"({first.get('n_samples', '?')} images), batch {first.get('batch_size', args.batch_size)}, "
           "float32, TF32 off")
  lines = [title, ""]
  lines += [f"- {line}" for line in machine_lines(records)]
  lines.append(f"- median of {args.repeats} timed repeats ({args.steps} steps per step-mode repeat, one pass "
               "over the dataset per epoch and E-step repeat) after compilation and one untimed repeat")
  lines.append("")
  lines += ["| framework | mode | device | samples / s | s per repeat | compile s | peak memory MiB | note |",
            "|---|---|---|---|---|---|---|---|"]
  for r in records:
    sps = f"{r['samples_per_sec']:.0f}" if r.get("samples_per_sec") else "—"
    seconds = f"{r['seconds']:.4g}" if r.get("seconds") else "—"
    compile_s = f"{r['compile_seconds']:.2f}" if r.get("compile_seconds") is not None else "—"
    memory = f"{r['peak_memory_bytes'] / 2**20:.0f} ({r['peak_memory_kind']})" if r.get("peak_memory_bytes") else "—"
    note = r.get("error") or ""
    if r.get("transposed_conv"):
      note = (note + "; " if note else "") + f"transposed conv {r['transposed_conv']}"
    lines.append(f"| {r['framework']} | {r['mode']} | {r.get('device') or '—'} | {sps} | {seconds} | {compile_s} "
                 f"| {memory} | {note} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.worker:
    return run_worker(args)
  import torch_twins  # fails here, early, when PyTorch is missing

  if args.algo not in torch_twins.TWINS:
    raise SystemExit(f"no PyTorch twin of {args.algo!r}; twins: {', '.join(sorted(torch_twins.TWINS))}")
  records = [run_in_subprocess(spec, argv) for spec in args.modes]
  print(markdown(records, args))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
  return 0 if all(r.get("samples_per_sec") or r["mode"] == "compile-step" for r in records) else 1


if __name__ == "__main__":
  sys.exit(main())
