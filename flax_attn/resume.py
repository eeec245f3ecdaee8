"""Resuming: every rule about what may change between a checkpoint and a rerun.

`restore_or_create` returns the newest restorable checkpoint's state with
the `Setup` it was built from (tokenizers, buckets, batch plan: kept from
the checkpoint), or a fresh one. Model fields that fix the parameters'
shapes may not change (`IncompatibleCheckpoint`); the other model fields,
the optimizer schedule and the batch plan may (`model_changes`,
`experiment_changes`, `_data_position`), and each change is logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from typing import Any

import jax
import optax

from flax_attn import checkpoint as ckpt_lib
from flax_attn import tokenizers as tok_lib
from flax_attn import from_config
from flax_attn.config import Seq2SeqConfig
from flax_attn.input_pipeline import TrainBatches, bucket_widths, encode_pairs, example_widths
from flax_attn.optimizer import make_optimizer, schedule
from flax_attn.steps import TrainState, create_train_state
from flax_attn.stopwatch import Stopwatch

# Seq2SeqConfig fields that fix the parameters' shapes or meaning; the others
# (dtype, param_dtype, dropout, out_dropout, memory_dropout, scan_unroll,
# init_std) may change on resume.
MODEL_FIELDS_FIXED = ("src_vocab_size", "trg_vocab_size", "pad_id", "bos_id", "eos_id",
                      "emb_dim", "enc_hidden", "dec_hidden", "attn_dim", "enc_layers")
# Experiment fields a checkpoint overrides (its tokenizers and buckets are kept).
FIELDS_FROM_CHECKPOINT = ("src_tokenizer", "trg_tokenizer", "src_lang", "trg_lang", "min_freq",
                          "lowercase", "sp_vocab_size", "sp_model_type", "sp_joint",
                          "sp_byte_fallback", "num_buckets")
# Fields that only say where or how this process runs.
FIELDS_OF_THE_LAUNCH = ("coordinator_address", "num_processes", "process_id", "progress_bar",
                        "data_dir", "download")
OPTIMIZER_FIELDS = ("optimizer", "clip_norm", "weight_decay")


def model_changes(saved: dict, model_config: Seq2SeqConfig) -> tuple[list[str], list[str]]:
  """(fixed fields that differ, free fields that differ) between a
  checkpoint's model config and this run's, as `name: old -> new` strings."""
  now = model_config.to_dict()
  fixed, free = [], []
  for k, v in now.items():
    if k in saved and saved[k] != v:
      (fixed if k in MODEL_FIELDS_FIXED else free).append(f"{k}: {saved[k]!r} -> {v!r}")
  return fixed, free


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def experiment_changes(saved: dict, now: dict) -> tuple[list[str], list[str]]:
  """(changes this run applies, changes the checkpoint overrides) between
  two experiment configs (JSON dicts), as `name: old -> new` strings; the
  model section and launch fields are left out."""
  a, b = _flat(saved), _flat(now)
  applied, ignored = [], []
  for k in sorted(set(a) | set(b)):
    if k.startswith("model.") or k in FIELDS_OF_THE_LAUNCH or a.get(k) == b.get(k):
      continue
    change = f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
    (ignored if k in FIELDS_FROM_CHECKPOINT else applied).append(change)
  return applied, ignored



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
    src_tok = tok_lib.from_json(meta["tokenizers"]["src"])
    trg_tok = tok_lib.from_json(meta["tokenizers"]["trg"])
  else:
    with watch("tokenizers") if watch else contextlib.nullcontext():
      src_tok, trg_tok = from_config.fit_tokenizers(config, splits["train"])
  model_config = from_config.model_config(config, src_tok.vocab_size, trg_tok.vocab_size)
  if meta is not None:
    fixed, _ = model_changes(meta.get("model_config", {}), model_config)
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


def log_resume_changes(config, meta: dict, setup: Setup) -> None:
  _, free = model_changes(meta.get("model_config", {}), setup.model_config)
  applied, ignored = experiment_changes(meta.get("experiment", {}),
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
    raise ckpt_lib.IncompatibleCheckpoint(str(e) + optimizer_change(config, e.meta)) from None
  if restored is None:
    setup = build_setup(config, splits, watch=watch)
    return setup, create_train_state(setup.model_config, setup.tx, config.seed), None
  step, state, meta = restored
  setup = built[step]
  log_resume_changes(config, meta, setup)
  logging.warning("resumed from step %d in %s", step, ckpts.directory)
  return setup, state, meta


def optimizer_change(config, meta: dict | None) -> str:
  saved = (meta or {}).get("experiment", {})
  diff = [f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in OPTIMIZER_FIELDS
          if k in saved and saved.get(k) != config.get(k)]
  return f"; optimizer settings changed: {', '.join(diff)}" if diff else ""
