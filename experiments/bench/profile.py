"""Where the flax_attn train step spends its time: each part jitted and timed alone.

Only the project's own functions are timed (`Seq2Seq.encode`, the decoder's
`teacher_forced_features`, `flax_attn.loss.projected_cross_entropy_sums` (the
output projection fused with the loss, as the train step runs it), the
pmapped `flax_attn.steps.train_step`);
the functions below only choose which part to differentiate.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable

import jax
import jax.numpy as jnp

from bench import flax_cases, torch_cases
from bench.harness import Shapes, call_times, make_batch
from flax_attn.loss import projected_cross_entropy_sums
from flax_attn.model import Seq2Seq


def run_profile(shapes: Shapes, repeats: int = 5, unrolls=(1,), seed: int = 0,
                log: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
  """Times parts of the flax train step, each jitted on its own.

  Returns `{part: {"median_ms", "min_ms"}}`; the min is the better estimate of
  the intrinsic cost on a shared machine. "derived" rows are differences.
  """
  log = log or (lambda msg: None)
  torch_cases.set_threads()
  models = torch_cases.build_models(shapes, seed)
  config, params = models.config, jax.tree.map(jnp.asarray, models.params)
  batch_np = make_batch(shapes, seed)
  batch = jax.tree.map(lambda x: jnp.asarray(x[0]), flax_cases.device_batch(config, batch_np))
  rng = jax.random.key(seed)
  model = Seq2Seq(config)
  out: dict[str, dict[str, float]] = {}

  def show(name):
    log(f"{name:<50} median {out[name]['median_ms']:8.1f} ms   min {out[name]['min_ms']:8.1f} ms")

  def timeit(name, f, *args):
    compiled = jax.jit(f).lower(*args).compile()
    times = call_times(lambda: jax.block_until_ready(compiled(*args)), repeats)
    out[name] = dict(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times))
    show(name)

  def encode(p):
    s0, cache = model.apply({"params": p}, batch["src"], batch["src_lengths"], train=True,
                            method=Seq2Seq.encode, rngs={"dropout": rng})
    return jnp.sum(s0) + jnp.sum(cache.memory) + jnp.sum(cache.keys)

  s0, cache = model.apply({"params": params}, batch["src"], batch["src_lengths"],
                          method=Seq2Seq.encode)

  def project(w, bias, feats):  # the output projection fused with the loss, as trained
    loss_sum, _, weight_sum = projected_cross_entropy_sums(
        feats, w, bias, batch["trg_out"], batch["weights"], dtype=config.compute_dtype)
    return loss_sum / jnp.maximum(weight_sum, 1.0)

  def decode(p, s0, cache):  # decoder (scan + hoisted projections) + fused loss
    feats, _ = model.apply({"params": p}, s0, cache, batch["trg_in"], train=True,
                           method=lambda m, *a, **k: m.decoder.teacher_forced_features(*a, **k),
                           rngs={"dropout": rng})
    return project(p["decoder"]["out_kernel"], p["decoder"]["out_bias"], feats)

  def loss(p):
    feats = model.apply({"params": p}, batch["src"], batch["src_lengths"], batch["trg_in"],
                        train=True, rngs={"dropout": rng}, method=Seq2Seq.teacher_forced_features)
    return project(p["decoder"]["out_kernel"], p["decoder"]["out_bias"], feats)

  dec = params["decoder"]
  feats = jnp.ones((shapes.batch, shapes.trg_len, dec["out_kernel"].shape[0]), jnp.float32)
  timeit("encoder fwd (+ key projection)", encode, params)
  timeit("encoder fwd+bwd", jax.grad(encode), params)
  timeit("decoder + loss fwd", decode, params, s0, cache)
  timeit("decoder + loss fwd+bwd", jax.grad(decode, argnums=(0, 1, 2)), params, s0, cache)
  timeit("output projection + loss (fused) fwd",
         project, dec["out_kernel"], dec["out_bias"], feats)
  timeit("output projection + loss (fused) fwd+bwd",
         jax.grad(project, argnums=(0, 1, 2)), dec["out_kernel"], dec["out_bias"], feats)
  timeit("model + loss fwd", loss, params)
  timeit("model + loss fwd+bwd", jax.grad(loss), params)
  for unroll in unrolls:
    cfg = dataclasses.replace(config, scan_unroll=unroll)
    case = flax_cases.train_case(cfg, models.params, batch_np, shapes, seed)
    times = call_times(case.fn, repeats)
    name = f"full train step (scan_unroll={unroll})"
    out[name] = dict(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times))
    show(name)

  def derive(name, plus, minus):
    out[name] = {k: sum(out[p][k] for p in plus) - sum(out[m][k] for m in minus)
                 for k in ("median_ms", "min_ms")}
    show(name)

  derive("derived: decoder scan (+ emb gates) fwd", ["decoder + loss fwd"],
         ["output projection + loss (fused) fwd"])
  derive("derived: decoder scan (+ emb gates) fwd+bwd", ["decoder + loss fwd+bwd"],
         ["output projection + loss (fused) fwd+bwd"])
  derive("derived: optimizer (clip + adam) and pmap", [f"full train step (scan_unroll={unrolls[0]})"],
         ["model + loss fwd+bwd"])
  return out
