"""dates: human-readable dates in many formats -> ISO 8601 (the default experiment).

Presets: "" (the README's run) and "tiny" (tests, smoke runs). Greedy decoding.

Reaches (experiments/results/LOG.md): 100.0 % exact match on 2,000 held-out
dates (val 100 %; 99.9 % on an earlier VM), 1,500 steps, about 1 min 15 s on a
quiet 2-core CPU.
"""

from flax_attn.configs.common import apply_tiny, base_config, with_preset


def get_config(preset: str = ""):
  c = base_config()
  c.task = "dates"
  c.task_kwargs.seed = 0
  c.task_kwargs.num_train = 20000
  c.task_kwargs.num_val = 500
  c.task_kwargs.num_test = 2000
  c.src_tokenizer = c.trg_tokenizer = "char"
  c.lowercase = True
  c.max_src_len, c.max_trg_len = 40, 12
  c.num_buckets = 3
  c.model.update(emb_dim=32, enc_hidden=64, dec_hidden=64, attn_dim=64, dropout=0.0,
                 init_std=0.0)
  c.batch_size = 64
  c.num_train_steps = 1500
  c.learning_rate = 3e-3
  c.schedule = "cosine"
  c.warmup_steps = 50
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.heatmap_example = "tuesday, 3 march 1998"
  return with_preset(c, preset, tiny)


def tiny(c) -> None:
  c.task_kwargs.update(num_train=512, num_val=64, num_test=64)
  apply_tiny(c, steps=20)
