"""Training: pmap over 4 fake devices == 1 device, 2 processes, exact resume,
damaged checkpoints, config mismatch, non-finite steps."""

import functools
import signal
import subprocess
import sys
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


@pytest.mark.slow
def test_pmap_4_devices_equals_1():
  import jax
  from flax_attn import parallel
  from flax_attn.optimizer import make_optimizer
  from flax_attn.steps import create_train_state, train_step
  if jax.default_backend() != "cpu" and jax.local_device_count() < 4:
    pytest.skip(f"needs 4 local devices; this {jax.default_backend()} has "
                f"{jax.local_device_count()} (on the CPU, conftest makes 4)")
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
  from flax_attn.steps import create_train_state, train_step
  tx = make_optimizer(learning_rate=1e-2)
  state = create_train_state(CFG, tx, seed=0)
  bad = state.replace(params=jax.tree.map(lambda x: x, state.params))
  bad.params["decoder"]["out_bias"] = bad.params["decoder"]["out_bias"].at[0].set(np.nan)
  step = parallel.pmap(functools.partial(train_step, model_config=CFG, tx=tx))
  new, m = step(parallel.replicate(bad, 1), parallel.shard(global_batch(0), 1))
  assert not bool(m["ok"][0])
  assert int(new.step[0]) == 1  # the batch is skipped, the step counter moves on
  _tree_close(parallel.unreplicate(new.opt_state), bad.opt_state)
  _tree_close(parallel.unreplicate(new.params), bad.params)


def test_rejections_are_counted_and_a_streak_stops():
  import jax.numpy as jnp
  from flax_attn.steps import accumulate, init_metrics
  acc = init_metrics()
  good = {"loss_sum": jnp.float32(2.0), "nll_sum": jnp.float32(1.5), "weight_sum": jnp.float32(4.0),
          "grad_norm": jnp.float32(0.5), "ok": jnp.bool_(True)}
  bad = {**{k: jnp.float32(jnp.nan) for k in good}, "ok": jnp.bool_(False)}
  for step, m in enumerate([good, bad, bad, good, bad, bad, bad, good], start=1):
    acc = accumulate(acc, m, jnp.int32(step), max_nonfinite=3)
  assert float(acc["loss_sum"]) == 6.0 and float(acc["weight_sum"]) == 12.0  # NaNs left out
  assert int(acc["steps"]) == 3 and int(acc["rejected"]) == 5
  assert int(acc["stop_step"]) == 7  # the third rejection in a row
  assert int(acc["streak"]) == 0


@pytest.mark.slow
def test_two_processes_identical(tmp_path):
  import portpicker
  port = portpicker.pick_unused_port()
  env = {**ENV, "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, str(REPO / "tests/_distributed_worker.py"),
                             f"localhost:{port}", "2", str(i), str(tmp_path / f"p{i}.npz")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, out.decode()[-3000:]
  a, b = (np.load(tmp_path / f"p{i}.npz") for i in range(2))
  assert sorted(a.files) == sorted(b.files) and len(a.files) > 5
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k])
  # And the 2-process run equals one process with 2 devices on the same global batches.
  from flax_attn import parallel
  from flax_attn.optimizer import make_optimizer
  from flax_attn.steps import create_train_state, train_step
  tx = make_optimizer(learning_rate=1e-2)
  s = parallel.replicate(create_train_state(CFG, tx, seed=0), 2)
  step = parallel.pmap(functools.partial(train_step, model_config=CFG, tx=tx))
  for i in range(3):
    s, _ = step(s, parallel.shard(global_batch(i), 2))
  ref = parallel.unreplicate(s.params)
  np.testing.assert_allclose(a["decoder/out_kernel"], ref["decoder"]["out_kernel"], rtol=1e-5,
                             atol=1e-6)


# ---- end to end through experiments/train.py ---------------------------------------------

from _runs import (DATES_40, ENV, TIMEOUT, assert_trees_equal, final_params, kill_after,  # noqa: E402
                   metric_rows, run, train_cmd)


def test_relative_paths_load(dates_run, monkeypatch):
  from flax_attn import Translator
  monkeypatch.chdir(dates_run.parent)
  assert Translator.load(dates_run.name).step == 40


def test_tiny_run_writes_everything(dates_run):
  for name in ("metrics.jsonl", "curves.png", "attention.png", "val.hyp.txt", "test.hyp.txt"):
    assert (dates_run / name).exists(), name
  from flax_attn import Translator
  t = Translator.load(dates_run)
  assert t.step == 40
  out = t.translate(["3 march 1998", "", "tuesday, 3 march 1998"])
  assert len(out) == 3 and out[1] == ""
  with pytest.raises(TypeError, match="sentence 1"):
    t.translate(["a", None])


def test_the_run_reports_where_its_time_went(dates_run):
  """metrics.jsonl's summary row splits the run's wall time into phases that
  add up to the total, with the train step's compile time per bucket width."""
  import json
  rows = [json.loads(x) for x in (dates_run / "metrics.jsonl").read_text().splitlines()]
  summary = [r for r in rows if r.get("split") == "summary"][-1]
  t = summary["time"]
  assert {"data", "tokenizers", "setup", "compile_train_step", "train_steps", "eval",
          "checkpoint", "final_eval", "figures", "other", "total"} <= set(t)
  phases = {k: v for k, v in t.items() if k not in ("total", "compile_by_width")}
  assert abs(sum(phases.values()) - t["total"]) < 0.1
  assert all(v >= 0 for k, v in phases.items() if k != "other") and t["train_steps"] > 0
  widths = t["compile_by_width"]
  assert len(widths) == summary["train_compiles"] and set(map(int, widths)) <= set(summary["buckets"])
  assert sum(widths.values()) == pytest.approx(t["compile_train_step"], abs=0.05)


def test_exact_resume_after_sigkill_without_duplicate_rows(dates_run, tmp_path):
  wd = tmp_path / "killed"
  cmd = train_cmd(wd, *DATES_40)
  p, _ = kill_after(cmd, lambda: (wd / "checkpoints/30").exists(), "the step-30 checkpoint")
  assert p.returncode == -signal.SIGKILL
  run(cmd)
  step_a, a = final_params(dates_run)
  step_b, b = final_params(wd)
  assert step_a == step_b == 40
  assert_trees_equal(a, b)
  # metrics.jsonl: the rows logged after step 30 before the kill are not repeated.
  assert metric_rows(wd) == metric_rows(dates_run)


BAD_CONFIGS = [
    ("--config.eval_batch_size=30", "eval_batch_size=30 must be a multiple of the 4 devices"),
    ("--config.batch_size=30", "batch_size=30 must be a multiple of the 4 devices"),
    ("--config.eval_every_steps=0", "eval_every_steps must be an integer >= 1"),
    ("--config.log_every_steps=0", "log_every_steps must be an integer >= 1"),
    ("--config.max_trg_len=1", "max_trg_len must be >= 2"),
    ("--config.final_eval_splits=('val','nope')", "final_eval_splits ['nope']"),
    ("--config.best_metric=bleu", "best_metric must be one of"),
    ("--config.model.out_dropout=1.0", "model.out_dropout must be in [0, 1), got 1.0"),
    ("--config.model.memory_dropout=-0.1", "model.memory_dropout must be in [0, 1), got -0.1"),
]


@pytest.fixture(scope="module")
def bad_config_runs(tmp_path_factory):
  """train.py on each bad config, in one process with 4 CPU devices."""
  from _runs import cli_cases
  tmp = tmp_path_factory.mktemp("bad_configs")
  env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  cases = [[f"--config={REPO / 'experiments/configs/dates.py'}:tiny",
            f"--workdir={tmp / str(i)}", override] for i, (override, _) in enumerate(BAD_CONFIGS)]
  return tmp, cli_cases("train", cases, tmp, env=env)


@pytest.mark.parametrize("i", range(len(BAD_CONFIGS)), ids=[m for _, m in BAD_CONFIGS])
def test_bad_config_fails_before_training(bad_config_runs, i):
  tmp, results = bad_config_runs
  rc, _, stderr = results[i]
  assert rc == 2 and BAD_CONFIGS[i][1] in stderr and "Traceback" not in stderr, stderr[-3000:]
  assert not (tmp / str(i) / "checkpoints").exists()


def test_a_bad_config_in_a_process_of_its_own(tmp_path):
  p = run(train_cmd(tmp_path / "wd", "--config.batch_size=0"), expect=2)
  assert p.stderr.startswith("error: config: batch_size must be an integer >= 1")
  assert "Traceback" not in p.stderr and not (tmp_path / "wd" / "checkpoints").exists()


def test_plateau_reduces_scale():
  from flax_attn.optimizer import Plateau
  p = Plateau(factor=0.5, patience=1)
  scales = [p.update(v) for v in (3.0, 2.0, 2.0, 2.0, 1.0, 1.5, 1.5)]
  assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


@pytest.mark.slow
def test_nonfinite_streak_stops_the_run_with_exit_1(tmp_path):
  """A learning rate of 1e30 blows the parameters up after the first step;
  the following steps are rejected (counted in metrics.jsonl) until
  `max_nonfinite_steps` in a row stop the run."""
  import json
  wd = tmp_path / "nan"
  p = run(train_cmd(wd, "--config.num_train_steps=40", "--config.learning_rate=1e30",
                    "--config.schedule=constant", "--config.warmup_steps=0",
                    "--config.max_nonfinite_steps=3", "--config.log_every_steps=2"), expect=1)
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: 3 consecutive steps had a non-finite loss") and "Traceback" not in p.stderr
  rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
  assert sum(r.get("rejected_steps", 0) for r in rows) >= 1


@pytest.mark.slow
def test_best_by_free_running_ppl_also_after_resuming_a_run_that_chose_by_another(
    dates_run, tmp_path):
  """`best_metric=free_running_ppl`: every validation measures the free-running
  perplexity and `best/` holds the step where it was lowest. The resumed run
  chose by exact match before; its checkpoints, which lack the new metric,
  rank last instead of breaking the next save."""
  import json
  import shutil
  wd = tmp_path / "run"
  shutil.copytree(dates_run, wd)
  run(train_cmd(wd, "--config.num_train_steps=60", "--config.eval_every_steps=10",
                "--config.checkpoint_every_steps=10", "--config.best_metric=free_running_ppl"))
  rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
  val = {r["step"]: r["free_running_ppl"] for r in rows
         if r.get("split") == "val" and not r.get("final") and r["step"] > 40}
  assert sorted(val) == [50, 60]
  assert all("free_running_ppl" not in r for r in rows
             if r.get("split") == "val" and not r.get("final") and r["step"] <= 40)
  best = [int(d.name) for d in (wd / "best").iterdir() if d.name.isdigit()]
  assert best == [min(val, key=val.get)]


def _dates_config(preset: str = "tiny"):
  from flax_attn import configs
  return configs.load(f"dates:{preset}")


@pytest.mark.slow
def test_host_stays_at_most_steps_in_flight_ahead_of_the_device(tmp_path):
  """A stop waits for at most `STEPS_IN_FLIGHT` dispatched steps, not for a
  whole log window: whenever a step is dispatched, every earlier step but the
  last `STEPS_IN_FLIGHT` has finished on the device. (Without the bound up
  to 8 steps of this size were queued here.)"""
  import tqdm
  from flax_attn import checkpoint, from_config, resume, train
  from flax_attn.preemption import Preemption
  config = _dates_config()
  config.model.update(enc_hidden=256, dec_hidden=256, attn_dim=256)
  config.num_train_steps = config.log_every_steps = 24
  splits = from_config.load_task(config)
  ckpts = checkpoint.Checkpoints(tmp_path, keep=1, best_metric="val_loss", best_mode="min")
  setup, state, meta = resume.restore_or_create(config, splits, ckpts)
  outputs, waiting = [], []
  with Preemption() as preemption:
    run = train.Run(config, tmp_path, splits, ckpts, setup, state, meta, preemption)
    p_train = run.p_train

    def recorded(*step_args):
      waiting.append(sum(not x.is_ready() for x in outputs))
      out = p_train(*step_args)
      outputs.append(out[1]["steps"])
      return out
    run.p_train = recorded
    run.train_until(24, tqdm.tqdm(disable=True))
  ckpts.close()
  assert len(outputs) == 24
  assert max(waiting) <= train.STEPS_IN_FLIGHT, waiting


@pytest.mark.slow
def test_free_running_ppl_tutorial_does_not_depend_on_the_evaluation_batches():
  """Per-sentence free-running NLLs come back from every device in global
  order: the tutorial's batch-mean perplexity is the same for any evaluation
  batch size, and with one tutorial batch it is the token-weighted one."""
  import jax
  from flax_attn import evaluation, parallel
  from flax_attn.model import Seq2Seq
  rng = np.random.default_rng(0)
  src = [np.append(rng.integers(4, 20, rng.integers(1, 9)), 3).astype(np.int32) for _ in range(37)]
  trg = [np.append(rng.integers(4, 18, rng.integers(1, 9)), 3).astype(np.int32) for _ in range(37)]
  b = global_batch(0)
  params = Seq2Seq(CFG).init(jax.random.key(1), b["src"], b["src_lengths"], b["trg_in"])["params"]
  ppl = functools.partial(evaluation.split_perplexity, evaluation.pmapped_eval(CFG),
                          parallel.replicate(params), src, trg, free_running=True)
  by_5 = {n: ppl(n, tutorial_batch_size=5) for n in (8, 40)}
  assert by_5[8]["free_running_ppl_tutorial"] == pytest.approx(
      by_5[40]["free_running_ppl_tutorial"], rel=1e-6)
  assert by_5[8]["free_running_ppl"] == pytest.approx(by_5[40]["free_running_ppl"], rel=1e-6)
  # seven batches of 5 weigh sentences differently from the token mean
  assert by_5[8]["free_running_ppl_tutorial"] != pytest.approx(by_5[8]["free_running_ppl"],
                                                               rel=1e-3)
  one = ppl(8, tutorial_batch_size=128)
  assert one["free_running_ppl_tutorial"] == pytest.approx(one["free_running_ppl"], rel=1e-6)
