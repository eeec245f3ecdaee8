"""reverse: random token strings -> the same tokens reversed (see synthetic.py)."""

from flax_attn.configs.synthetic import synthetic_config


def get_config(preset: str = ""):
  return synthetic_config("reverse", preset)
