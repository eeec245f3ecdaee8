"""multi30k_tutorial: German->English Multi30k with the tutorial's own settings.

bentrevett/pytorch-seq2seq tutorial 4: word-level vocabularies (lower-cased,
min_freq 2), embeddings 256, GRUs 512, dropout 0.5, batch 128, Adam 1e-3,
gradient clipping 1, teacher forcing 0.5, 10 epochs, weights ~ N(0, 0.01).
Like the tutorial, which keeps the epoch with the lowest validation loss
measured without teacher forcing and reports the test perplexity of that
model, `best/` holds the epoch with the lowest free-running validation
perplexity (`evaluate.py --which best`). Decoding: greedy, as the tutorial.

Reaches (experiments/results/LOG.md): test2016 lower-cased sacreBLEU 31.13
greedy, free-running test PPL 29.54 (24.82 for `best/`, averaged the tutorial's
way; the tutorial reports 23.18); 10 epochs, 43:15 of training on a 2-core CPU.
Formerly `multi30k_seed` (that name still loads this config).
"""

from flax_attn.configs.common import apply_tiny, base_config, with_preset


def get_config(preset: str = ""):
  c = base_config()
  c.task = "multi30k"
  c.src_tokenizer = c.trg_tokenizer = "word"
  c.src_lang, c.trg_lang = "de", "en"   # Moses tokens (close to the tutorial's spaCy), detokenised output
  c.min_freq = 2
  c.lowercase = True
  c.max_src_len = c.max_trg_len = 64
  c.num_buckets = 4
  c.model.update(emb_dim=256, enc_hidden=512, dec_hidden=512, attn_dim=0, dropout=0.5,
                 init_std=0.01)
  c.batch_size = 128
  c.num_epochs = 10
  c.learning_rate = 1e-3
  c.schedule = "constant"
  c.clip_norm = 1.0
  c.teacher_forcing = 0.5
  c.log_every_steps = 50
  c.eval_every_steps = 227     # about one epoch (29,000 / 128)
  c.checkpoint_every_steps = 227
  c.eval_batch_size = 256
  c.decode.beam_size = 1
  c.final_eval_splits = ("val", "test", "test2017")
  c.best_metric = "free_running_ppl"
  c.heatmap_example = "ein mann mit einem orangefarbenen hut, der etwas anstarrt."
  return with_preset(c, preset, tiny)


def tiny(c) -> None:
  c.task_kwargs.max_examples = 256
  apply_tiny(c, steps=16, emb_dim=16, attn_dim=0)
  c.min_freq = 1
  c.max_src_len = c.max_trg_len = 24
