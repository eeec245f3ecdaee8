"""From an experiment config to data, tokenizers and a model config.

The config is an `ml_collections.ConfigDict` (see `flax_attn/configs/`);
this module is the one place that reads its task, tokenizer and model fields.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from flax_attn import tokenizers as tok_lib
from flax_attn.config import DROPOUT_FIELDS, Seq2SeqConfig
from flax_attn.configs import common as _common
from flax_attn.decode_config import DecodeConfig
from flax_attn.tasks import Split

_DEFAULTS = _common.base_config()

# Metric used to pick the best checkpoint, and whether lower is better.
TASK_METRICS = {
    "dates": ("exact_match", "max"), "reverse": ("exact_match", "max"),
    "sort": ("exact_match", "max"), "g2p": ("wer", "min"), "multi30k": ("bleu_lc", "max"),
}


# Metrics of every validation that `best_metric` may name instead of the task's (lower is better).
LOSS_METRICS = ("loss", "ppl", "free_running_ppl", "free_running_ppl_tutorial")


def _field(config, name: str) -> Any:
  """`config.<name>`, or its default (`flax_attn.configs.common`, the one
  place for defaults) in a config saved before the field existed."""
  if name in config:
    return config[name]
  return _DEFAULTS[name]


def best_metric(config) -> tuple[str, str]:
  """(validation metric that picks `workdir/best`, "min" or "max"): the
  config's `best_metric` when set, else the task's own metric."""
  name = _field(config, "best_metric") or ""
  if not name or name == TASK_METRICS[config.task][0]:
    return TASK_METRICS[config.task]
  return name, "min"


def load_task(config) -> dict[str, Split]:
  """The task's splits (`train`, `val`, `test`, maybe `test2017`)."""
  kw = dict(config.task_kwargs) if "task_kwargs" in config else {}
  task = config.task
  if task == "dates":
    from flax_attn.tasks import dates
    return dates.load_splits(**kw)
  if task in ("reverse", "sort"):
    from flax_attn.tasks import synthetic
    return synthetic.load_splits(task=task, **kw)
  if task == "g2p":
    from flax_attn.tasks import g2p
    return g2p.load_splits(**kw)
  if task == "multi30k":
    from flax_attn.tasks import multi30k
    data_dir = _field(config, "data_dir") or multi30k.default_data_dir()
    return multi30k.load_splits(data_dir, download=bool(_field(config, "download")), **kw)
  raise ValueError(f"unknown task {task!r}; use one of {sorted(TASK_METRICS)}")


def target_language(config) -> str:
  """The target language of a translation task ("en", "de"), else ""."""
  if config.task != "multi30k":
    return ""
  kw = config.get("task_kwargs") or {}
  return kw.get("trg_lang", "en")


def fit_tokenizer(kind: str, texts: list[str], config, lang: str = "") -> Any:
  """Fits a tokenizer of `kind` (word, char, whitespace, sentencepiece) on `texts`;
  `lang` (e.g. "en") gives a word tokenizer Moses tokens and detokenisation."""
  if kind == "word":
    return tok_lib.WordTokenizer.fit(texts, min_freq=config.min_freq, lowercase=config.lowercase,
                                     lang=lang or None)
  if kind == "char":
    return tok_lib.CharTokenizer.fit(texts, lowercase=config.lowercase)
  if kind == "whitespace":
    return tok_lib.WhitespaceTokenizer.fit(texts)
  if kind == "sentencepiece":
    return tok_lib.SentencePieceTokenizer.fit(texts, vocab_size=config.sp_vocab_size,
                                              model_type=config.sp_model_type,
                                              lowercase=config.lowercase,
                                              byte_fallback=_field(config, "sp_byte_fallback"))
  raise ValueError(f"unknown tokenizer {kind!r}; use word, char, whitespace or sentencepiece")


def fit_tokenizers(config, train: Split):
  """(source tokenizer, target tokenizer) fitted on the training split; with
  `sp_joint` one SentencePiece model fitted on both sides serves as both."""
  if _field(config, "sp_joint"):
    if not config.src_tokenizer == config.trg_tokenizer == "sentencepiece":
      raise ValueError("sp_joint needs src_tokenizer = trg_tokenizer = 'sentencepiece'")
    joint = fit_tokenizer("sentencepiece", list(train.src) + list(train.trg), config)
    return joint, joint
  return (fit_tokenizer(config.src_tokenizer, train.src, config, _field(config, "src_lang")),
          fit_tokenizer(config.trg_tokenizer, train.trg, config, _field(config, "trg_lang")))


def model_config(config, src_vocab_size: int, trg_vocab_size: int) -> Seq2SeqConfig:
  """`Seq2SeqConfig` from `config.model` and the vocabulary sizes."""
  m = {**_DEFAULTS.model.to_dict(), **dict(config.model)}  # older checkpoints lack newer fields
  m = ml_collections.ConfigDict(m)
  return Seq2SeqConfig(
      src_vocab_size=src_vocab_size, trg_vocab_size=trg_vocab_size,
      pad_id=tok_lib.PAD_ID, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID,
      emb_dim=m.emb_dim, enc_hidden=m.enc_hidden, dec_hidden=m.dec_hidden,
      attn_dim=m.attn_dim or None, dropout=m.dropout, out_dropout=m.out_dropout,
      memory_dropout=m.memory_dropout, enc_layers=m.enc_layers,
      init_std=m.init_std if m.init_std > 0 else None, dtype=m.dtype,
      scan_unroll=m.scan_unroll)


# ---- checks before training starts ------------------------------------------------------

def validate_config(config, device_count: int, process_count: int) -> None:
  """Raises ValueError (one line) for any value that would crash or silently
  misbehave later in training, before anything is computed."""
  def need(cond: bool, message: str) -> None:
    if not cond:
      raise ValueError(f"config: {message}")

  if config.task not in TASK_METRICS:
    raise ValueError(f"config: unknown task {config.task!r}; use one of {sorted(TASK_METRICS)}")
  for name in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps",
               "keep_checkpoints", "batch_size", "eval_batch_size", "num_buckets",
               "max_nonfinite_steps"):
    value = config.get(name)
    need(isinstance(value, int) and value >= 1, f"{name} must be an integer >= 1, got {value!r}")
  for name in ("num_train_steps", "num_epochs", "eval_max_examples"):
    value = config.get(name)
    need(isinstance(value, int) and value >= 0, f"{name} must be an integer >= 0, got {value!r}")
  average_last = config.average_last
  need(isinstance(average_last, int) and average_last >= 0,
       f"average_last must be an integer >= 0, got {average_last!r}")
  need(average_last <= config.keep_checkpoints,
       f"average_last={average_last} needs keep_checkpoints >= {average_last}, "
       f"got {config.keep_checkpoints}")
  need(config.num_train_steps > 0 or config.num_epochs > 0,
       "set num_train_steps or num_epochs (both are 0)")
  for name in ("batch_size", "eval_batch_size"):
    value = config.get(name)
    need(value % device_count == 0,
         f"{name}={value} must be a multiple of the {device_count} devices "
         f"({process_count} process(es)); e.g. {max(device_count, value // device_count * device_count)}")
  for name in ("max_src_len", "max_trg_len"):
    need(config.get(name) >= 2, f"{name} must be >= 2 (a token and EOS), got {config.get(name)}")
  need(0.0 <= config.teacher_forcing <= 1.0,
       f"teacher_forcing must be in [0, 1], got {config.teacher_forcing}")
  need(0.0 <= config.label_smoothing < 1.0,
       f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
  for name in DROPOUT_FIELDS:
    rate = config.model.get(name, _DEFAULTS.model[name])
    need(0.0 <= rate < 1.0, f"model.{name} must be in [0, 1), got {rate}")
  need(config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}")
  need(config.clip_norm >= 0, f"clip_norm must be >= 0 (0: off), got {config.clip_norm}")
  need(config.optimizer in ("adam", "adamw"), f"optimizer must be adam or adamw, got {config.optimizer!r}")
  need(config.schedule in ("constant", "cosine", "rsqrt"),
       f"schedule must be constant, cosine or rsqrt, got {config.schedule!r}")
  need(config.model.dtype in ("float32", "bfloat16"),
       f"model.dtype must be float32 or bfloat16, got {config.model.dtype!r}")
  need(_field(config, "plateau_patience") >= 0, "plateau_patience must be >= 0")
  try:
    DecodeConfig.from_experiment(config)
  except ValueError as e:
    raise ValueError(f"config: {e}") from None
  choices = ("", TASK_METRICS[config.task][0]) + LOSS_METRICS
  need(_field(config, "best_metric") in choices,
       f"best_metric must be one of {choices} for {config.task}, got {config.get('best_metric')!r}")
