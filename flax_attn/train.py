"""Training: pure `train_step` / `eval_step` and `train_and_evaluate(config, workdir)`.

The steps are module-level pure functions; static settings are bound with
`functools.partial` and `flax_attn.parallel.pmap` applies `jax.pmap` (the
only place it is applied). Losses travel as sums with a token count, summed
over devices, so the update does not depend on how a global batch is split
over devices or processes (with dropout off; dropout masks are drawn per
device).

The loop keeps the device busy: batches are built and copied to the devices
ahead of use (`parallel.prefetch_to_devices`), the step's metrics are summed
on the device (`train_step_accumulate`) and fetched only every
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
import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from flax_attn import checkpoint as ckpt_lib
from flax_attn import experiment, parallel, paths
from flax_attn.config import Seq2SeqConfig
from flax_attn.decode_config import DecodeConfig
from flax_attn.input_pipeline import (TrainBatches, bucket_widths, encode_pairs, eval_batches,
                                      example_widths, train_dataset)
from flax_attn.loss import cross_entropy_sums, projected_cross_entropy_sums, row_nll_sums
from flax_attn.metrics_log import MetricsLog
from flax_attn.model import Seq2Seq
from flax_attn.optimizer import Plateau, make_optimizer, schedule
from flax_attn.preemption import Preempted, Preemption
from flax_attn.stopwatch import Stopwatch


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `rng` is a raw uint32[2] key; `lr_scale`
  multiplies the updates (reduce-on-plateau)."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  lr_scale: jax.Array


# Dispatched steps the device may still be running (see `Run.train_until`):
# enough to keep it busy while the host prepares the next call, few enough
# that a SIGTERM is honoured after this many steps, not after a whole
# `log_every_steps` window (on a slow CPU, 50 steps of 5 s each outlast most
# grace periods: Kubernetes' default is 30 s).
STEPS_IN_FLIGHT = 2


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps had a NaN/inf loss or gradient."""


class TrainingPreempted(Exception):
  """The run stopped on a signal after saving `step`; rerun to resume."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped by a signal at step {step}; saved in {directory}; "
                     "rerun the same command to resume")
    self.step = step


def create_train_state(model_config: Seq2SeqConfig, tx: optax.GradientTransformation,
                       seed: int) -> TrainState:
  from flax_attn.model import init_params
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(init_rng, model_config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng, lr_scale=jnp.ones((), jnp.float32))


def train_step(state: TrainState, batch: dict, *, model_config: Seq2SeqConfig,
               tx: optax.GradientTransformation, teacher_forcing: float = 1.0,
               label_smoothing: float = 0.0) -> tuple[TrainState, dict]:
  """One optimisation step on this device's share of a global batch (inside pmap).

  Returns the new state and metrics summed over all devices: loss_sum,
  nll_sum, weight_sum, grad_norm, ok. If the loss or gradient is not finite
  (`ok` False), parameters, optimizer state and lr scale are unchanged and
  only the step counter advances (that batch is skipped).
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), parallel.device_index())
  model = Seq2Seq(model_config)

  def loss_fn(params):
    inputs = (batch["src"], batch["src_lengths"], batch["trg_in"])
    if teacher_forcing >= 1.0:  # the output projection fused with the loss, in chunks
      features = model.apply({"params": params}, *inputs, train=True, rngs={"dropout": rng},
                             method=Seq2Seq.teacher_forced_features)
      dec = params["decoder"]
      loss_sum, nll_sum, weight_sum = projected_cross_entropy_sums(
          features, dec["out_kernel"], dec["out_bias"], batch["trg_out"], batch["weights"],
          label_smoothing, model_config.compute_dtype)
    else:
      logits = model.apply({"params": params}, *inputs, train=True,
                           teacher_forcing=teacher_forcing, rngs={"dropout": rng})
      loss_sum, nll_sum, weight_sum = cross_entropy_sums(logits, batch["trg_out"],
                                                         batch["weights"], label_smoothing)
    return loss_sum, (nll_sum, weight_sum)

  # vary: under jax.shard_map each device differentiates its own share (as under
  # pmap, where it is a no-op); the psum below then sums them once.
  (loss_sum, (nll_sum, weight_sum)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      parallel.vary(state.params))
  total_weight = parallel.psum(weight_sum)
  denom = jnp.maximum(total_weight, 1.0)
  grads = jax.tree.map(lambda g: parallel.psum(g) / denom, grads)
  loss = parallel.psum(loss_sum) / denom
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
  updated = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), updated, state)
  new_state = new_state.replace(step=state.step + 1)
  metrics = {"loss_sum": loss * denom, "nll_sum": parallel.psum(nll_sum),
             "weight_sum": total_weight, "grad_norm": grad_norm, "ok": ok}
  return new_state, metrics


# ---- metrics summed on the device between fetches --------------------------------------

def init_metrics() -> dict:
  """Device-side running sums of one log window, plus the rejection streak
  (`streak`: consecutive rejected steps now; `stop_step`: step at which the
  streak first reached the limit, 0 if never)."""
  f, i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
  return {"loss_sum": f, "nll_sum": f, "weight_sum": f, "grad_norm_sum": f, "steps": i,
          "rejected": i, "streak": i, "stop_step": i}


def accumulate(acc: dict, m: dict, step: jax.Array, max_nonfinite: int) -> dict:
  ok = m["ok"]
  keep = lambda x: jnp.where(ok, x, 0.0)  # a rejected step's loss is NaN: leave it out
  streak = jnp.where(ok, 0, acc["streak"] + 1)
  hit = (streak >= max_nonfinite) & (acc["stop_step"] == 0)
  return {"loss_sum": acc["loss_sum"] + keep(m["loss_sum"]),
          "nll_sum": acc["nll_sum"] + keep(m["nll_sum"]),
          "weight_sum": acc["weight_sum"] + keep(m["weight_sum"]),
          "grad_norm_sum": acc["grad_norm_sum"] + keep(m["grad_norm"]),
          "steps": acc["steps"] + ok.astype(jnp.int32),
          "rejected": acc["rejected"] + (~ok).astype(jnp.int32),
          "streak": streak, "stop_step": jnp.where(hit, step, acc["stop_step"])}


def train_step_accumulate(state: TrainState, acc: dict, batch: dict, *, max_nonfinite: int = 20,
                          **step_kwargs) -> tuple[TrainState, dict]:
  """`train_step` plus `accumulate`, in one device program (inside pmap)."""
  new_state, m = train_step(state, batch, **step_kwargs)
  return new_state, accumulate(acc, m, new_state.step, max_nonfinite)


def eval_step(params: Any, batch: dict, *, model_config: Seq2SeqConfig,
              free_running: bool = False) -> dict:
  """Summed NLL and token count of a batch (teacher forced, or the model's
  own argmax fed back when `free_running`), summed over devices, and the
  same per row of the global batch (`nll_B`, `weight_B`)."""
  logits = Seq2Seq(model_config).apply({"params": params}, batch["src"], batch["src_lengths"],
                                       batch["trg_in"], train=False,
                                       teacher_forcing=0.0 if free_running else 1.0)
  nll_B, weight_B = row_nll_sums(logits, batch["trg_out"], batch["weights"])
  return {"nll_sum": parallel.psum(jnp.sum(nll_B)), "weight_sum": parallel.psum(jnp.sum(weight_B)),
          "nll_B": parallel.all_gather(nll_B), "weight_B": parallel.all_gather(weight_B)}


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


# ---- the run's fixed parts: data, tokenizers, model, optimizer ---------------------------

@dataclasses.dataclass
class Setup:
  """What a run is built from (fresh, or from a checkpoint's meta)."""

  src_tok: Any
  trg_tok: Any
  model_config: Seq2SeqConfig
  encoded: dict
  buckets: tuple
  batches: TrainBatches
  data: dict           # {"start_step", "start_index", "batches_per_epoch", "batch_size", "seed"}
  total_steps: int
  tx: optax.GradientTransformation
  lr_fn: Any


def _data_position(config, batches: TrainBatches, meta: dict | None, step: int) -> dict:
  """Where in the batch sequence step `step` continues. The index is
  `start_index + (step - start_step)`; a changed plan (batch size, seed,
  data) maps the position to the same point of the same epoch."""
  plan = {"batches_per_epoch": batches.batches_per_epoch, "batch_size": config.batch_size,
          "seed": config.seed}
  old = (meta or {}).get("data")
  if old is None:
    return {"start_step": step, "start_index": step, **plan}
  index = old["start_index"] + (step - old["start_step"])
  if all(old.get(k) == v for k, v in plan.items()):
    return {**old, **plan}
  epoch, j = divmod(index, old["batches_per_epoch"])
  new_index = epoch * plan["batches_per_epoch"] + round(j * plan["batches_per_epoch"]
                                                        / old["batches_per_epoch"])
  logging.warning("the batch plan changed (%s -> %s): data continues at batch %d of epoch %d",
                  {k: old.get(k) for k in plan}, plan, new_index % plan["batches_per_epoch"], epoch)
  return {"start_step": step, "start_index": new_index, **plan}


def build_setup(config, splits: dict, meta: dict | None = None, step: int = 0,
                watch: Stopwatch | None = None) -> Setup:
  """Tokenizers, encoded splits, buckets, batch plan and optimizer for a
  fresh run (`meta` None) or for continuing checkpoint `meta` at `step`.

  Raises:
    IncompatibleCheckpoint: the checkpoint's model has other shapes.
  """
  if meta is not None:
    src_tok = ckpt_lib.tokenizer_from_json(meta["tokenizers"]["src"])
    trg_tok = ckpt_lib.tokenizer_from_json(meta["tokenizers"]["trg"])
  else:
    with watch("tokenizers") if watch else contextlib.nullcontext():
      src_tok, trg_tok = experiment.fit_tokenizers(config, splits["train"])
  model_config = experiment.model_config(config, src_tok.vocab_size, trg_tok.vocab_size)
  if meta is not None:
    fixed, _ = experiment.model_changes(meta.get("model_config", {}), model_config)
    if fixed:
      raise ckpt_lib.IncompatibleCheckpoint(
          f"checkpoint step {step} was trained with a different model ({', '.join(fixed)}); "
          "use another --workdir or the original config", meta)
  encoded = {name: encode_pairs(s.src, s.trg, src_tok, trg_tok, config.max_src_len,
                                config.max_trg_len)[:2] for name, s in splits.items()}
  buckets = (tuple(meta["buckets"]) if meta else
             bucket_widths(example_widths(*encoded["train"]), config.num_buckets))
  batches = TrainBatches(*encoded["train"], config.batch_size, buckets, config.seed)
  data = _data_position(config, batches, meta, step)
  if config.num_train_steps:
    total_steps = config.num_train_steps
  else:
    total_steps = data["start_step"] + config.num_epochs * batches.batches_per_epoch - data["start_index"]
  tx = make_optimizer(config.optimizer, config.learning_rate, config.schedule,
                      config.warmup_steps, total_steps, config.clip_norm, config.weight_decay)
  lr_fn = schedule(config.schedule, config.learning_rate, config.warmup_steps, total_steps)
  return Setup(src_tok, trg_tok, model_config, encoded, buckets, batches, data, total_steps, tx,
               lr_fn)


def _log_resume_changes(config, meta: dict, setup: Setup) -> None:
  _, free = experiment.model_changes(meta.get("model_config", {}), setup.model_config)
  applied, ignored = experiment.experiment_changes(meta.get("experiment", {}),
                                                   json.loads(config.to_json_best_effort()))
  if free or applied:
    logging.warning("resuming with changed settings: %s", "; ".join(free + applied))
  if ignored:
    logging.warning("kept from the checkpoint (these settings are ignored): %s", "; ".join(ignored))


def restore_or_create(config, splits: dict, ckpts: ckpt_lib.Checkpoints,
                      watch: Stopwatch | None = None) -> tuple[Setup, TrainState, dict | None]:
  """The latest restorable checkpoint (with its setup), or a fresh start
  when the workdir has no checkpoint. Returns (setup, state, meta or None)."""
  built: dict[int, Setup] = {}

  def abstract_state_for(step: int, meta: dict):
    built[step] = build_setup(config, splits, meta, step, watch)
    s = built[step]
    return jax.eval_shape(lambda: create_train_state(s.model_config, s.tx, config.seed))

  try:
    restored = ckpts.restore_latest(abstract_state_for)
  except ckpt_lib.IncompatibleCheckpoint as e:
    raise ckpt_lib.IncompatibleCheckpoint(str(e) + _optimizer_change(config, e.meta)) from None
  if restored is None:
    setup = build_setup(config, splits, watch=watch)
    return setup, create_train_state(setup.model_config, setup.tx, config.seed), None
  step, state, meta = restored
  setup = built[step]
  _log_resume_changes(config, meta, setup)
  logging.warning("resumed from step %d in %s", step, ckpts.directory)
  return setup, state, meta


def _optimizer_change(config, meta: dict | None) -> str:
  saved = (meta or {}).get("experiment", {})
  diff = [f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in experiment.OPTIMIZER_FIELDS
          if k in saved and saved.get(k) != config.get(k)]
  return f"; optimizer settings changed: {', '.join(diff)}" if diff else ""


# ---- evaluation -----------------------------------------------------------------------

def pmapped_eval(model_config: Seq2SeqConfig):
  """`eval_step` pmapped: `p_eval(replicated_params, device_batch, free_running)`."""
  return parallel.pmap(
      lambda params, batch, fr: eval_step(params, batch, model_config=model_config,
                                          free_running=fr),
      donate_state=False, static_broadcasted_argnums=(2,))


def split_perplexity(p_eval, params, src_ids, trg_ids, batch_size: int, buckets=None,
                     free_running: bool = False, on_batch=None,
                     tutorial_batch_size: int = 128) -> dict:
  """Mean NLL per target token (`loss`) and its `ppl` of the pairs; when
  `free_running` (the model's own argmax fed back, as the tutorial
  measures), also `free_running_ppl` and `free_running_ppl_tutorial`, the
  same loss averaged the tutorial's way (`metrics.batch_mean_perplexity`
  over batches of `tutorial_batch_size`).
  `params` are replicated on the devices."""
  sums = {"nll": 0.0, "w": 0.0, "fr_nll": 0.0}
  fr_nll_N, weight_N = np.zeros(len(src_ids)), np.zeros(len(src_ids))
  for ix, batch in eval_batches(src_ids, trg_ids, batch_size, buckets):
    if on_batch is not None:
      on_batch()
    dev = parallel.device_batch(batch)
    out = parallel.unreplicate(p_eval(params, dev, False))
    sums["nll"] += float(out["nll_sum"])
    sums["w"] += float(out["weight_sum"])
    if free_running:
      fr = jax.device_get(parallel.unreplicate(p_eval(params, dev, True)))
      sums["fr_nll"] += float(fr["nll_sum"])
      fr_nll_N[ix], weight_N[ix] = fr["nll_B"][:len(ix)], fr["weight_B"][:len(ix)]
  result = {"loss": sums["nll"] / max(sums["w"], 1.0)}
  result["ppl"] = float(math.exp(min(result["loss"], 50.0)))
  if free_running:
    from flax_attn.metrics import batch_mean_perplexity
    result["free_running_ppl"] = float(math.exp(min(sums["fr_nll"] / max(sums["w"], 1.0), 50.0)))
    result["free_running_ppl_tutorial"] = batch_mean_perplexity(
        fr_nll_N, weight_N, [len(s) for s in src_ids], tutorial_batch_size)
  return result


def evaluate_split(config, params, translator, split, src_ids, trg_ids, buckets, p_eval,
                   max_examples: int = 0, decode: DecodeConfig | None = None,
                   free_running: bool = False, on_batch=None) -> tuple[dict, list[str]]:
  """Loss/perplexity (teacher forced and optionally free running) and the
  task metrics of one split, its outputs decoded with `decode` (default:
  greedy). `params` are replicated on the devices; `on_batch()` runs before
  every batch (it may raise `Preempted`). Returns (metrics, hypotheses)."""
  decode = decode or DecodeConfig()
  from flax_attn import metrics as metrics_lib
  n = len(src_ids) if not max_examples else min(max_examples, len(src_ids))
  src_ids, trg_ids = src_ids[:n], trg_ids[:n]
  result = split_perplexity(p_eval, params, src_ids, trg_ids, config.eval_batch_size, buckets,
                            free_running, on_batch)
  hyps = [translator.trg_tokenizer.decode(ids)
          for ids in translator.translate_ids(src_ids, **decode.to_dict(),
                                              batch_size=config.eval_batch_size,
                                              on_batch=on_batch)]
  result.update(metrics_lib.task_metrics(config.task, hyps, split.references()[:n],
                                         experiment.target_language(config)))
  return result, hyps


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
            "tokenizers": {"src": ckpt_lib.tokenizer_to_json(s.src_tok),
                           "trg": ckpt_lib.tokenizer_to_json(s.trg_tok)},
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
    from flax_attn.translator import Translator
    return Translator(self.s.model_config, parallel.first_copy(self.rstate.params), self.s.src_tok,
                      self.s.trg_tok, self.config.max_src_len)

  def evaluate(self, split_name: str = "val", final: bool = False) -> dict:
    result, hyps = evaluate_split(
        self.config, self.rstate.params, self.translator(), self.splits[split_name],
        *self.s.encoded[split_name], self.s.buckets, self.p_eval,
        max_examples=0 if final else self.config.eval_max_examples,
        decode=self.decode if final else self.decode.replace(beam_size=1),
        free_running=final or experiment.best_metric(self.config)[0].startswith("free_running"),
        on_batch=self.preemption.check)
    row = {"step": self.step, "split": split_name,
           **{k: v for k, v in result.items() if not k.endswith("signature")}}
    self.log.write({**row, "final": True, "decode": self.decode.to_dict()} if final else row)
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

  def final_outputs(self) -> dict:
    final = {}
    with self.watch("final_eval"):
      for split_name in self.config.final_eval_splits:
        if split_name in self.splits:
          final[split_name] = self.evaluate(split_name, final=True)
    with self.watch("figures"):
      if self.is_main:
        from flax_attn import plot
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
  experiment.validate_config(config, parallel.device_count(), jax.process_count())
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  watch = Stopwatch()
  with watch("data"):
    splits = experiment.load_task(config)
  bad = [s for s in config.final_eval_splits if s not in splits]
  if bad:
    raise ValueError(f"config: final_eval_splits {bad} are not splits of {config.task} "
                     f"(has {sorted(splits)})")
  metric_name, metric_mode = experiment.best_metric(config)
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
