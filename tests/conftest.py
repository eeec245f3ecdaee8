"""Test setup: 4 fake CPU devices (before any JAX op) and shared helpers."""

import os
import shutil
import sys
import uuid

import chex
import jax
import pytest

chex.set_n_cpu_devices(4)
# The parity tests compare float32 arithmetic with PyTorch's to 1e-5. On a GPU
# jax's default float32 matmul is TF32 (a 1024^3 product off by 2.8e-4 relative
# on an H200, and the tutorial model's loss by 3.3e-5: those tests failed there),
# on a TPU it is one bfloat16 pass; "highest" is true float32 everywhere and
# changes nothing on the CPU (experiments/results/gpu_h200/, TPU_SETUP.md).
jax.config.update("jax_default_matmul_precision", "highest")

# Make the test helpers (`_runs`, `conftest.require_torch`) importable by name
# from every test file, whatever pytest's import mode (the PyTorch reference
# models live in the package: `from flax_attn.reference import torch_seq2seq`).
sys.path.insert(0, os.path.dirname(__file__))

REQUIRE_TORCH_ENV = "FLAX_ATTN_REQUIRE_TORCH"


def pytest_configure(config):
  """Names this test run (shared with the xdist workers), which names the
  compilation cache its child processes share (`_runs.ENV`)."""
  if hasattr(config, "workerinput"):
    return
  run_id = getattr(config.option, "testrunuid", None) or uuid.uuid4().hex
  if hasattr(config.option, "testrunuid"):
    config.option.testrunuid = run_id
  os.environ["FLAX_ATTN_TEST_RUN"] = run_id


def pytest_unconfigure(config):
  if not hasattr(config, "workerinput"):
    from _runs import compile_cache_dir
    shutil.rmtree(compile_cache_dir(os.environ.get("FLAX_ATTN_TEST_RUN", "")), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """A test that needs a trained run (the `dates_run` fixture, ~40 s once per
  worker) belongs to the slow tier even without its own mark."""
  for item in items:
    if "dates_run" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.slow)


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
