"""The published experiment configs, by name, and the one loader for them.

Each module here (`dates`, `g2p`, `multi30k`, ...) has `get_config(preset="")`
returning an `ml_collections.ConfigDict`; `common.base_config()` is the one
place that holds every field's default. `load("multi30k:tiny")` or
`load("path/to/my_config.py:tiny")` gives a config the same way the command
lines (`flax-attn-train --config multi30k`) and the tests and benchmarks do.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

import ml_collections

_NOT_CONFIGS = ("common", "synthetic")


def names() -> list[str]:
  """The published configs' names (`multi30k`, `g2p`, ...)."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if m.name not in _NOT_CONFIGS and not m.name.startswith("_"))


def path_of(name: str) -> str:
  """The file of published config `name` (what `ml_collections`' config
  flags load). Raises ValueError naming the configs for an unknown name."""
  if name not in names():
    raise ValueError(f"unknown config {name!r}; use a file or one of: {', '.join(names())}")
  return os.path.join(os.path.dirname(__file__), f"{name}.py")


def resolve(spec: str) -> str:
  """`spec` as a file path: a published config's name (with an optional
  `:preset`) becomes its file; a path is returned as it is."""
  name, sep, preset = spec.partition(":")
  if name.endswith(".py") or os.sep in name or os.path.exists(name):
    return spec
  return path_of(name) + sep + preset


def load(spec: str) -> ml_collections.ConfigDict:
  """The config `spec` names: `NAME[:preset]` (a published config) or
  `FILE.py[:preset]` (any file with `get_config(preset)`)."""
  path, _, preset = resolve(spec).partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      f"_flax_attn_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset)


def defaults() -> ml_collections.ConfigDict:
  """Every experiment field with its default (`common.base_config`)."""
  return importlib.import_module("flax_attn.configs.common").base_config()
