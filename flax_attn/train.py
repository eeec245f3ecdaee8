"""Training: pure `train_step` / `eval_step` and `train_and_evaluate(config, workdir)`.

The steps are module-level pure functions; static settings are bound with
`functools.partial` and `flax_attn.parallel.pmap` applies `jax.pmap` (the
only place it is applied). Losses travel as sums with a token count, summed
over devices, so the update does not depend on how a global batch is split
over devices or processes (with dropout off; dropout masks are drawn per
device).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
import tqdm

from flax_attn import checkpoint as ckpt_lib
from flax_attn import experiment, parallel
from flax_attn.config import Seq2SeqConfig
from flax_attn.input_pipeline import (TrainBatches, bucket_widths, encode_pairs, eval_batches,
                                      example_widths, train_iterator)
from flax_attn.loss import cross_entropy_sums
from flax_attn.model import Seq2Seq
from flax_attn.optimizer import Plateau, make_optimizer, schedule


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `rng` is a raw uint32[2] key; `lr_scale`
  multiplies the updates (reduce-on-plateau)."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  lr_scale: jax.Array


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/inf; the step was rejected."""


def create_train_state(model_config: Seq2SeqConfig, tx: optax.GradientTransformation,
                       seed: int) -> TrainState:
  from flax_attn.model import init_params
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(model_config, init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng, lr_scale=jnp.ones((), jnp.float32))


def train_step(state: TrainState, batch: dict, *, model_config: Seq2SeqConfig,
               tx: optax.GradientTransformation, teacher_forcing: float = 1.0,
               label_smoothing: float = 0.0) -> tuple[TrainState, dict]:
  """One optimisation step on this device's share of a global batch (inside pmap).

  Returns the new state (unchanged if the loss or gradient is not finite)
  and metrics summed over all devices: loss_sum, nll_sum, weight_sum,
  grad_norm, ok.
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), parallel.device_index())
  model = Seq2Seq(model_config)

  def loss_fn(params):
    logits = model.apply({"params": params}, batch["src"], batch["src_lengths"], batch["trg_in"],
                         train=True, teacher_forcing=teacher_forcing, rngs={"dropout": rng})
    loss_sum, nll_sum, weight_sum = cross_entropy_sums(logits, batch["trg_out"], batch["weights"],
                                                       label_smoothing)
    return loss_sum, (nll_sum, weight_sum)

  (loss_sum, (nll_sum, weight_sum)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  total_weight = parallel.psum(weight_sum)
  denom = jnp.maximum(total_weight, 1.0)
  grads = jax.tree.map(lambda g: parallel.psum(g) / denom, grads)
  loss = parallel.psum(loss_sum) / denom
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  metrics = {"loss_sum": loss * denom, "nll_sum": parallel.psum(nll_sum),
             "weight_sum": total_weight, "grad_norm": grad_norm, "ok": ok}
  return new_state, metrics


def eval_step(params: Any, batch: dict, *, model_config: Seq2SeqConfig,
              free_running: bool = False) -> dict:
  """Summed NLL and token count of a batch (teacher forced, or the model's
  own argmax fed back when `free_running`), summed over devices."""
  logits = Seq2Seq(model_config).apply({"params": params}, batch["src"], batch["src_lengths"],
                                       batch["trg_in"], train=False,
                                       teacher_forcing=0.0 if free_running else 1.0)
  _, nll_sum, weight_sum = cross_entropy_sums(logits, batch["trg_out"], batch["weights"])
  return {"nll_sum": parallel.psum(nll_sum), "weight_sum": parallel.psum(weight_sum)}


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


def _config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _check_compatible(saved: dict, model_config: Seq2SeqConfig, where: str) -> None:
  saved_model = saved.get("model_config", {})
  diff = sorted(k for k, v in model_config.to_dict().items() if saved_model.get(k) != v)
  if diff:
    pairs = ", ".join(f"{k}: checkpoint {saved_model.get(k)!r} vs config "
                      f"{getattr(model_config, k)!r}" for k in diff)
    raise ValueError(f"checkpoint in {where} was trained with a different model ({pairs}); "
                     "use another --workdir or the original config")


def evaluate_split(config, params, translator, split, src_ids, trg_ids,
                   buckets, p_eval, max_examples: int = 0, beam_size: int = 1,
                   free_running: bool = False) -> tuple[dict, list[str]]:
  """Loss/perplexity (teacher forced and optionally free running) and the
  task metrics of one split. Returns (metrics, hypotheses)."""
  from flax_attn import metrics as metrics_lib
  n = len(src_ids) if not max_examples else min(max_examples, len(src_ids))
  src_ids, trg_ids = src_ids[:n], trg_ids[:n]
  sums = {"nll": 0.0, "w": 0.0, "fr_nll": 0.0}
  batch_size = config.eval_batch_size
  rep_params = parallel.replicate(params)
  for _, batch in eval_batches(src_ids, trg_ids, batch_size, buckets):
    dev = parallel.device_batch(batch)
    out = parallel.unreplicate(p_eval(rep_params, dev, False))
    sums["nll"] += float(out["nll_sum"])
    sums["w"] += float(out["weight_sum"])
    if free_running:
      sums["fr_nll"] += float(parallel.unreplicate(p_eval(rep_params, dev, True))["nll_sum"])
  result = {"loss": sums["nll"] / max(sums["w"], 1.0)}
  result["ppl"] = float(math.exp(min(result["loss"], 50.0)))
  if free_running:
    result["free_running_ppl"] = float(math.exp(min(sums["fr_nll"] / max(sums["w"], 1.0), 50.0)))
  hyps = [translator.trg_tokenizer.decode(ids)
          for ids in translator.translate_ids(src_ids, beam_size=beam_size,
                                              batch_size=batch_size)]
  refs = split.references()[:n]
  if config.task == "g2p":
    result["wer"] = metrics_lib.wer(hyps, refs)
    result["per"] = metrics_lib.per(hyps, refs)
  elif config.task == "multi30k":
    result.update(metrics_lib.bleu_scores(hyps, [r[0] for r in refs]))
  else:
    result["exact_match"] = 100.0 * metrics_lib.exact_match(hyps, refs)
  return result, hyps


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Writes `metrics.jsonl`, checkpoints (`checkpoints/`, `best/`),
  `curves.png` and, for the final evaluation, `<split>.hyp.txt`.
  Returns the final evaluation metrics.
  """
  from flax_attn.translator import Translator
  parallel.initialize(config.get("coordinator_address") or None,
                      config.get("num_processes") or None, config.get("process_id"))
  workdir_path = Path(workdir).absolute()
  workdir_path.mkdir(parents=True, exist_ok=True)
  is_main = parallel.is_main_process()
  counter = compile_counter()

  splits = experiment.load_task(config)
  metric_name, metric_mode = experiment.TASK_METRICS[config.task]
  ckpts = ckpt_lib.Checkpoints(workdir_path, keep=config.keep_checkpoints,
                               best_metric=f"val_{metric_name}", best_mode=metric_mode)
  saved_meta = ckpts.latest_meta()
  if saved_meta is not None:
    src_tok = ckpt_lib.tokenizer_from_json(saved_meta["tokenizers"]["src"])
    trg_tok = ckpt_lib.tokenizer_from_json(saved_meta["tokenizers"]["trg"])
  else:
    src_tok, trg_tok = experiment.fit_tokenizers(config, splits["train"])
  model_config = experiment.model_config(config, src_tok.vocab_size, trg_tok.vocab_size)
  if saved_meta is not None:
    _check_compatible(saved_meta, model_config, str(workdir_path))

  encoded = {name: encode_pairs(s.src, s.trg, src_tok, trg_tok, config.max_src_len,
                                config.max_trg_len)[:2] for name, s in splits.items()}
  buckets = (tuple(saved_meta["buckets"]) if saved_meta else
             bucket_widths(example_widths(*encoded["train"]), config.num_buckets))
  n_dev = parallel.device_count()
  if config.batch_size % n_dev:
    raise ValueError(f"batch_size {config.batch_size} is not a multiple of the {n_dev} devices")
  batches = TrainBatches(*encoded["train"], config.batch_size, buckets, config.seed)
  data_iter = train_iterator(batches)
  total_steps = config.num_train_steps or config.num_epochs * batches.batches_per_epoch
  tx = make_optimizer(config.optimizer, config.learning_rate, config.schedule,
                      config.warmup_steps, total_steps, config.clip_norm, config.weight_decay)
  lr_fn = schedule(config.schedule, config.learning_rate, config.warmup_steps, total_steps)
  state = create_train_state(model_config, tx, config.seed)
  plateau = Plateau(factor=config.plateau_factor, patience=config.plateau_patience)
  abstract_state = jax.eval_shape(lambda: create_train_state(model_config, tx, config.seed))
  restored = ckpts.restore_latest(abstract_state, data_iter)
  if restored is not None:
    step0, state, meta = restored
    plateau = Plateau(**meta["plateau"])
    logging.info("resumed from step %d in %s", step0, workdir_path)

  def meta_record() -> dict:
    return {"experiment": _config_json(config), "model_config": model_config.to_dict(),
            "tokenizers": {"src": ckpt_lib.tokenizer_to_json(src_tok),
                           "trg": ckpt_lib.tokenizer_to_json(trg_tok)},
            "buckets": list(buckets), "plateau": plateau.__dict__.copy(),
            "devices": n_dev, "batches_per_epoch": batches.batches_per_epoch}

  p_train = parallel.pmap(functools.partial(
      train_step, model_config=model_config, tx=tx, teacher_forcing=config.teacher_forcing,
      label_smoothing=config.label_smoothing))
  p_eval = parallel.pmap(
      lambda params, batch, fr: eval_step(params, batch, model_config=model_config,
                                          free_running=fr),
      donate_state=False, static_broadcasted_argnums=(2,))
  rstate = parallel.replicate(state)
  del state

  stop = {"signal": None}
  def on_signal(signum, frame):
    del frame
    stop["signal"] = signum
  old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

  metrics_path = workdir_path / "metrics.jsonl"
  def log(record: dict) -> None:
    if is_main:
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def host_state():
    return parallel.unreplicate(rstate)

  def translator_now(params) -> Translator:
    return Translator(model_config, params, src_tok, trg_tok, config.max_src_len)

  def run_eval(step: int, split_name: str = "val", final: bool = False) -> dict:
    params = parallel.unreplicate(rstate.params)
    result, hyps = evaluate_split(
        config, params, translator_now(params), splits[split_name],
        *encoded[split_name], buckets, p_eval,
        max_examples=0 if final else config.eval_max_examples,
        beam_size=config.beam_size if final else 1, free_running=final)
    log({"step": step, "split": split_name, **{k: v for k, v in result.items()
                                              if not k.endswith("signature")}})
    if final and is_main:
      (workdir_path / f"{split_name}.hyp.txt").write_text("\n".join(hyps) + "\n")
    return result

  def save(step: int, val: dict | None = None) -> None:
    metrics = {f"val_{k}": v for k, v in (val or {}).items() if isinstance(v, float)}
    ckpts.save(step, host_state(), data_iter, meta_record(), metrics=metrics or None)

  step = int(jax.device_get(rstate.step[0]))
  last_saved = step if restored is not None else None
  window = {"loss": 0.0, "nll": 0.0, "w": 0.0, "t": time.time(), "steps": 0}
  train_compiles, recompiles, compiled_widths = 0, 0, set()
  bar = tqdm.tqdm(total=total_steps, initial=step, disable=not is_main or not config.progress_bar,
                  dynamic_ncols=True)
  try:
    while step < total_steps:
      if stop["signal"] is not None:
        logging.warning("signal %d: saving step %d and exiting", stop["signal"], step)
        save(step)
        last_saved = step
        break
      batch = parallel.device_batch(next(data_iter))
      before = counter.count
      rstate, m = p_train(rstate, batch)
      m = parallel.unreplicate(m)
      if counter.count > before:  # this call compiled the step (for a new batch shape)
        train_compiles += 1
        width = batch["src"].shape[-1]
        if width in compiled_widths:
          recompiles += 1
        compiled_widths.add(width)
      if not bool(m["ok"]):
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step + 1}; the step was rejected and the run "
            f"stopped; last good checkpoint: "
            f"{'step %d in %s' % (last_saved, ckpts.latest.directory) if last_saved is not None else 'none'}")
      step += 1
      bar.update(1)
      window["loss"] += float(m["loss_sum"]); window["nll"] += float(m["nll_sum"])
      window["w"] += float(m["weight_sum"]); window["steps"] += 1
      if step % config.log_every_steps == 0 or step == total_steps:
        dt = time.time() - window["t"]
        loss = window["loss"] / max(window["w"], 1.0)
        record = {"step": step, "split": "train", "loss": loss,
                  "ppl": math.exp(min(window["nll"] / max(window["w"], 1.0), 50.0)),
                  "lr": float(lr_fn(step)) * plateau.scale, "grad_norm": float(m["grad_norm"]),
                  "tokens_per_s": window["w"] / max(dt, 1e-9), "steps_per_s": window["steps"] / dt,
                  "train_compiles": train_compiles, "recompiles": recompiles, "epoch": step / batches.batches_per_epoch}
        log(record)
        bar.set_postfix(loss=f"{loss:.3f}")
        window = {"loss": 0.0, "nll": 0.0, "w": 0.0, "t": time.time(), "steps": 0}
      evaluated = None
      if step % config.eval_every_steps == 0 or step == total_steps:
        evaluated = run_eval(step)
        if config.plateau_patience > 0:
          scale = plateau.update(evaluated["loss"])
          rstate = rstate.replace(lr_scale=jnp.full_like(rstate.lr_scale, scale))
      if evaluated is not None or step % config.checkpoint_every_steps == 0:
        save(step, evaluated)
        last_saved = step
  finally:
    bar.close()
    ckpts.wait()
    for s, h in old_handlers.items():
      signal.signal(s, h)
  final = {}
  if step >= total_steps and stop["signal"] is None:
    for split_name in config.final_eval_splits:
      if split_name in splits:
        final[split_name] = run_eval(step, split_name, final=True)
    log({"step": step, "split": "summary", "train_compiles": train_compiles,
         "recompiles": recompiles, "buckets": list(buckets)})
    if is_main:
      from flax_attn import plot
      plot.training_curves(metrics_path, workdir_path / "curves.png")
      if config.get("heatmap_example"):
        t = translator_now(parallel.unreplicate(rstate.params))
        src_tokens, trg_tokens, weights = t.attention(config.heatmap_example)
        plot.attention_heatmap(src_tokens, trg_tokens, weights, workdir_path / "attention.png")
  ckpts.close()
  final["train_compiles"] = train_compiles
  final["recompiles"] = recompiles
  final["buckets"] = list(buckets)
  final["step"] = step
  return final
