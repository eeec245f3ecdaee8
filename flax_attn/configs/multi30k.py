"""multi30k: German->English Multi30k, our best configuration.

Cased SentencePiece BPE (separate German and English models of 3,000 pieces
each, byte fallback: no `<unk>` in the output, which is ordinary detokenised
text), GRUs of 512 as in the tutorial, full teacher forcing (the fast hoisted
path), dropout 0.4 on the embeddings and 0.3 on `[s; c]` before the output
layer (`out_dropout`), label smoothing 0.1, Glorot init, a warmup + cosine
schedule over 16 epochs, 8 length buckets, seed 1; decoding with beam 10 and
length penalty alpha 1.0 (the best of beam 5/10 x alpha 0.6/1.0 on val), in the
final evaluation and by default in evaluate.py / translate.py. `best/` is the
epoch with the highest validation BLEU (lower-cased, greedy).
`multi30k_tutorial` keeps the tutorial's own settings (lower-cased words).

Reaches (experiments/results/LOG.md, 2026-12-06): test2016 lower-cased
sacreBLEU 40.43 (cased 40.22, chrF 59.07), greedy 38.26; val 41.11; test2017
34.94. 16 epochs, 3,696 steps, 79:39 wall for the whole command on a quiet
2-core CPU (an AMD EPYC VM). Another CPU takes another floating-point path:
expect figures within seed noise (two seeds: 0.3 BLEU apart on test2016 with
beam, 0.5 greedy).
"""

from flax_attn.configs import multi30k_tutorial
from flax_attn.configs.common import with_preset


def get_config(preset: str = ""):
  c = multi30k_tutorial.get_config("")
  c.src_tokenizer = c.trg_tokenizer = "sentencepiece"
  c.src_lang = c.trg_lang = ""
  c.lowercase = False
  c.sp_vocab_size = 3000      # chosen on val against 4,000 and 6,000 (LOG.md)
  c.sp_model_type = "bpe"
  c.sp_joint = False
  c.sp_byte_fallback = True
  c.model.update(enc_hidden=512, dec_hidden=512, dropout=0.4, out_dropout=0.3, init_std=0.0)
  c.best_metric = ""          # the task's metric, not multi30k_tutorial's free-running PPL
  c.teacher_forcing = 1.0
  c.label_smoothing = 0.1
  c.learning_rate = 1e-3
  c.schedule = "cosine"
  c.warmup_steps = 400
  c.num_epochs = 16
  c.decode.update(beam_size=10, alpha=1.0)  # the best setting on val (LOG.md)
  c.num_buckets = 8          # 10 % fewer padded tokens than 4: fits 90 min here (LOG.md)
  c.seed = 1                 # chosen on val against seed 0 (LOG.md)
  c.heatmap_example = "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."
  return with_preset(c, preset, tiny)


def tiny(c) -> None:
  multi30k_tutorial.tiny(c)
  c.sp_vocab_size = 400   # byte fallback needs 260 pieces plus the characters
