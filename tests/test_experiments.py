"""The task presets end to end, the evaluate/translate CLIs and their errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / "shared/data/multi30k"
from _runs import ENV, TIMEOUT  # noqa: E402


def _py(*args, stdin=None, check=True):
  p = subprocess.run([sys.executable, *map(str, args)], env=ENV, capture_output=True, text=True,
                     timeout=TIMEOUT, input=stdin)
  if check:
    assert p.returncode == 0, p.stderr[-3000:]
  return p


def _train(task, workdir, *extra):
  p = _py(REPO / "experiments/train.py", f"--config={REPO}/experiments/configs/{task}.py:tiny",
          f"--workdir={workdir}", *extra)
  return json.loads(p.stdout.strip().splitlines()[-1])


def _config(name, preset=""):
  from flax_attn import configs
  return configs.load(f"{REPO}/experiments/configs/{name}.py:{preset}")


@pytest.mark.parametrize("name, chosen_by", [
    ("multi30k", ("bleu_lc", "max")), ("multi30k_tutorial", ("free_running_ppl", "min")),
    ("multi30k_seed", ("free_running_ppl", "min")), ("multi30k_en_de", ("bleu_lc", "max")),
    ("g2p", ("wer", "min")), ("dates", ("exact_match", "max")),
])
def test_each_config_picks_best_by_its_own_metric(name, chosen_by):
  """`multi30k` derives from `multi30k_tutorial` but keeps the best BLEU, not the
  tutorial's lowest free-running perplexity (which also costs a free-running
  pass at every validation)."""
  from flax_attn import from_config
  for preset in ("", "tiny"):
    assert from_config.best_metric(_config(name, preset)) == chosen_by


@pytest.mark.slow
def test_g2p_tiny(tmp_path):
  from flax_attn.configs import g2p
  result = _train("g2p", tmp_path)
  assert set(result["test"]) >= {"wer", "per", "loss", "ppl", "free_running_ppl"}
  # The printed WER / PER are those of the written outputs against every
  # dictionary pronunciation of each word (a word counts as right when it
  # matches any of them).
  from flax_attn import metrics
  from flax_attn.tasks import g2p as g2p_task
  config = g2p.get_config("tiny")
  test = g2p_task.load_splits(**config.task_kwargs)["test"]
  hyps = (tmp_path / "test.hyp.txt").read_text().split("\n")[:-1]
  assert len(hyps) == len(test.src)
  assert metrics.task_metrics("g2p", hyps, test.references()) == {
      k: result["test"][k] for k in ("wer", "per")}
  # At most one compilation of the train step per bucket width.
  assert result["train_compiles"] <= len(result["buckets"]) <= g2p.get_config("tiny").num_buckets
  assert result["recompiles"] == 0


@pytest.mark.slow
@pytest.mark.skipif(not MULTI30K.is_dir(), reason="../shared/data/multi30k not present")
def test_multi30k_tiny_and_cli(tmp_path):
  result = _train("multi30k", tmp_path, f"--config.data_dir={MULTI30K}")
  assert {"bleu", "bleu_lc", "chrf", "free_running_ppl", "bleu_signature"} <= set(result["test"])
  assert "test2017" in result
  out = _py(REPO / "experiments/evaluate.py", f"--workdir={tmp_path}", "--split=val")
  line = json.loads(out.stdout.strip().splitlines()[-1])
  assert line["examples"] == 256 and Path(line["output"]).is_file()
  assert len(Path(line["output"]).read_text().splitlines()) == 256
  src, ref = tmp_path / "s.txt", tmp_path / "r.txt"
  src.write_text("ein mann .\nzwei hunde .\n")
  ref.write_text("a man .\n")
  bad = _py(REPO / "experiments/evaluate.py", f"--workdir={tmp_path}", f"--src={src}",
            f"--ref={ref}", check=False)
  assert bad.returncode == 2 and "has 2 lines but" in bad.stderr and "Traceback" not in bad.stderr
  ref.write_text("")
  bad = _py(REPO / "experiments/evaluate.py", f"--workdir={tmp_path}", f"--src={src}",
            f"--ref={ref}", check=False)
  assert bad.returncode == 2 and "is empty" in bad.stderr
  bad = _py(REPO / "experiments/evaluate.py", f"--workdir={tmp_path / 'nothing'}", check=False)
  assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
  tr = _py(REPO / "experiments/translate.py", f"--workdir={tmp_path}",
           f"--plot={tmp_path / 'a.png'}", stdin="ein mann .\n\nzwei hunde .\n")
  assert len(tr.stdout.splitlines()) == 3 and tr.stdout.splitlines()[1] == ""
  assert (tmp_path / "a.png").is_file()


@pytest.mark.slow
def test_reverse_tiny(tmp_path):
  result = _train("reverse", tmp_path)
  assert "exact_match" in result["test"]


@pytest.mark.slow
def test_a_second_run_loads_its_compiled_steps_from_the_cache(tmp_path):
  """train.py keeps compiled steps in JAX's persistent cache (on by default in
  the CLIs): the same run again, in a fresh process, compiles its train step
  in a fraction of the time."""
  cache = tmp_path / "cache"
  env = {**ENV, "FLAX_ATTN_COMPILATION_CACHE": str(cache)}
  times = []
  for i in range(2):
    p = subprocess.run([sys.executable, str(REPO / "experiments/train.py"),
                        f"--config={REPO}/experiments/configs/dates.py:tiny",
                        f"--workdir={tmp_path / f'run{i}'}", "--config.num_buckets=1"],
                       env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "time: " in p.stderr  # the breakdown, printed for people
    times.append(json.loads(p.stdout.strip().splitlines()[-1])["time"]["compile_train_step"])
    if i == 0:
      assert any(cache.iterdir())
  assert times[1] < 0.5 * times[0], times


def test_compilation_cache_off_and_its_default_folder(monkeypatch, tmp_path):
  import jax

  from flax_attn import compilation_cache
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("FLAX_ATTN_COMPILATION_CACHE", "off")
  assert compilation_cache.enable() is None and jax.config.jax_compilation_cache_dir == before
  monkeypatch.delenv("FLAX_ATTN_COMPILATION_CACHE")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache.default_dir() == str(tmp_path / "flax_attn" / "jax")
