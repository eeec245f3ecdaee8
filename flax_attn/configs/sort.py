"""sort: random token strings -> the same tokens sorted (see synthetic.py)."""

from flax_attn.configs.synthetic import synthetic_config


def get_config(preset: str = ""):
  return synthetic_config("sort", preset)
