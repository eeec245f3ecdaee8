"""Training: `train_and_evaluate(config, workdir)`, the loop around the pure steps.

The steps themselves are in `flax_attn.steps`, resuming rules in
`flax_attn.resume`, the evaluation of a split in `flax_attn.evaluation`;
this module is the `Run` that ties them together.

The loop keeps the device busy: batches are built and copied to the devices
ahead of use (`parallel.prefetch_to_devices`), the step's metrics are summed
on the device (`steps.train_step_accumulate`) and fetched only every
`log_every_steps` (and at evaluations and checkpoints). The host runs at
most `STEPS_IN_FLIGHT` steps ahead of the device, so a stop waits for that
many steps, not for a whole log window. A step whose loss or
gradient is not finite is rejected inside the step (parameters and optimizer
state unchanged), counted and logged; the run stops with
`NonFiniteLossError` after `max_nonfinite_steps` rejections in a row.

Stopping (SIGTERM/SIGINT, on one process or many) happens at a step or
evaluation batch that every process agrees on (`flax_attn.preemption`):
the step is saved once and `TrainingPreempted` is raised; the CLI exits
with `preemption.EXIT_PREEMPTED` so that a scheduler restarts the job, and
rerunning the same command resumes exactly (an abandoned evaluation is
redone first).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import time

import jax
import jax.numpy as jnp
import tqdm

from flax_attn import checkpoint as ckpt_lib
from flax_attn import tokenizers as tok_lib
from flax_attn import export as export_lib
from flax_attn import from_config, parallel, paths, plot
from flax_attn.decode_config import DecodeConfig
from flax_attn.evaluation import evaluate_split, pmapped_eval
from flax_attn.input_pipeline import train_dataset
from flax_attn.metrics_log import MetricsLog
from flax_attn.optimizer import Plateau
from flax_attn.preemption import Preempted, Preemption
from flax_attn.resume import restore_or_create
from flax_attn.steps import init_metrics, train_step_accumulate
from flax_attn.stopwatch import Stopwatch
from flax_attn.translator import Translator


# Dispatched steps the device may still be running (see `Run.train_until`):
# enough to keep it busy while the host prepares the next call, few enough
# that a SIGTERM is honoured after this many steps, not after a whole
# `log_every_steps` window (on a slow CPU, 50 steps of 5 s each outlast most
# grace periods: Kubernetes' default is 30 s).
STEPS_IN_FLIGHT = 2

# Where a run with `average_last` > 1 writes its averaged parameters (an export).
AVERAGED_DIR = "averaged"


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps had a NaN/inf loss or gradient."""


class TrainingPreempted(Exception):
  """The run stopped on a signal after saving `step`; rerun to resume."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped by a signal at step {step}; saved in {directory}; "
                     "rerun the same command to resume")
    self.step = step


class CompileCounter:
  """Counts XLA compilations (JAX's backend-compile events)."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1


_COMPILES: CompileCounter | None = None


def compile_counter() -> CompileCounter:
  global _COMPILES
  if _COMPILES is None:
    _COMPILES = CompileCounter()
  return _COMPILES


# ---- the run ----------------------------------------------------------------------------

class Run:
  """One training run's moving parts; `train_and_evaluate` reads as its story."""

  def __init__(self, config, workdir, splits, ckpts, setup, state, meta, preemption,
               watch: Stopwatch | None = None):
    self.config, self.workdir, self.splits, self.ckpts = config, workdir, splits, ckpts
    self.s, self.meta, self.preemption = setup, meta, preemption
    self.is_main = parallel.is_main_process()
    self.watch = watch or Stopwatch()
    self.decode = DecodeConfig.from_experiment(config)  # the final evaluation's settings
    self.averaged_steps: list[int] = []  # what the final evaluation averaged (average_last)
    self.step = int(state.step)
    self.last_saved = self.step if meta is not None else None
    self.plateau = Plateau(**meta["plateau"]) if meta else Plateau(
        factor=config.plateau_factor, patience=config.plateau_patience)
    self.log = MetricsLog(workdir / "metrics.jsonl", self.step if meta else None, self.is_main)
    if meta is not None and meta.get("pending_eval"):  # that evaluation is redone
      self.log.drop(lambda r: r["step"] == self.step and r.get("split") == "val")
    self.rstate = parallel.replicate(state)
    self.counter = compile_counter()
    self.train_compiles, self.recompiles, self.compiled_widths = 0, 0, set()
    self.p_train = parallel.pmap(functools.partial(
        train_step_accumulate, max_nonfinite=config.max_nonfinite_steps,
        model_config=setup.model_config, tx=setup.tx, teacher_forcing=config.teacher_forcing,
        label_smoothing=config.label_smoothing))
    self.p_eval = pmapped_eval(setup.model_config)
    start = setup.data["start_index"] + (self.step - setup.data["start_step"])
    self.data = iter(parallel.prefetch_to_devices(train_dataset(setup.batches, start)))
    self.acc = parallel.replicate(jax.device_get(init_metrics()))
    self.in_flight = collections.deque()  # one output of each step not yet waited for
    self.window_start = time.time()

  # -- pieces of the story --
  def meta_record(self, pending_eval: bool = False) -> dict:
    s = self.s
    return {"step": self.step, "experiment": json.loads(self.config.to_json_best_effort()),
            "model_config": s.model_config.to_dict(),
            "tokenizers": {"src": tok_lib.to_json(s.src_tok),
                           "trg": tok_lib.to_json(s.trg_tok)},
            "buckets": list(s.buckets), "plateau": dataclasses.asdict(self.plateau),
            "devices": parallel.device_count(), "processes": jax.process_count(),
            "batches_per_epoch": s.batches.batches_per_epoch, "data": s.data,
            "pending_eval": pending_eval}

  def save(self, val: dict | None = None, pending_eval: bool = False) -> None:
    with self.watch("checkpoint"):
      metrics = {f"val_{k}": v for k, v in (val or {}).items() if isinstance(v, float)}
      state = jax.device_get(parallel.first_copy(self.rstate))
      self.ckpts.save(self.step, state, self.meta_record(pending_eval), metrics=metrics or None)
      self.last_saved = self.step

  def train_until(self, stop_at: int, bar) -> None:
    """Steps until `stop_at`, at most `STEPS_IN_FLIGHT` ahead of the
    device (raises `Preempted` at the agreed tick)."""
    while self.step < stop_at:
      self.preemption.check()
      batch = next(self.data)
      before = self.counter.count
      called = time.perf_counter()
      self.rstate, self.acc = self.p_train(self.rstate, self.acc, batch)
      called = time.perf_counter() - called  # the dispatch, or the compilation and dispatch
      self.in_flight.append(self.acc["steps"])
      while len(self.in_flight) > STEPS_IN_FLIGHT:
        self.in_flight.popleft().block_until_ready()
      if self.counter.count > before:  # this call compiled the step (a new batch width)
        width = batch["src"].shape[-1]
        self.watch.compile_by_width[width] += called
        self.watch.add("compile_train_step", called)
        self.train_compiles += 1
        self.recompiles += width in self.compiled_widths
        self.compiled_widths.add(width)
      self.step += 1
      bar.update(1)

  def fetch_and_log(self, bar) -> None:
    """Fetches the window's device-side sums, logs them and checks the
    rejection streak."""
    m = jax.device_get(parallel.first_copy(self.acc))
    if int(m["stop_step"]):
      where = (f"step {self.last_saved} in {self.ckpts.directory}"
               if self.last_saved is not None else "none")
      raise NonFiniteLossError(
          f"{self.config.max_nonfinite_steps} consecutive steps had a non-finite loss or "
          f"gradient (the last at step {int(m['stop_step'])}); each was rejected and the run "
          f"stopped; last good checkpoint: {where}")
    if int(m["steps"]) + int(m["rejected"]) == 0:
      return
    dt = max(time.time() - self.window_start, 1e-9)
    w = max(float(m["weight_sum"]), 1.0)
    steps = max(int(m["steps"]), 1)
    record = {"step": self.step, "split": "train", "loss": float(m["loss_sum"]) / w,
              "ppl": math.exp(min(float(m["nll_sum"]) / w, 50.0)),
              "lr": float(self.s.lr_fn(self.step)) * self.plateau.scale,
              "grad_norm": float(m["grad_norm_sum"]) / steps,
              "tokens_per_s": float(m["weight_sum"]) / dt,
              "steps_per_s": (int(m["steps"]) + int(m["rejected"])) / dt,
              "rejected_steps": int(m["rejected"]), "train_compiles": self.train_compiles,
              "recompiles": self.recompiles,
              "epoch": self.step / self.s.batches.batches_per_epoch}
    if int(m["rejected"]):
      logging.warning("%d step(s) up to step %d had a non-finite loss or gradient and were "
                      "skipped", int(m["rejected"]), self.step)
    self.log.write(record)
    bar.set_postfix(loss=f"{record['loss']:.3f}")
    fresh = init_metrics()
    fresh["streak"] = m["streak"]
    self.acc = parallel.replicate(jax.device_get(fresh))
    self.window_start = time.time()

  def translator(self):
    return Translator(self.s.model_config, parallel.first_copy(self.rstate.params), self.s.src_tok,
                      self.s.trg_tok, self.config.max_src_len)

  def evaluate(self, split_name: str = "val", final: bool = False) -> dict:
    result, hyps = evaluate_split(
        self.config, self.rstate.params, self.translator(), self.splits[split_name],
        *self.s.encoded[split_name], self.s.buckets, self.p_eval,
        max_examples=0 if final else self.config.eval_max_examples,
        decode=self.decode if final else self.decode.replace(beam_size=1),
        free_running=final or from_config.best_metric(self.config)[0].startswith("free_running"),
        on_batch=self.preemption.check)
    row = {"step": self.step, "split": split_name,
           **{k: v for k, v in result.items() if not k.endswith("signature")}}
    if final:
      row.update(final=True, decode=self.decode.to_dict())
      if self.averaged_steps:
        row["averaged_steps"] = self.averaged_steps
    self.log.write(row)
    if final and self.is_main:
      paths.write_text(self.workdir / f"{split_name}.hyp.txt", "\n".join(hyps) + "\n")
    return result

  def evaluate_and_save(self) -> None:
    """The periodic validation (with reduce-on-plateau) and its checkpoint."""
    try:
      with self.watch("eval"):
        val = self.evaluate("val")
    except Preempted:
      self.save(pending_eval=True)
      raise
    if self.config.plateau_patience > 0:
      scale = self.plateau.update(val["loss"])
      self.rstate = self.rstate.replace(lr_scale=jnp.full_like(self.rstate.lr_scale, scale))
    self.save(val)

  def average_last_checkpoints(self) -> None:
    """With `average_last` K > 1, the final evaluation's parameters become
    the mean of the newest K checkpoints (never saved as a training
    checkpoint: a rerun resumes from the trained ones)."""
    k = self.config.average_last
    if k <= 1:
      return
    with self.watch("average"):
      self.ckpts.wait()
      steps, params, _ = export_lib.average_last_steps(self.workdir, k)
      self.averaged_steps = steps
      self.rstate = self.rstate.replace(params=parallel.replicate(params))

  def export_averaged(self, final: dict) -> None:
    """`workdir/averaged/`: the averaged parameters as an export (what
    `evaluate.py --workdir W/averaged` and `Translator.load` read), with the
    final evaluation's metrics."""
    if not self.averaged_steps or not self.is_main:
      return
    out = self.workdir / AVERAGED_DIR
    if out.exists():  # a rerun of a finished run writes it again
      out.rmtree()
    meta = self.meta_record()
    export_lib.write_export(out, jax.device_get(parallel.first_copy(self.rstate.params)), meta,
                            self.workdir, "latest", self.averaged_steps,
                            {k: {m: v for m, v in r.items() if not m.endswith("signature")}
                             for k, r in final.items()})

  def final_outputs(self) -> dict:
    final = {}
    self.average_last_checkpoints()
    with self.watch("final_eval"):
      for split_name in self.config.final_eval_splits:
        if split_name in self.splits:
          final[split_name] = self.evaluate(split_name, final=True)
    with self.watch("checkpoint"):
      self.export_averaged(final)
    with self.watch("figures"):
      if self.is_main:
        plot.training_curves(self.log.rows, self.workdir / "curves.png")
        if self.config.get("heatmap_example"):
          src_tokens, trg_tokens, weights = self.translator().attention(
              self.config.heatmap_example)
          plot.attention_heatmap(src_tokens, trg_tokens, weights, self.workdir / "attention.png")
    self.log.write({"step": self.step, "split": "summary", "final": True,
                    "train_compiles": self.train_compiles, "recompiles": self.recompiles,
                    "buckets": list(self.s.buckets), "time": self.watch.summary()})
    return final

  def next_stop(self) -> int:
    """The next step at which the host needs the device: a log, an
    evaluation, a checkpoint or the end."""
    c, step = self.config, self.step
    due = [(step // every + 1) * every
           for every in (c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps)]
    return min(due + [self.s.total_steps])


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (a path or a URL), resuming from its latest
  checkpoint. Writes `metrics.jsonl`, checkpoints (`checkpoints/`, `best/`),
  `curves.png`, `attention.png` and `<split>.hyp.txt` of the final
  evaluation. Returns the final evaluation metrics.

  Raises:
    ValueError: a config value that cannot work (before anything runs).
    checkpoint.RestoreError: checkpoints exist but none restores.
    NonFiniteLossError: too many rejected steps in a row.
    TrainingPreempted: stopped by a signal after saving.
  """
  parallel.initialize(config.get("coordinator_address") or None,
                      config.get("num_processes") or None, config.get("process_id"))
  from_config.validate_config(config, parallel.device_count(), jax.process_count())
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  watch = Stopwatch()
  with watch("data"):
    splits = from_config.load_task(config)
  bad = [s for s in config.final_eval_splits if s not in splits]
  if bad:
    raise ValueError(f"config: final_eval_splits {bad} are not splits of {config.task} "
                     f"(has {sorted(splits)})")
  metric_name, metric_mode = from_config.best_metric(config)
  ckpts = ckpt_lib.Checkpoints(workdir, keep=config.keep_checkpoints,
                               best_metric=f"val_{metric_name}", best_mode=metric_mode)
  with watch("setup"):
    setup, state, meta = restore_or_create(config, splits, ckpts, watch)

  with Preemption() as preemption:
    run = Run(config, workdir, splits, ckpts, setup, state, meta, preemption, watch)
    del state
    bar = tqdm.tqdm(total=setup.total_steps, initial=run.step, dynamic_ncols=True,
                    disable=not run.is_main or not config.progress_bar)
    try:
      if meta is not None and meta.get("pending_eval"):
        run.evaluate_and_save()  # the evaluation a signal interrupted
      while run.step < setup.total_steps:
        with watch("train_steps"):
          run.train_until(run.next_stop(), bar)
          run.fetch_and_log(bar)
        if run.step % config.eval_every_steps == 0 or run.step == setup.total_steps:
          run.evaluate_and_save()
        elif run.step % config.checkpoint_every_steps == 0:
          run.save()
      final = run.final_outputs()
    except Preempted:
      if run.last_saved != run.step:
        run.save()
      ckpts.wait()
      raise TrainingPreempted(run.step, str(ckpts.directory)) from None
    finally:
      bar.close()
      ckpts.wait()
  ckpts.close()
  return {**final, "time": watch.summary(), "train_compiles": run.train_compiles, "recompiles": run.recompiles,
          "buckets": list(setup.buckets), "step": run.step}
