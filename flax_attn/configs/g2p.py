"""g2p: English grapheme-to-phoneme on CMUdict (stress stripped; our hash split).

A 2-layer bidirectional encoder, GRUs of 256, embedding dropout 0.2, label
smoothing 0.1, warmup + cosine over 18 epochs; beam 5, alpha 0.6.

Reaches (experiments/results/LOG.md, 2026-12-06): test WER 22.94 %, PER 5.49 %
(val 23.42 % / 5.43 %) over 6,243 words; a word counts as right when it equals
any of its dictionary pronunciations (PER: the closest one); 18 epochs, 15,822 steps, 56:53 of
training on a quiet 2-core CPU.
"""

from flax_attn.configs.common import apply_tiny, base_config, with_preset


def get_config(preset: str = ""):
  c = base_config()
  c.task = "g2p"
  c.task_kwargs.keep_stress = False
  c.src_tokenizer = "char"
  c.trg_tokenizer = "whitespace"
  c.lowercase = True
  c.max_src_len = c.max_trg_len = 36
  c.num_buckets = 4
  c.model.update(emb_dim=128, enc_hidden=256, dec_hidden=256, attn_dim=0, dropout=0.2,
                 enc_layers=2, init_std=0.0)
  c.batch_size = 128
  c.num_epochs = 18           # about 45 min on a quiet 2-core CPU (2 h with heavy steal)
  c.label_smoothing = 0.1
  c.learning_rate = 2e-3
  c.schedule = "cosine"
  c.warmup_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.eval_max_examples = 2000
  c.decode.beam_size = 5
  c.heatmap_example = "attention"
  return with_preset(c, preset, tiny)


def tiny(c) -> None:
  c.task_kwargs.max_examples = 512
  apply_tiny(c, steps=16, emb_dim=16, attn_dim=0)
  c.decode.beam_size = 2
