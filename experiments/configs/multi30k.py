"""multi30k: German->English Multi30k, our best configuration.

Differences from `multi30k_seed` (the tutorial): GRUs of 256 instead of 512
(about twice as fast on a CPU), full teacher forcing (the fast hoisted path),
dropout 0.3, label smoothing 0.1, Glorot init, a warmup + cosine schedule, and
beam search (5) in the final evaluation.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import multi30k_seed  # noqa: E402


def get_config(preset: str = ""):
  c = multi30k_seed.get_config("")
  c.model.update(enc_hidden=256, dec_hidden=256, dropout=0.3, init_std=0.0)
  c.teacher_forcing = 1.0
  c.label_smoothing = 0.1
  c.learning_rate = 2e-3
  c.schedule = "cosine"
  c.warmup_steps = 200
  c.num_epochs = 8
  c.beam_size = 5
  if preset == "tiny":
    multi30k_seed._tiny(c)
  elif preset:
    raise ValueError(f"unknown preset {preset!r} (use '' or 'tiny')")
  return c
