"""SIGTERM/SIGINT: one agreed step, one save, exit 75, exact resume; on one
process, during an evaluation, and in a 2-process jax.distributed job where
only ONE process gets the signal."""

import re
import shutil
import signal
import time

import pytest

from _runs import (ENV, assert_trees_equal, final_params, finish, metric_rows, run, spawn,
                   train_cmd, wait_for)

pytestmark = pytest.mark.slow  # several training processes, signals

EXIT_PREEMPTED = 75
# Slow enough steps (hidden 128) that a signal lands mid-training; a constant
# learning rate so that the total step count changes nothing but the end.
SLOW = ("--config.model.enc_hidden=128", "--config.model.dec_hidden=128",
        "--config.model.attn_dim=128", "--config.schedule=constant", "--config.warmup_steps=0",
        "--config.checkpoint_every_steps=10", "--config.eval_every_steps=100000",
        "--config.log_every_steps=5")


def _stopped_step(stderr: str) -> int:
  m = re.search(r"stopped by a signal at step (\d+)", stderr)
  assert m, stderr[-2000:]
  return int(m.group(1))


def test_sigterm_saves_exits_75_and_resumes_exactly(tmp_path):
  wd = tmp_path / "term"
  cmd = train_cmd(wd, *SLOW, "--config.num_train_steps=400")
  p = spawn(cmd)
  wait_for(lambda: (wd / "checkpoints/10").exists(), p, "the step-10 checkpoint")
  p.send_signal(signal.SIGTERM)
  _, err = finish(p)
  assert p.returncode == EXIT_PREEMPTED, err[-2000:]
  stop = _stopped_step(err)
  assert 10 <= stop < 400
  assert final_params(wd)[0] == stop  # the agreed step was saved
  final_len = stop + 10
  run(train_cmd(wd, *SLOW, f"--config.num_train_steps={final_len}"))
  ref = tmp_path / "ref"
  run(train_cmd(ref, *SLOW, f"--config.num_train_steps={final_len}"))
  (sa, a), (sb, b) = final_params(wd), final_params(ref)
  assert sa == sb == final_len
  assert_trees_equal(a, b)


def test_signal_during_evaluation_is_honoured_and_the_evaluation_redone(tmp_path):
  wd = tmp_path / "evalterm"
  cmd = train_cmd(wd, "--config.num_train_steps=30", "--config.eval_every_steps=20",
                  "--config.checkpoint_every_steps=10", "--config.log_every_steps=5",
                  "--config.task_kwargs.num_val=4000", "--config.eval_batch_size=8",
                  "--config.final_eval_splits=('test',)")
  p = spawn(cmd)
  wait_for(lambda: (wd / "metrics.jsonl").exists() and (20, "train") in metric_rows(wd), p,
           "the step-20 log row (the evaluation follows it)")
  t0 = time.time()
  p.send_signal(signal.SIGINT)  # Colab's "interrupt" is a SIGINT
  _, err = finish(p)
  waited = time.time() - t0
  assert p.returncode == EXIT_PREEMPTED, err[-2000:]
  assert _stopped_step(err) == 20
  assert waited < 15, f"took {waited:.1f} s to stop"
  from flax_attn.checkpoint import load_for_inference
  step, _, meta = load_for_inference(wd)
  assert step == 20 and meta["pending_eval"] is True
  assert (20, "val") not in metric_rows(wd)
  run(cmd)
  rows = metric_rows(wd)
  assert rows.count((20, "val")) == 1 and rows[-1] == (30, "summary")


def _two_process_cmds(wd, port, *overrides):
  return [train_cmd(wd, *SLOW, *overrides, f"--coordinator_address=localhost:{port}",
                    "--num_processes=2", f"--process_id={i}") for i in range(2)]


def _start(cmds):
  return [spawn(c, env={**ENV, "JAX_PLATFORMS": "cpu"}) for c in cmds]


def _finish(procs, expect):
  outs = []
  try:
    for p in procs:
      out, err = finish(p)
      assert p.returncode == expect, f"exit {p.returncode}\n{err[-3000:]}"
      outs.append((out, err))
  finally:
    for p in procs:  # never leave a peer of a failed process running
      if p.poll() is None:
        p.kill()
        p.wait()
  return outs


def test_two_processes_one_sigterm_both_stop_at_the_same_step(tmp_path):
  import portpicker
  wd = tmp_path / "pod"
  procs = _start(_two_process_cmds(wd, portpicker.pick_unused_port(),
                                   "--config.num_train_steps=3000"))
  wait_for(lambda: (wd / "checkpoints/10").exists(), procs[0], "the step-10 checkpoint")
  procs[1].send_signal(signal.SIGTERM)  # one host only
  outs = _finish(procs, EXIT_PREEMPTED)
  stops = [_stopped_step(err) for _, err in outs]
  assert stops[0] == stops[1] and 10 <= stops[0] < 3000
  stop = stops[0]
  assert final_params(wd)[0] == stop
  end = stop + 10
  # The same checkpoint also resumes on ONE process (with 2 devices): the data
  # position is a function of the step, not per-process iterator files.
  one = tmp_path / "one_process"
  shutil.copytree(wd, one)
  run(train_cmd(one, *SLOW, f"--config.num_train_steps={end}"),
      env={**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  _finish(_start(_two_process_cmds(wd, portpicker.pick_unused_port(),
                                   f"--config.num_train_steps={end}")), 0)
  ref = tmp_path / "ref"
  _finish(_start(_two_process_cmds(ref, portpicker.pick_unused_port(),
                                   f"--config.num_train_steps={end}")), 0)
  (sa, a), (sb, b) = final_params(wd), final_params(ref)
  assert sa == sb == end
  assert_trees_equal(a, b)
  sc, c = final_params(one)
  assert sc == end
  import jax
  import numpy as np
  for x, y in zip(jax.tree.leaves(c), jax.tree.leaves(b)):  # other reduction order: not bitwise
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
