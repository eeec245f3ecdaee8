"""reverse: random token strings -> the same tokens reversed (see synthetic.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from synthetic import synthetic_config  # noqa: E402


def get_config(preset: str = ""):
  return synthetic_config("reverse", preset)
