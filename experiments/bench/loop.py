"""How much the training loop adds to the bare train step (`benchmark.py --loop`).

For each experiment config (default: `dates` and `g2p`, their real model
sizes and data), the project's own `flax_attn.train.Run` is built as
`train_and_evaluate` builds it, and the same `steps` global batches are
trained two ways, interleaved, `repeats` times each:

  bare  the pmapped step (`Run.p_train`) called back to back on batches
        already on the device (no host work but the dispatch);
  loop  the real loop body: `Run.train_until` (grain pipeline, device
        prefetch, preemption tick, compile counting) and `Run.fetch_and_log`
        every `log_every_steps` (device-side metrics fetched, a
        metrics.jsonl row written).

overhead = median(loop) / median(bare) - 1. The goal is <= 5 % on this CPU.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import jax
import ml_collections
import tqdm

CONFIGS = ("dates", "g2p")


def _load_config(name: str) -> ml_collections.ConfigDict:
  from flax_attn import configs
  return configs.load(name)


def _new_run(config, workdir):
  from flax_attn import from_config, paths
  from flax_attn.preemption import Preemption
  from flax_attn.resume import build_setup
  from flax_attn.steps import create_train_state
  from flax_attn.train import Run
  splits = from_config.load_task(config)
  setup = build_setup(config, splits)
  state = create_train_state(setup.model_config, setup.tx, config.seed)
  return Run(config, paths.as_path(workdir), splits, None, setup, state, None, Preemption())


def _time_bare(run, batches) -> float:
  t0 = time.perf_counter()
  for b in batches:
    run.rstate, run.acc = run.p_train(run.rstate, run.acc, b)
  jax.block_until_ready(run.rstate)
  return time.perf_counter() - t0


def _time_loop(run, steps: int, bar) -> float:
  from flax_attn import parallel
  from flax_attn.input_pipeline import train_dataset
  run.data = iter(parallel.prefetch_to_devices(train_dataset(run.s.batches, 0)))
  run.step = 0
  t0 = time.perf_counter()
  while run.step < steps:
    run.train_until(min(run.step + run.config.log_every_steps, steps), bar)
    run.fetch_and_log(bar)
  jax.block_until_ready(run.rstate)
  return time.perf_counter() - t0


def measure(name: str, steps: int, repeats: int) -> dict:
  from flax_attn import parallel
  from flax_attn.input_pipeline import train_dataset
  config = _load_config(name)
  with tempfile.TemporaryDirectory() as workdir:
    run = _new_run(config, workdir)
    bar = tqdm.tqdm(disable=True)
    it = iter(parallel.prefetch_to_devices(train_dataset(run.s.batches, 0)))
    fixed = [next(it) for _ in range(steps)]
    jax.block_until_ready(fixed)
    _time_bare(run, fixed)  # compiles every width among these batches
    _time_loop(run, steps, bar)
    bare, loop = [], []
    for _ in range(repeats):
      bare.append(_time_bare(run, fixed))
      loop.append(_time_loop(run, steps, bar))
  b, l = statistics.median(bare), statistics.median(loop)
  return {"config": name, "steps": steps, "batch_size": config.batch_size,
          "log_every_steps": config.log_every_steps,
          "model": f"emb {config.model.emb_dim}, hidden {config.model.enc_hidden}",
          "bare_ms_per_step": 1000 * b / steps, "loop_ms_per_step": 1000 * l / steps,
          "overhead_pct": 100 * (l / b - 1), "repeats": repeats}


def format_rows(rows: list[dict]) -> str:
  lines = ["| config | model | batch | steps | bare ms/step | loop ms/step | overhead |",
           "|---|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['config']} | {r['model']} | {r['batch_size']} | {r['steps']} | "
                 f"{r['bare_ms_per_step']:.2f} | {r['loop_ms_per_step']:.2f} | "
                 f"{r['overhead_pct']:+.1f} % |")
  return "\n".join(lines)
