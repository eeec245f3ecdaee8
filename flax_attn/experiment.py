"""From an experiment config to data, tokenizers and a model config.

The config is an `ml_collections.ConfigDict` (see `experiments/configs/`);
this module is the one place that reads its task, tokenizer and model fields.
"""

from __future__ import annotations

from typing import Any

from flax_attn import tokenizers as tok_lib
from flax_attn.config import Seq2SeqConfig
from flax_attn.tasks import Split

# Metric used to pick the best checkpoint, and whether lower is better.
TASK_METRICS = {
    "dates": ("exact_match", "max"), "reverse": ("exact_match", "max"),
    "sort": ("exact_match", "max"), "g2p": ("wer", "min"), "multi30k": ("bleu_lc", "max"),
}


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
    data_dir = config.get("data_dir") or multi30k.default_data_dir()
    return multi30k.load_splits(data_dir, download=bool(config.get("download", False)), **kw)
  raise ValueError(f"unknown task {task!r}; use one of {sorted(TASK_METRICS)}")


def fit_tokenizer(kind: str, texts: list[str], config) -> Any:
  """Fits a tokenizer of `kind` (word, char, whitespace, sentencepiece) on `texts`."""
  if kind == "word":
    return tok_lib.WordTokenizer.fit(texts, min_freq=config.min_freq, lowercase=config.lowercase)
  if kind == "char":
    return tok_lib.CharTokenizer.fit(texts, lowercase=config.lowercase)
  if kind == "whitespace":
    return tok_lib.WhitespaceTokenizer.fit(texts)
  if kind == "sentencepiece":
    return tok_lib.SentencePieceTokenizer.fit(texts, vocab_size=config.sp_vocab_size,
                                              model_type=config.sp_model_type,
                                              lowercase=config.lowercase)
  raise ValueError(f"unknown tokenizer {kind!r}; use word, char, whitespace or sentencepiece")


def fit_tokenizers(config, train: Split):
  """(source tokenizer, target tokenizer) fitted on the training split."""
  return (fit_tokenizer(config.src_tokenizer, train.src, config),
          fit_tokenizer(config.trg_tokenizer, train.trg, config))


def model_config(config, src_vocab_size: int, trg_vocab_size: int) -> Seq2SeqConfig:
  """`Seq2SeqConfig` from `config.model` and the vocabulary sizes."""
  m = config.model
  return Seq2SeqConfig(
      src_vocab_size=src_vocab_size, trg_vocab_size=trg_vocab_size,
      pad_id=tok_lib.PAD_ID, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID,
      emb_dim=m.emb_dim, enc_hidden=m.enc_hidden, dec_hidden=m.dec_hidden,
      attn_dim=m.attn_dim or None, dropout=m.dropout, enc_layers=m.enc_layers,
      init_std=m.init_std if m.init_std > 0 else None, dtype=m.dtype,
      scan_unroll=m.get("scan_unroll", 1))
