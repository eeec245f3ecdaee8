"""Test setup: 4 fake CPU devices (before any JAX op) and shared helpers."""

import os
import sys

import chex
import pytest

chex.set_n_cpu_devices(4)

# Make `tests.torch_seq2seq` importable as `torch_seq2seq` from every test file.
sys.path.insert(0, os.path.dirname(__file__))

REQUIRE_TORCH_ENV = "FLAX_ATTN_REQUIRE_TORCH"


def require_torch():
  """`import torch` for the parity tests: skips the calling module when torch
  is missing, unless `FLAX_ATTN_REQUIRE_TORCH=1` (CI), where that is a failure.

  Use at module level: `torch = require_torch()` (after `from conftest import
  require_torch`).
  """
  if os.environ.get(REQUIRE_TORCH_ENV) == "1":
    try:
      import torch
    except ImportError as e:
      pytest.fail(f"{REQUIRE_TORCH_ENV}=1 but torch cannot be imported ({e}); "
                  "install it (pip install -e '.[torch]') or unset the variable", pytrace=False)
    return torch
  return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def dates_run(tmp_path_factory):
  """An uninterrupted local `dates:tiny` run of 40 steps (checkpoints at
  10, 20, 30, 40), shared by the resume, restore and storage tests."""
  from _runs import DATES_40, run, train_cmd
  wd = tmp_path_factory.mktemp("dates40") / "run"
  run(train_cmd(wd, *DATES_40))
  return wd
