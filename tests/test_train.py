"""Training: pmap over 4 fake devices == 1 device, 2 processes, exact resume,
damaged checkpoints, config mismatch, non-finite steps."""

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flax_attn.config import Seq2SeqConfig
from flax_attn.input_pipeline import pad_batch

REPO = Path(__file__).resolve().parents[1]
CFG = Seq2SeqConfig(src_vocab_size=20, trg_vocab_size=18, emb_dim=8, enc_hidden=8, dec_hidden=8,
                    attn_dim=8, dropout=0.0, init_std=0.3)


def global_batch(seed: int, rows: int = 8, width: int = 6) -> dict:
  """A deterministic padded batch of mixed lengths (numpy only)."""
  rng = np.random.default_rng(seed)
  src = [rng.integers(4, 20, rng.integers(1, width)).astype(np.int32) for _ in range(rows)]
  trg = [rng.integers(4, 18, rng.integers(1, width - 1)).astype(np.int32) for _ in range(rows)]
  return pad_batch([np.append(s, 3) for s in src], trg, width, rows)


def _tree_close(a, b, **kw):
  import jax
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_pmap_4_devices_equals_1():
  import jax
  from flax_attn import parallel
  from flax_attn.optimizer import make_optimizer
  from flax_attn.train import create_train_state, train_step
  assert jax.local_device_count() == 4
  tx = make_optimizer(learning_rate=1e-2)
  state = create_train_state(CFG, tx, seed=0)
  step = parallel.pmap(functools.partial(train_step, model_config=CFG, tx=tx))
  results = {}
  for n in (1, 4):
    s = parallel.replicate(state, n)
    for i in range(2):
      s, m = step(s, parallel.shard(global_batch(i), n))
    results[n] = (parallel.unreplicate(s.params), parallel.unreplicate(m))
  _tree_close(results[1][0], results[4][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(results[1][1]["loss_sum"], results[4][1]["loss_sum"], rtol=1e-5)
  assert float(results[4][1]["weight_sum"]) == float(global_batch(1)["weights"].sum())
  # And the parameters did move.
  assert not np.allclose(results[4][0]["decoder"]["out_bias"], state.params["decoder"]["out_bias"])


def test_non_finite_step_is_rejected():
  import jax
  from flax_attn import parallel
  from flax_attn.optimizer import make_optimizer
  from flax_attn.train import create_train_state, train_step
  tx = make_optimizer(learning_rate=1e-2)
  state = create_train_state(CFG, tx, seed=0)
  bad = state.replace(params=jax.tree.map(lambda x: x, state.params))
  bad.params["decoder"]["out_bias"] = bad.params["decoder"]["out_bias"].at[0].set(np.nan)
  step = parallel.pmap(functools.partial(train_step, model_config=CFG, tx=tx))
  new, m = step(parallel.replicate(bad, 1), parallel.shard(global_batch(0), 1))
  assert not bool(m["ok"][0])
  assert int(new.step[0]) == 0
  _tree_close(parallel.unreplicate(new.opt_state), bad.opt_state)


def test_two_processes_identical(tmp_path):
  import portpicker
  port = portpicker.pick_unused_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  procs = [subprocess.Popen([sys.executable, str(REPO / "tests/_distributed_worker.py"),
                             f"localhost:{port}", "2", str(i), str(tmp_path / f"p{i}.npz")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out.decode()[-3000:]
  a, b = (np.load(tmp_path / f"p{i}.npz") for i in range(2))
  assert sorted(a.files) == sorted(b.files) and len(a.files) > 5
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k])
  # And the 2-process run equals one process with 2 devices on the same global batches.
  from flax_attn import parallel
  from flax_attn.optimizer import make_optimizer
  from flax_attn.train import create_train_state, train_step
  tx = make_optimizer(learning_rate=1e-2)
  s = parallel.replicate(create_train_state(CFG, tx, seed=0), 2)
  step = parallel.pmap(functools.partial(train_step, model_config=CFG, tx=tx))
  for i in range(3):
    s, _ = step(s, parallel.shard(global_batch(i), 2))
  ref = parallel.unreplicate(s.params)
  np.testing.assert_allclose(a["decoder/out_kernel"], ref["decoder"]["out_kernel"], rtol=1e-5,
                             atol=1e-6)


# ---- end to end through experiments/train.py ---------------------------------------------

def _train_cmd(workdir, *overrides):
  return [sys.executable, str(REPO / "experiments/train.py"),
          f"--config={REPO / 'experiments/configs/dates.py'}:tiny", f"--workdir={workdir}",
          *overrides]


_ENV = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": str(REPO)}


def _run(cmd):
  p = subprocess.run(cmd, env=_ENV, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return p


def _final_params(workdir):
  from flax_attn.checkpoint import load_for_inference
  step, params, _ = load_for_inference(workdir)
  return step, params


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("full")
  _run(_train_cmd(wd, "--config.num_train_steps=40", "--config.checkpoint_every_steps=10",
                  "--config.eval_every_steps=20"))
  return wd


def test_relative_paths_load(full_run, monkeypatch):
  from flax_attn import Translator
  monkeypatch.chdir(full_run.parent)
  assert Translator.load(full_run.name).step == 40


def test_tiny_run_writes_everything(full_run):
  for name in ("metrics.jsonl", "curves.png", "attention.png", "val.hyp.txt", "test.hyp.txt"):
    assert (full_run / name).exists(), name
  from flax_attn import Translator
  t = Translator.load(full_run)
  assert t.step == 40
  out = t.translate(["3 march 1998", "", "tuesday, 3 march 1998"])
  assert len(out) == 3 and out[1] == ""
  with pytest.raises(TypeError, match="sentence 1"):
    t.translate(["a", None])


def test_exact_resume_after_sigkill(full_run, tmp_path):
  wd = tmp_path / "killed"
  cmd = _train_cmd(wd, "--config.num_train_steps=40", "--config.checkpoint_every_steps=10",
                   "--config.eval_every_steps=20")
  p = subprocess.Popen(cmd, env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (wd / "checkpoints/20/meta").exists():
    assert p.poll() is None and time.time() < deadline, "run ended before its step-20 checkpoint"
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  _run(cmd)
  step_a, a = _final_params(full_run)
  step_b, b = _final_params(wd)
  assert step_a == step_b == 40
  import jax
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_damaged_latest_checkpoint_falls_back(full_run, tmp_path):
  wd = tmp_path / "damaged"
  shutil.copytree(full_run, wd)
  latest = wd / "checkpoints/40/state"
  for f in latest.rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  import jax
  from flax_attn import checkpoint as ckpt_lib
  from flax_attn.input_pipeline import TrainBatches, train_iterator
  from flax_attn.optimizer import make_optimizer
  from flax_attn.train import create_train_state
  _, _, meta = ckpt_lib.load_for_inference(full_run)
  cfg = Seq2SeqConfig.from_dict(meta["model_config"])
  tx = make_optimizer()
  state = create_train_state(cfg, tx, 0)
  ckpts = ckpt_lib.Checkpoints(wd, keep=3)
  it = train_iterator(TrainBatches([np.array([3], np.int32)], [np.array([4], np.int32)], 1, (4,), 0))
  restored = ckpts.restore_latest(jax.eval_shape(lambda: state), it)
  ckpts.close()
  assert restored is not None and restored[0] == 30


def test_other_model_config_fails_clearly(full_run, tmp_path):
  wd = tmp_path / "other"
  shutil.copytree(full_run, wd)
  p = subprocess.run(_train_cmd(wd, "--config.num_train_steps=50", "--config.model.emb_dim=12"),
                     env=_ENV, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2
  assert "different model" in p.stderr and "emb_dim" in p.stderr
  assert "Traceback" not in p.stderr


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  wd = tmp_path / "term"
  cmd = _train_cmd(wd, "--config.num_train_steps=400", "--config.checkpoint_every_steps=10",
                   "--config.eval_every_steps=1000")
  p = subprocess.Popen(cmd, env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (wd / "checkpoints/10/meta").exists():
    assert p.poll() is None and time.time() < deadline
    time.sleep(0.05)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 0, err[-2000:]
  steps = sorted(int(d.name) for d in (wd / "checkpoints").iterdir() if d.name.isdigit())
  assert steps and steps[-1] < 400
  # The newest checkpoint is the step the signal stopped at (not only a periodic one).
  from flax_attn.checkpoint import load_for_inference
  assert load_for_inference(wd)[0] == steps[-1]


def test_plateau_reduces_scale():
  from flax_attn.optimizer import Plateau
  p = Plateau(factor=0.5, patience=1)
  scales = [p.update(v) for v in (3.0, 2.0, 2.0, 2.0, 1.0, 1.5, 1.5)]
  assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
