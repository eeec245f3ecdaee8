"""Fields shared by every experiment config (each task file overrides some)."""

from typing import Callable

import ml_collections

from flax_attn import decode_config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = ""
  c.task_kwargs = ml_collections.ConfigDict()
  c.data_dir = ""            # multi30k: where {train,val,test_2016_flickr}.{de,en} live
  c.download = False         # multi30k: fetch missing files (sha256-verified)
  # Tokenizers: word | char | whitespace | sentencepiece.
  c.src_tokenizer = "char"
  c.trg_tokenizer = "char"
  c.min_freq = 1
  c.lowercase = False
  c.src_lang = ""            # word tokenizer: Moses tokens/detokenisation for this language
  c.trg_lang = ""            # ("" = regex split, outputs joined with spaces)
  c.sp_vocab_size = 8000
  c.sp_model_type = "bpe"
  c.sp_joint = False         # one SentencePiece model for both sides
  c.sp_byte_fallback = False  # unseen characters as UTF-8 byte pieces: no <unk>, ever
  c.max_src_len = 64         # tokens incl. EOS; longer inputs are truncated
  c.max_trg_len = 64
  c.num_buckets = 4          # padded widths, hence at most this many compilations
  # Model (see flax_attn.Seq2SeqConfig).
  c.model = ml_collections.ConfigDict(dict(
      emb_dim=256, enc_hidden=512, dec_hidden=512, attn_dim=0, dropout=0.5, out_dropout=0.0,
      memory_dropout=0.0,
      enc_layers=1, init_std=0.01, dtype="float32", scan_unroll=1))
  # Optimisation. batch_size is the GLOBAL batch: per-device batch x device count.
  c.batch_size = 128
  c.num_train_steps = 0      # 0: num_epochs epochs
  c.num_epochs = 10
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.schedule = "constant"    # constant | cosine | rsqrt
  c.warmup_steps = 0
  c.weight_decay = 0.0
  c.clip_norm = 1.0
  c.label_smoothing = 0.0
  c.teacher_forcing = 1.0
  c.plateau_patience = 0     # >0: reduce-on-plateau on the validation loss
  c.plateau_factor = 0.5
  c.seed = 0
  c.max_nonfinite_steps = 20  # stop after this many consecutive rejected (NaN/inf) steps
  # Logging, evaluation, checkpoints.
  c.log_every_steps = 50     # metrics stay on the device between these fetches
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.average_last = 0         # >1: the final evaluation averages the newest K checkpoints
                             # (needs keep_checkpoints >= K) and writes them to workdir/averaged/
  c.eval_batch_size = 256
  c.eval_max_examples = 0    # 0: whole split during training evals
  c.final_eval_splits = ("val", "test")
  c.best_metric = ""         # what picks workdir/best: "" = the task's metric (bleu_lc, wer, ...);
                             # loss, ppl or free_running_ppl (lower is better) instead
  # Decoding of the final evaluation, and the defaults of evaluate.py,
  # translate.py and Translator.load for this run's workdir (flax_attn.decode_config).
  c.decode = ml_collections.ConfigDict(decode_config.DecodeConfig().to_dict())
  c.progress_bar = True
  c.heatmap_example = ""
  # Multi-host (jax.distributed); empty for one process.
  c.coordinator_address = ""
  c.num_processes = 0
  c.process_id = 0
  return c


PRESETS = ("", "tiny")


def with_preset(c: ml_collections.ConfigDict, preset: str,
                tiny: Callable[[ml_collections.ConfigDict], None]) -> ml_collections.ConfigDict:
  """`c` as preset `preset` asks: "" the config itself, "tiny" after
  `tiny(c)`; another name is a one-line ValueError."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} (use '' or 'tiny')")
  if preset == "tiny":
    tiny(c)
  return c


def apply_tiny(c: ml_collections.ConfigDict, steps: int = 16, **model) -> None:
  """The `tiny` preset shared by tests and smoke runs: a small model, a few
  steps, evaluation and checkpoints every half run, two length buckets (each
  width is a compilation of the train step, ~10 s on a CPU), no progress bar."""
  c.model.update(emb_dim=8, enc_hidden=16, dec_hidden=16, attn_dim=16)
  c.model.update(**model)
  c.batch_size = 32
  c.num_buckets = 2
  c.num_epochs = 0
  c.num_train_steps = steps
  c.log_every_steps = max(steps // 4, 1)
  c.eval_every_steps = c.checkpoint_every_steps = max(steps // 2, 1)
  c.eval_max_examples = 0
  c.progress_bar = False
