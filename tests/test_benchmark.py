"""Smoke test of experiments/benchmark.py: tiny shapes, one repeat, a function call."""

import importlib.util
import json
import math
import os
import sys

import pytest
from conftest import require_torch

require_torch()

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "experiments", "benchmark.py")


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("experiments_benchmark", _PATH)
  module = importlib.util.module_from_spec(spec)
  sys.modules["experiments_benchmark"] = module  # its dataclasses look their module up
  spec.loader.exec_module(module)
  return module


TINY = dict(batch=3, src_len=5, trg_len=4, src_vocab=30, trg_vocab=25, emb=8, hidden=12)


def test_flops_per_token_at_tutorial_sizes(bench):
  f = bench.model_flops(batch=128, src_len=24, trg_len=24, emb=256, enc_hidden=512,
                            dec_hidden=512, attn=512, trg_vocab=5893)
  assert f["forward_per_token"] / 1e6 == pytest.approx(33.0, rel=0.1)
  assert f["train_per_token"] / 1e6 == pytest.approx(99.0, rel=0.1)
  assert f["train"] == pytest.approx(3 * f["forward"])
  # The output projection dominates: 2 * (512 + 1024 + 256) * 5893 per token.
  assert f["output_proj"] / (128 * 24) == 2 * 1792 * 5893
  # Per token the count does not depend on the batch size.
  g = bench.model_flops(batch=7, src_len=24, trg_len=24)
  assert g["train_per_token"] == pytest.approx(f["train_per_token"])
  # The tutorial's unhoisted attention executes more.
  assert bench.model_flops(128, 24, 24, hoisted=False)["forward"] > f["forward"]


def test_run_gives_complete_positive_records(bench, capsys):
  shapes = bench.Shapes(**TINY)
  result = bench.run(shapes, what=("train", "greedy", "beam"), repeats=1, warmup=0,
                         matmul_n=64, matmul_calls=1)
  records = result["records"]
  pairs = {(r["impl"], r["what"]) for r in records}
  for what in ("train", "greedy"):
    assert ("flax_attn", what) in pairs and ("torch", what) in pairs
  assert ("torch", "beam") not in pairs
  for r in records:
    assert set(bench.RECORD_KEYS) <= set(r)
    for key in ("tokens_per_s", "ms_per_step", "peak_rss_mb"):
      assert r[key] > 0 and math.isfinite(r[key]), (r["impl"], r["what"], key, r[key])
    assert r["compile_s"] >= 0
    assert r["tokens_per_s"] == pytest.approx(
        shapes.batch * shapes.trg_len / (r["ms_per_step"] / 1e3))
  train = [r for r in records if r["what"] == "train"]
  assert all(r["gflop_per_s"] > 0 and r["pct_of_matmul"] > 0 for r in train)
  flax_train = next(r for r in train if r["impl"] == "flax_attn")
  assert flax_train["compile_method"] == "aot_lower_compile" and flax_train["compile_s"] > 0
  s = result["summary"]
  assert s["matmul_gflop_per_s_jax"] > 0 and s["train_mflop_per_token"] > 0
  assert set(s["flax_over_torch_tokens_per_s"]) == {"train", "greedy"}
  # The printers run and the JSON lines parse.
  assert "tokens/s" in bench.format_table(records)
  assert "MFLOP/token" in bench.format_summary(result)
  bench.print_json(result)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == len(records) + 1
  assert all(set(bench.RECORD_KEYS) <= set(json.loads(x)) for x in lines[:-1])
  assert "train_mflop_per_token" in json.loads(lines[-1])["summary"]


def test_write_sweep(bench, tmp_path):
  records = [dict(impl=impl, what="train", batch=b, trg_len=t, src_len=5, repeats=1,
                  tokens_per_s=100.0 * b * (2 if impl == "flax_attn" else 1),
                  ms_per_step=10.0, compile_s=1.0, peak_rss_mb=1.0)
             for impl in ("flax_attn", "torch") for b in (2, 4) for t in (3, 5)]
  md, png = bench.write_sweep(records, str(tmp_path))
  text = open(md).read()
  assert "| 4 | 5 | 800 | 400 | 2.00 |" in text
  assert os.path.getsize(png) > 0
