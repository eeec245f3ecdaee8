"""One run: flax_attn against the PyTorch peers, and its report."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax

from bench import flax_cases, torch_cases
from bench.harness import Shapes, make_batch, matmul_case, matmul_gflops, measure, shapes_flops

FLAX = flax_cases.FLAX
WHATS = ("train", "greedy", "beam")


def _cases(what: str, models, batch_np, shapes: Shapes, peers, seed: int, log):
  """flax_attn's case for `what` first, then each peer's (beam: the peers in
  `torch_cases.BEAM_PEERS`)."""
  if what == "train":
    log("compiling the flax train step")
    cases = [flax_cases.train_case(models.config, models.params, batch_np, shapes, seed)]
    return cases + [torch_cases.train_case(models, p, batch_np, shapes) for p in peers]
  if what == "greedy":
    cases = [flax_cases.greedy_case(models.config, models.params, batch_np, shapes)]
    return cases + [torch_cases.greedy_case(models, p, batch_np, shapes) for p in peers]
  if what == "beam":
    cases = [flax_cases.beam_case(models.config, models.params, batch_np, shapes)]
    return cases + [torch_cases.beam_case(models, p, batch_np, shapes, flax_cases.BEAM_SIZE)
                    for p in peers if p in torch_cases.BEAM_PEERS]
  raise ValueError(f"unknown --what {what!r}; choose from {WHATS}")


def run(shapes: Shapes = Shapes(), what=WHATS, peers=torch_cases.PEERS, repeats: int = 5,
        warmup: int = 1, matmul_n: int = 2048, matmul_calls: int = 3, seed: int = 0,
        log: Callable[[str], None] | None = None, torch_device: str = "cpu",
        fp32_matmul: str = "") -> dict[str, Any]:
  """Times `what` for flax_attn (on jax's default device) and `peers` (on
  `torch_device`) at `shapes`, one after another; `fp32_matmul` ("ieee" | "tf32" |
  "" = each library's default) sets float32 matmul arithmetic on a GPU for
  both. Returns `{"records": [...], "summary": {...}}`."""
  log = log or (lambda msg: None)
  torch_cases.set_fp32_matmul(fp32_matmul)
  threads = torch_cases.set_threads()
  load_start = os.getloadavg()
  peers, notes = torch_cases.usable_peers(peers, log, torch_device)
  models = torch_cases.build_models(shapes, seed, torch_device)
  batch_np = make_batch(shapes, seed)
  # The matmul rate is timed in the same run as the train steps (or on its own
  # when there are none), so it sees the same load from other processes.
  matmul = [matmul_case("jax", matmul_n, matmul_calls),
            matmul_case("torch", matmul_n, matmul_calls, torch_device)]
  records = []
  for w in what:
    cases = _cases(w, models, batch_np, shapes, peers, seed, log)
    if w == "train":
      cases.extend(matmul)
    log(f"timing {w}: {', '.join(c.impl for c in cases)} one after another, "
        f"1 first + {warmup} warm-up + {repeats} timed each")
    measure(cases, repeats, warmup)
    records.extend(c.record(shapes) for c in cases if c.what != "matmul")
  if not matmul[0].times:
    measure(matmul, repeats, warmup)
  rates = {c.impl: matmul_gflops(c) for c in matmul}
  flops = {True: shapes_flops(shapes), False: shapes_flops(shapes, hoisted=False)}
  for r in records:
    if r["what"] == "train":
      jax_side = r["impl"] == FLAX
      r["gflop_per_s"] = flops[True]["train"] / (r["ms_per_step"] / 1e3) / 1e9
      r["pct_of_matmul"] = 100.0 * r["gflop_per_s"] / rates["jax" if jax_side else "torch"]
      if r["impl"] == "torch_tutorial":  # what the unhoisted tutorial code executes
        r["executed_gflop_per_s"] = flops[False]["train"] / (r["ms_per_step"] / 1e3) / 1e9
  by = {(r["impl"], r["what"]): r for r in records}
  ratios = {f"{w} vs {p}": by[FLAX, w]["tokens_per_s"] / by[p, w]["tokens_per_s"]
            for w in ("train", "greedy", "beam") for p in peers if (FLAX, w) in by and (p, w) in by}
  f = flops[True]
  summary = dict(
      shapes=dataclasses.asdict(shapes), threads=threads, teacher_forcing=1.0, dtype=shapes.dtype,
      optimizer="adam(1e-3) after clip_by_global_norm(1.0)", dropout_train_mode=shapes.dropout,
      peers=list(peers), forward_mflop_per_token=f["forward_per_token"] / 1e6,
      train_mflop_per_token=f["train_per_token"] / 1e6, train_gflop_per_step=f["train"] / 1e9,
      torch_executed_forward_mflop_per_token=flops[False]["forward_per_token"] / 1e6,
      flop_components_mflop_per_token={
          k: v / shapes.tokens / 1e6 for k, v in f.items()
          if k not in ("forward", "train", "forward_per_token", "train_per_token")},
      matmul_n=matmul_n, matmul_calls_per_sample=matmul_calls,
      matmul_gflop_per_s_jax=rates["jax"], matmul_gflop_per_s_torch=rates["torch"],
      flax_over_peer_tokens_per_s=ratios, notes=notes,
      loadavg_1min_start_end=(load_start[0], os.getloadavg()[0]),
      omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), jax_version=jax.__version__,
      torch_version=torch_cases.torch_version(), jax_device=jax.devices()[0].device_kind,
      torch_device=torch_device, fp32_matmul=torch_cases.fp32_matmul_settings())
  return dict(records=records, summary=summary)


def format_table(records: list[dict[str, Any]]) -> str:
  nan = float("nan")
  head = (f"{'impl':<24} {'what':<7} {'batch':>5} {'trg':>4} {'tokens/s':>10} {'ms/step':>9} "
          f"{'min_ms':>9} {'compile_s':>9} {'peak_rss_MB':>11} {'cores':>5}")
  lines = [head, "-" * len(head)]
  for r in records:
    lines.append(f"{r['impl']:<24} {r['what']:<7} {r['batch']:>5} {r['trg_len']:>4} "
                 f"{r['tokens_per_s']:>10.0f} {r['ms_per_step']:>9.1f} "
                 f"{r.get('ms_min', nan):>9.1f} {r['compile_s']:>9.2f} "
                 f"{r['peak_rss_mb']:>11.0f} {r.get('cores_used', nan):>5.2f}")
  return "\n".join(lines)


def format_summary(result: dict[str, Any]) -> str:
  s, lines = result["summary"], []
  for key, ratio in s["flax_over_peer_tokens_per_s"].items():
    what, peer = key.split(" vs ")
    lines.append(f"{what}: flax_attn tokens/s / {peer} tokens/s = {ratio:.2f}x")
  lines.append(f"FLOPs (hoisted model, matmuls): forward {s['forward_mflop_per_token']:.4g} "
               f"MFLOP/token, train (3x) {s['train_mflop_per_token']:.4g} MFLOP/token, "
               f"{s['train_gflop_per_step']:.4g} GFLOP/step; the tutorial's unhoisted torch "
               f"forward executes {s['torch_executed_forward_mflop_per_token']:.4g} MFLOP/token")
  lines.append(f"float32 {s['matmul_n']}^3 matmul (in the same run as the train steps): "
               f"jax {s['matmul_gflop_per_s_jax']:.1f} GFLOP/s, "
               f"torch {s['matmul_gflop_per_s_torch']:.1f} GFLOP/s")
  for r in result["records"]:
    if r["what"] == "train":
      line = (f"train {r['impl']}: {r['gflop_per_s']:.1f} GFLOP/s of model FLOPs = "
              f"{r['pct_of_matmul']:.0f}% of its library's matmul rate")
      if "executed_gflop_per_s" in r:
        line += f" (executes {r['executed_gflop_per_s']:.1f} GFLOP/s)"
      lines.append(line)
  lines.append(f"setting: flax_attn matmuls in {s['dtype']} (torch float32), "
               f"teacher forcing {s['teacher_forcing']}, "
               f"dropout {s['dropout_train_mode']} (train mode), {s['optimizer']}, "
               f"{s['threads']} threads each (OMP_WAIT_POLICY={s['omp_wait_policy']}), "
               f"jax {s['jax_version']}, torch {s['torch_version']}; 1-min load average "
               f"{s['loadavg_1min_start_end'][0]:.1f} -> {s['loadavg_1min_start_end'][1]:.1f} "
               f"on {os.cpu_count()} cores ('cores' = CPU s per wall s of the timed calls)")
  lines.append(f"devices: flax_attn on {s['jax_device']}, PyTorch on {s['torch_device']}; "
               f"float32 matmul settings {s['fp32_matmul']}")
  lines.extend(s["notes"])
  return "\n".join(lines)


def print_json(result: dict[str, Any]) -> None:
  for r in result["records"]:
    print(json.dumps(r))
  print(json.dumps({"summary": result["summary"]}))
