"""reverse / sort: random token strings -> the same tokens reversed or sorted.

Used for attention sanity checks and tests; `reverse.py` and `sort.py` pick
the task.
"""

from flax_attn.configs.common import apply_tiny, base_config, with_preset


def synthetic_config(task: str, preset: str = ""):
  c = base_config()
  c.task = task
  c.task_kwargs.update(seed=0, num_train=20000, num_val=500, num_test=1000)
  c.src_tokenizer = c.trg_tokenizer = "whitespace"
  c.max_src_len = c.max_trg_len = 16
  c.num_buckets = 2
  c.model.update(emb_dim=32, enc_hidden=64, dec_hidden=64, attn_dim=64, dropout=0.0,
                 init_std=0.0)
  c.batch_size = 64
  c.num_train_steps = 2000
  c.learning_rate = 3e-3
  c.schedule = "cosine"
  c.warmup_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.heatmap_example = "a b c d e f g h"
  return with_preset(c, preset, tiny)


def tiny(c) -> None:
  c.task_kwargs.update(num_train=512, num_val=64, num_test=64)
  apply_tiny(c, steps=20)
