"""Helpers for tests that run `experiments/*.py` as subprocesses."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The repo first, then whatever PYTHONPATH the tests were given (dependencies
# installed with `pip --target`, say, as on a machine with no pip install -e).
# Child processes share one JAX compilation cache per test session (both
# xdist workers: the folder is named by the run's id), so the many small
# `dates:tiny` runs compile each step once, not once per process: a cached
# executable is the same program, so no figure changes. Tests of compile
# counts or timings pass `NO_CACHE` instead.
# (conftest names the run and removes the folder at the end.)


def compile_cache_dir(run_id: str) -> str:
  return os.path.join(tempfile.gettempdir(), f"flax_attn_tests_jax_cache_{run_id}")


COMPILE_CACHE = compile_cache_dir(os.environ.get("PYTEST_XDIST_TESTRUNUID")
                                  or os.environ.get("FLAX_ATTN_TEST_RUN") or str(os.getpid()))
ENV = {**os.environ, "XLA_FLAGS": "", "FLAX_ATTN_COMPILATION_CACHE": COMPILE_CACHE,
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
NO_CACHE = {**ENV, "FLAX_ATTN_COMPILATION_CACHE": "off"}
# How long a child process may take before a test calls it hung. Generous on
# purpose: a CI machine has run this suite 4x slower than a development one
# (a tiny g2p run took 71 s here and over 300 s there), and a slow machine is
# not a failure; a hang still ends, well inside CI's own limit.
TIMEOUT = 1200
# The small dates run most tests share: 40 steps, checkpoints every 10.
DATES_40 = ("--config.num_train_steps=40", "--config.checkpoint_every_steps=10",
            "--config.eval_every_steps=20")


def train_cmd(workdir, *overrides, config="dates.py:tiny"):
  return [sys.executable, str(REPO / "experiments/train.py"),
          f"--config={REPO / 'experiments/configs' / config}", f"--workdir={workdir}", *overrides]


def run(cmd, env=None, expect=0, stdin=None, timeout=TIMEOUT):
  p = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=timeout,
                     input=stdin)
  assert p.returncode == expect, f"exit {p.returncode}, expected {expect}\n{p.stderr[-3000:]}"
  return p


def wait_for(predicate, proc, what: str, timeout: float = TIMEOUT):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, f"process ended ({proc.returncode}) before {what}"
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.05)


def kill_after(cmd, predicate, what: str, sig=signal.SIGKILL, env=None):
  """Starts `cmd`, sends `sig` once `predicate()` holds; returns (proc, stderr).
  (stderr goes to a file: a pipe nobody reads would block a chatty child.)"""
  import tempfile
  with tempfile.TemporaryFile("w+") as err:
    p = subprocess.Popen(cmd, env=env or ENV, stdout=subprocess.DEVNULL, stderr=err, text=True)
    wait_for(predicate, p, what)
    p.send_signal(sig)
    p.wait(timeout=TIMEOUT)
    err.seek(0)
    return p, err.read()


def final_params(workdir):
  from flax_attn.checkpoint import load_for_inference
  step, params, _ = load_for_inference(workdir)
  return step, params


def assert_trees_equal(a, b):
  import jax
  import numpy as np
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def metric_rows(workdir):
  """(step, split) of every metrics.jsonl row, in order."""
  import json
  from flax_attn import paths
  text = paths.read_text(paths.as_path(workdir) / "metrics.jsonl")
  return [(r["step"], r["split"]) for r in map(json.loads, text.splitlines()) if r]


def spawn(cmd, env=None):
  """Starts `cmd` with stdout and stderr in temporary files (never a pipe
  that could fill up); `finish(p)` waits and returns (stdout, stderr)."""
  import tempfile
  out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
  p = subprocess.Popen(cmd, env=env or ENV, stdout=out, stderr=err, text=True)
  p.files = (out, err)
  return p


def finish(p, timeout=TIMEOUT):
  """Waits for `p`; on a timeout, asks it for its Python stacks (train.py
  dumps them on SIGUSR1), kills it and fails with its stderr, so a hang
  shows where it hangs."""
  try:
    p.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    p.send_signal(signal.SIGUSR1)
    time.sleep(3)
    p.kill()
    p.wait()
    p.files[1].seek(0)
    raise AssertionError(f"{p.args} still running after {timeout} s; its stderr "
                         f"(stacks at the end):\n{p.files[1].read()[-12000:]}") from None
  texts = []
  for f in p.files:
    f.seek(0)
    texts.append(f.read())
    f.close()
  return tuple(texts)


def cli_cases(tool: str, cases: list[list[str]], tmp_dir, env=None) -> list[tuple[int, str, str]]:
  """(exit code, stdout, stderr) of `flax_attn.cli.<tool>` on each argument
  list, all in one process (`_cli_cases.py`)."""
  import json
  cases_file = Path(tmp_dir) / f"{tool}_cases.json"
  cases_file.write_text(json.dumps(cases))
  p = subprocess.run([sys.executable, str(REPO / "tests/_cli_cases.py"), tool, str(cases_file)],
                     env=env or ENV, capture_output=True, text=True, timeout=TIMEOUT,
                     stdin=subprocess.DEVNULL)
  assert p.returncode == 0, p.stderr[-3000:]
  return [tuple(r) for r in json.loads(p.stdout.strip().splitlines()[-1])]
