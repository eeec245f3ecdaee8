"""Smoke tests of experiments/benchmark.py and its pieces (experiments/bench/):
tiny shapes, one repeat, function calls."""

import json
import math
import os
import sys

import pytest
from conftest import require_torch

require_torch()

_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "experiments")
if _EXPERIMENTS not in sys.path:
  sys.path.insert(0, _EXPERIMENTS)

from bench import compare, harness, sweep, torch_cases  # noqa: E402

TINY = dict(batch=3, src_len=5, trg_len=4, src_vocab=30, trg_vocab=25, emb=8, hidden=12)


def test_flops_per_token_at_tutorial_sizes():
  f = harness.model_flops(batch=128, src_len=24, trg_len=24, emb=256, enc_hidden=512,
                          dec_hidden=512, attn=512, trg_vocab=5893)
  assert f["forward_per_token"] / 1e6 == pytest.approx(33.0, rel=0.1)
  assert f["train_per_token"] / 1e6 == pytest.approx(99.0, rel=0.1)
  assert f["train"] == pytest.approx(3 * f["forward"])
  # The output projection dominates: 2 * (512 + 1024 + 256) * 5893 per token.
  assert f["output_proj"] / (128 * 24) == 2 * 1792 * 5893
  # Per token the count does not depend on the batch size.
  g = harness.model_flops(batch=7, src_len=24, trg_len=24)
  assert g["train_per_token"] == pytest.approx(f["train_per_token"])
  # The tutorial's unhoisted attention executes more.
  assert harness.model_flops(128, 24, 24, hoisted=False)["forward"] > f["forward"]


@pytest.mark.slow
def test_run_gives_complete_positive_records(capsys):
  shapes = harness.Shapes(**TINY)
  peers = ("torch_tutorial", "torch_hoisted")
  result = compare.run(shapes, what=("train", "greedy", "beam"), peers=peers, repeats=1,
                       warmup=0, matmul_n=64, matmul_calls=1)
  records = result["records"]
  pairs = {(r["impl"], r["what"]) for r in records}
  expected = {(impl, w) for impl in ("flax_attn",) + peers for w in ("train", "greedy")}
  assert pairs == expected | {("flax_attn", "beam"), ("torch_hoisted", "beam")}
  for r in records:
    assert set(harness.RECORD_KEYS) <= set(r)
    for key in ("tokens_per_s", "ms_per_step", "peak_rss_mb"):
      assert r[key] > 0 and math.isfinite(r[key]), (r["impl"], r["what"], key, r[key])
    assert r["compile_s"] >= 0
    assert r["tokens_per_s"] == pytest.approx(
        shapes.batch * shapes.trg_len / (r["ms_per_step"] / 1e3))
  train = [r for r in records if r["what"] == "train"]
  assert all(r["gflop_per_s"] > 0 and r["pct_of_matmul"] > 0 for r in train)
  assert [r for r in train if "executed_gflop_per_s" in r][0]["impl"] == "torch_tutorial"
  s = result["summary"]
  assert s["matmul_gflop_per_s_jax"] > 0 and s["train_mflop_per_token"] > 0
  assert set(s["flax_over_peer_tokens_per_s"]) == ({f"{w} vs {p}" for w in ("train", "greedy")
                                                    for p in peers} | {"beam vs torch_hoisted"})
  # The printers run and the JSON lines parse.
  assert "tokens/s" in compare.format_table(records)
  assert "MFLOP/token" in compare.format_summary(result)
  compare.print_json(result)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == len(records) + 1
  assert all(set(harness.RECORD_KEYS) <= set(json.loads(x)) for x in lines[:-1])
  assert "train_mflop_per_token" in json.loads(lines[-1])["summary"]


def test_peers_train_the_same_weights_to_the_same_loss():
  """One train step of each peer from the same weights and batch gives the same loss
  (dropout off), so the peers time the same computation."""
  shapes = harness.Shapes(**{**TINY, "dropout": 0.0})
  batch = harness.make_batch(shapes)
  losses = {}
  for peer in ("torch_tutorial", "torch_hoisted"):
    models = torch_cases.build_models(shapes, seed=0)
    losses[peer] = torch_cases.train_case(models, peer, batch, shapes).fn()
  assert losses["torch_tutorial"] == pytest.approx(losses["torch_hoisted"], rel=1e-5)


def test_write_sweep(tmp_path):
  records = [dict(impl=impl, what="train", batch=b, trg_len=t, src_len=5, repeats=1,
                  tokens_per_s=100.0 * b * factor, ms_per_step=10.0, compile_s=1.0,
                  peak_rss_mb=1.0)
             for impl, factor in (("flax_attn", 4), ("torch_tutorial", 1), ("torch_hoisted", 2))
             for b in (2, 4) for t in (3, 5)]
  md, png = sweep.write_sweep(records, str(tmp_path))
  text = open(md).read()
  assert "| 4 | 5 | 1600 | 800 | 400 | 2.00 | 4.00 |" in text
  assert os.path.getsize(png) > 0 and "Partial" not in text
  sweep.write_sweep(records, str(tmp_path), planned=6)
  assert "**Partial: 4 of 6 cells**" in open(md).read()


@pytest.mark.slow
def test_profile_times_every_part():
  from bench import profile
  out = profile.run_profile(harness.Shapes(**TINY), repeats=1, unrolls=(1, 2))
  measured = [k for k in out if not k.startswith("derived")]
  assert len(measured) == 10 and all(out[k]["min_ms"] > 0 for k in measured)
  assert "output projection + loss (fused) fwd+bwd" in out


def test_loop_benchmark_finds_the_experiment_configs():
  """`benchmark.py --loop` loads experiments/configs/<name>.py (it looked in
  experiments/bench/configs/ once, and failed)."""
  from bench import loop
  for name in loop.CONFIGS:
    assert loop._load_config(name).task == name


def test_cli_rejects_an_unknown_peer(capsys):
  import benchmark
  with pytest.raises(SystemExit) as e:
    benchmark.parse_args(["--peers", "torch_tutorial,tensorflow"])
  assert e.value.code == 2 and "tensorflow" in capsys.readouterr().err


def test_fp32_matmul_sets_both_libraries_alike():
  """`--fp32_matmul` gives jax and torch the same float32 matmul arithmetic on
  a GPU (jax allows TF32 by default there, torch's cuBLAS does not), and the
  report says which."""
  import jax
  import torch
  before = (jax.config.jax_default_matmul_precision, torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)
  try:
    torch_cases.set_fp32_matmul("ieee")
    assert torch_cases.fp32_matmul_settings() == dict(
        jax_default_matmul_precision="highest", torch_cuda_matmul_allow_tf32=False,
        torch_cudnn_allow_tf32=False)
    torch_cases.set_fp32_matmul("tf32")
    assert torch_cases.fp32_matmul_settings() == dict(
        jax_default_matmul_precision="tensorfloat32", torch_cuda_matmul_allow_tf32=True,
        torch_cudnn_allow_tf32=True)
    with pytest.raises(ValueError, match="fp32_matmul"):
      torch_cases.set_fp32_matmul("fast")
  finally:
    jax.config.update("jax_default_matmul_precision", before[0])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1:]
