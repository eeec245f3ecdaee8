"""Exports: parameters only, checked by a manifest, read by Translator,
evaluate.py and translate.py like a workdir; checkpoint averaging."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from _runs import ENV, REPO, TIMEOUT
from flax_attn import checkpoint as ckpt_lib
from flax_attn import export
from flax_attn.translator import Translator


@pytest.fixture(scope="module")
def workdir(dates_run):
  """dates:tiny, 40 steps, a checkpoint every 10, the newest 3 kept (conftest)."""
  return dates_run


def _cli(script, *args, cwd=None):
  p = subprocess.run([sys.executable, str(REPO / "experiments" / script), *map(str, args)],
                     env=ENV, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
  return p.returncode, p.stdout, p.stderr


def test_export_holds_the_params_bit_identical_and_no_optimizer(workdir, tmp_path):
  out = tmp_path / "exp"
  record = export.export(workdir, out)
  step, params, meta = ckpt_lib.load_for_inference(workdir)
  assert record["step"] == step == 40 and record["source"]["steps"] == [40]
  e_step, e_params, e_meta = export.load_export(out)
  assert e_step == 40
  assert jax.tree.structure(e_params) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(e_params), jax.tree.leaves(params)):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  assert set(e_meta) >= {"experiment", "model_config", "tokenizers", "buckets", "versions"}
  assert e_meta["experiment"]["decode"]["beam_size"] == 1
  assert set(e_meta["metrics"]) == {"val", "test"}   # the run's final evaluation
  files = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()}
  assert files == {"params", "export.json", "MANIFEST.json"}
  assert not any("opt_state" in p.name for p in out.rglob("*"))


def test_manifest_catches_a_changed_file(workdir, tmp_path):
  out = tmp_path / "exp"
  export.export(workdir, out)
  victim = next(p for p in sorted((out / "params").rglob("*")) if p.is_file())
  victim.write_bytes(victim.read_bytes() + b"x")
  with pytest.raises(export.ExportError, match="does not match its checksum"):
    export.load_export(out)
  with pytest.raises(ValueError, match="does not match its checksum"):
    Translator.load(out)


def test_average_is_the_elementwise_mean_of_the_last_k_steps(workdir, tmp_path):
  out = tmp_path / "avg"
  record = export.export(workdir, out, average_last=3)
  assert record["source"]["steps"] == [20, 30, 40] and record["metrics"] == {}
  trees = [ckpt_lib.load_for_inference(workdir, s)[1] for s in (20, 30, 40)]
  _, avg, _ = export.load_export(out)
  for a, *xs in zip(jax.tree.leaves(avg), *map(jax.tree.leaves, trees)):
    np.testing.assert_allclose(a, (xs[0].astype(np.float64) + xs[1] + xs[2]) / 3, rtol=1e-6)
    assert not np.array_equal(a, xs[-1])
  with pytest.raises(export.ExportError, match="holds 3 step"):
    export.export(workdir, tmp_path / "too_many", average_last=4)


def test_bfloat16_export_decodes_in_bfloat16(workdir, tmp_path):
  out = tmp_path / "bf16"
  export.export(workdir, out, dtype="bfloat16")
  t = Translator.load(out)
  assert t.config.dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(t.params)} == {jax.numpy.dtype("bfloat16")}
  export.export(workdir, tmp_path / "f32")

  def params_bytes(d):
    return sum(p.stat().st_size for p in (d / "params").rglob("*") if p.is_file())

  # The stored arrays are half the size; on disk (a tiny model: Orbax's own
  # metadata, whose size varies from write to write, is a good part of it)
  # the folder is smaller.
  f32 = export.load_export(tmp_path / "f32")[1]
  stored = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
  assert 2 * stored(t.params) == stored(f32)
  assert params_bytes(out) < params_bytes(tmp_path / "f32")


def test_evaluating_the_export_equals_the_workdir(workdir, tmp_path):
  """evaluate.py on the float32 export gives the workdir's figures and the same
  system output, byte for byte; translate.py reads it too."""
  out = tmp_path / "exp"
  rc, line, err = _cli("export.py", f"--workdir={workdir}", f"--out={out}")
  assert rc == 0, err[-3000:]
  assert json.loads(line)["bytes"] > 0
  results = []
  for w in (workdir, out):
    rc, line, err = _cli("evaluate.py", f"--workdir={w}", "--split=test",
                         f"--out={tmp_path / Path(w).name}.hyp")
    assert rc == 0, err[-3000:]
    results.append(json.loads(line))
  a, b = results
  assert a["exact_match"] == b["exact_match"] and a["ppl"] == b["ppl"]
  assert Path(a["output"]).read_bytes() == Path(b["output"]).read_bytes()
  rc, text, err = _cli("translate.py", f"--workdir={out}", "3 march 1998")
  assert rc == 0 and len(text.splitlines()) == 1, err[-3000:]
  # Without --out, the output goes to the current folder, not into the export
  # (whose manifest would then refuse the next load): a second run still loads.
  for _ in range(2):
    rc, line, err = _cli("evaluate.py", f"--workdir={out}", "--split=val", cwd=tmp_path)
    assert rc == 0, err[-3000:]
  assert json.loads(line)["output"] == str(tmp_path / "exp.val.beam1.hyp.txt")
  assert not list(out.glob("*.hyp.txt"))


@pytest.mark.parametrize("args, expected", [
    (["--out={tmp}/again"], "exists already"),
    (["--out={tmp}/new", "--average_last=9"], "train with keep_checkpoints >= 9"),
    (["--out={tmp}/new", "--which=best", "--average_last=2"], "cannot be combined"),
])
def test_export_cli_errors(workdir, tmp_path, args, expected):
  (tmp_path / "again").mkdir()
  rc, _, err = _cli("export.py", f"--workdir={workdir}", *[a.format(tmp=tmp_path) for a in args])
  assert rc == 2 and err.startswith("error:") and expected in err and "Traceback" not in err


def test_a_run_with_average_last_evaluates_and_exports_the_average(workdir, tmp_path):
  """`average_last=3` on the finished 40-step run (rerun: nothing left to
  train, so only the final evaluation runs): its final rows name steps
  20, 30, 40, their parameters are the mean of those checkpoints, and
  `workdir/averaged` is an export that evaluate.py scores the same."""
  import shutil

  from _runs import DATES_40, run, train_cmd
  wd = tmp_path / "run"
  shutil.copytree(workdir, wd)
  out = run(train_cmd(wd, *DATES_40, "--config.average_last=3"))
  result = json.loads(out.stdout.strip().splitlines()[-1])
  rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
  finals = {r["split"]: r for r in rows if r.get("final") and r["split"] in ("val", "test")}
  assert [r["averaged_steps"] for r in finals.values()] == [[20, 30, 40]] * 2
  e_step, e_params, e_meta = export.load_export(wd / "averaged")
  assert e_step == 40 and e_meta["source"]["steps"] == [20, 30, 40]
  want = export.average_params([ckpt_lib.load_for_inference(wd, s)[1] for s in (20, 30, 40)])
  for a, b in zip(jax.tree.leaves(e_params), jax.tree.leaves(want)):
    assert np.array_equal(a, b)
  latest = ckpt_lib.load_for_inference(wd)[1]
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(latest),
                                                      jax.tree.leaves(want)))
  assert e_meta["metrics"]["test"]["loss"] == finals["test"]["loss"] == result["test"]["loss"]
  rc, stdout, err = _cli("evaluate.py", f"--workdir={wd / 'averaged'}", "--split=test",
                         cwd=tmp_path)  # an export's output goes to the current folder
  assert rc == 0, err[-3000:]
  assert json.loads(stdout)["exact_match"] == finals["test"]["exact_match"]
  assert (tmp_path / "averaged.test.beam1.hyp.txt").exists()
  # The latest checkpoint is still the trained one: `export --which latest`
  # without averaging does not claim the averaged figures.
  assert export.export(wd, tmp_path / "plain")["metrics"] == {}


def test_average_last_beyond_keep_checkpoints_is_a_config_error():
  from flax_attn import configs, from_config
  config = configs.load("dates:tiny")
  config.average_last = 4
  with pytest.raises(ValueError, match=r"^config: average_last=4 needs keep_checkpoints >= 4"):
    from_config.validate_config(config, 1, 1)
