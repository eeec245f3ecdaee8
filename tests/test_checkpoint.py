"""Restoring never silently starts over: damaged steps are moved aside,
unreadable workdirs and changed optimizers fail clearly (exit 2), and fields
that change no parameter shape may change on resume."""

import json
import shutil

import pytest

from _runs import DATES_40, ENV, run, train_cmd


def _damage_state(step_dir):
  for f in (step_dir / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")


def _steps(wd):
  return sorted(int(d.name) for d in (wd / "checkpoints").iterdir() if d.name.isdigit())


def test_damaged_latest_is_moved_aside_and_training_resumes(dates_run, tmp_path):
  wd = tmp_path / "damaged"
  shutil.copytree(dates_run, wd)
  _damage_state(wd / "checkpoints/40")
  # Inference skips the damaged step for the previous one, with a warning.
  from flax_attn import Translator
  assert Translator.load(wd).step == 30
  p = run(train_cmd(wd, "--config.num_train_steps=50", "--config.checkpoint_every_steps=10",
                    "--config.eval_every_steps=20"))
  assert "checkpoint step 40 is damaged" in p.stderr and "resumed from step 30" in p.stderr
  aside = [d.name for d in (wd / "checkpoints").iterdir() if d.name.startswith("damaged-40-")]
  assert len(aside) == 1 and (wd / "checkpoints" / aside[0] / "state").is_dir()
  assert _steps(wd)[-1] == 50 and 40 in _steps(wd)  # step 40 was trained and saved again
  assert Translator.load(wd).step == 50


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(dates_run, tmp_path):
  wd = tmp_path / "all_damaged"
  shutil.copytree(dates_run, wd)
  for step in _steps(wd):
    _damage_state(wd / "checkpoints" / str(step))
  before = sorted(d.name for d in (wd / "checkpoints").iterdir())
  p = run(train_cmd(wd, *DATES_40), expect=2)
  err = p.stderr.strip().splitlines()[-1]
  assert err.startswith("error: checkpoint step 40 in ") and "could not be restored" in err
  assert "Traceback" not in p.stderr
  assert sorted(d.name for d in (wd / "checkpoints").iterdir()) == before  # nothing moved


def test_changed_optimizer_structure_is_named(dates_run, tmp_path):
  wd = tmp_path / "noclip"
  shutil.copytree(dates_run, wd)
  p = run(train_cmd(wd, "--config.num_train_steps=50", "--config.clip_norm=0"), expect=2)
  err = p.stderr.strip().splitlines()[-1]
  assert "differently structured training state" in err and "opt_state" in err
  assert "clip_norm: 1.0 -> 0.0" in err and "Traceback" not in p.stderr
  p = run(train_cmd(wd, "--config.num_train_steps=50", "--config.optimizer=adamw"), expect=2)
  assert "optimizer: 'adam' -> 'adamw'" in p.stderr


def test_other_model_shape_fails_clearly(dates_run, tmp_path):
  wd = tmp_path / "other"
  shutil.copytree(dates_run, wd)
  p = run(train_cmd(wd, "--config.num_train_steps=50", "--config.model.emb_dim=12"), expect=2)
  assert "different model" in p.stderr and "emb_dim: 8 -> 12" in p.stderr
  assert "Traceback" not in p.stderr


def test_shape_free_fields_may_change_on_resume(dates_run, tmp_path):
  """A float32 run continues in bfloat16 with other dropouts, unroll, batch
  size and learning rate; the notice names what changed."""
  wd = tmp_path / "bf16"
  shutil.copytree(dates_run, wd)
  p = run(train_cmd(wd, "--config.num_train_steps=48", "--config.model.dtype=bfloat16",
                    "--config.model.dropout=0.1", "--config.model.out_dropout=0.2",
                    "--config.model.memory_dropout=0.1",
                    "--config.model.scan_unroll=2",
                    "--config.batch_size=16", "--config.learning_rate=0.002",
                    "--config.lowercase=False"))
  assert "resumed from step 40" in p.stderr
  notice = next(line for line in p.stderr.splitlines() if "resuming with changed settings" in line)
  for change in ("dtype: 'float32' -> 'bfloat16'", "dropout: 0.0 -> 0.1", "out_dropout: 0.0 -> 0.2",
                 "memory_dropout: 0.0 -> 0.1",
                 "scan_unroll: 1 -> 2",
                 "batch_size: 32 -> 16", "learning_rate:"):
    assert change in notice, change
  assert "lowercase: True -> False" in p.stderr  # kept from the checkpoint, said so
  result = json.loads(p.stdout.strip().splitlines()[-1])
  assert result["step"] == 48
  from flax_attn.checkpoint import load_for_inference
  step, _, meta = load_for_inference(wd)
  assert step == 48 and meta["model_config"]["dtype"] == "bfloat16"
  assert meta["data"]["batch_size"] == 16 and meta["data"]["start_step"] == 40


def test_inference_names_unreadable_step(dates_run, tmp_path):
  wd = tmp_path / "one"
  shutil.copytree(dates_run, wd)
  from flax_attn.checkpoint import load_for_inference
  _damage_state(wd / "checkpoints/40")
  with pytest.raises(ValueError, match="checkpoint step 40 in .* could not be read"):
    load_for_inference(wd, step=40)  # an explicit step never falls back
  p = run([*train_cmd(wd)[:1], str(train_cmd(wd)[1]).replace("train.py", "evaluate.py"),
           f"--workdir={wd}", "--split=test"], env=ENV)
  assert json.loads(p.stdout)["step"] == 30
