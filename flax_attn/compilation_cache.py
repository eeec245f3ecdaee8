"""JAX's persistent compilation cache, on by default for the command-line tools.

A second `train.py`, `evaluate.py` or `translate.py` of the same model loads
its compiled steps from disk instead of compiling them again. Where:
`$FLAX_ATTN_COMPILATION_CACHE` (a folder, or `off` to disable), else
`$JAX_COMPILATION_CACHE_DIR` if you set JAX's own, else
`$XDG_CACHE_HOME/flax_attn/jax` (`~/.cache/flax_attn/jax`). Library users
(`import flax_attn`) are not affected: only the CLIs call `enable()`.
"""

from __future__ import annotations

import os

import jax

ENV = "FLAX_ATTN_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no", "")


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "flax_attn", "jax")


def enable() -> str | None:
  """Points JAX's persistent compilation cache at the folder above; returns
  it, or None when `$FLAX_ATTN_COMPILATION_CACHE` is `off`."""
  value = os.environ.get(ENV)
  if value is not None and value.strip().lower() in OFF:
    return None
  path = value or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()
  jax.config.update("jax_compilation_cache_dir", path)
  return path
