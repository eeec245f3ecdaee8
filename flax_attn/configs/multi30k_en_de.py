"""multi30k_en_de: English->German Multi30k, the `multi30k` config turned round.

Every setting is `multi30k`'s (chosen on the de->en validation set): cased
SentencePiece BPE of 3,000 pieces per language with byte fallback, GRUs of
512, dropout 0.4 / out_dropout 0.3, label smoothing 0.1, warmup + cosine over
16 epochs, 8 length buckets. The last 10 epoch checkpoints are kept, so that
they can be averaged (`experiments/export.py --average_last`).
"""

from flax_attn.configs import multi30k


def get_config(preset: str = ""):
  c = multi30k.get_config(preset)
  c.task_kwargs.src_lang, c.task_kwargs.trg_lang = "en", "de"
  c.keep_checkpoints = 10 if not preset else c.keep_checkpoints
  c.heatmap_example = "A man in an orange hat starring at something."
  return c
