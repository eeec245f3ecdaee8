"""flax_attn's timed cases: the project's own train step, greedy decoder and beam search."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.harness import Case, Shapes
from flax_attn import parallel
from flax_attn import steps as steps_lib
from flax_attn.beam import beam_search
from flax_attn.config import Seq2SeqConfig
from flax_attn.greedy import greedy_decode
from flax_attn.optimizer import make_optimizer

FLAX = "flax_attn"
BEAM_SIZE = 5


def device_batch(config: Seq2SeqConfig, batch_np) -> dict:
  """The harness batch as `train_step` takes it, sharded for one device."""
  trg = batch_np["trg"]
  batch = dict(src=batch_np["src"], src_lengths=batch_np["src_lengths"], trg_in=trg[:, :-1],
               trg_out=trg[:, 1:], weights=(trg[:, 1:] != config.pad_id).astype(np.float32))
  return parallel.shard(batch, 1)


def train_case(config: Seq2SeqConfig, params, batch_np, shapes: Shapes, seed: int = 0) -> Case:
  """The project's own pmapped `flax_attn.steps.train_step` (on one device):
  masked cross entropy, clip_by_global_norm(1.0), Adam 1e-3, state donated."""
  tx = make_optimizer("adam", 1e-3, clip_norm=1.0)
  params = jax.tree.map(jnp.array, params)
  state = steps_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params), rng=jax.random.PRNGKey(seed),
                               lr_scale=jnp.ones((), jnp.float32))
  batch = device_batch(config, batch_np)
  step = parallel.pmap(functools.partial(steps_lib.train_step, model_config=config, tx=tx,
                                         teacher_forcing=1.0))
  holder = [parallel.replicate(state, 1)]

  def fn():
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready((holder[0], metrics))
    return metrics

  t0 = time.perf_counter()
  fn()
  compile_s = time.perf_counter() - t0  # first call: compilation plus one step
  t0 = time.perf_counter()
  fn()
  compile_s = max(compile_s - (time.perf_counter() - t0), 0.0)
  return Case(FLAX, "train", fn, shapes.tokens, compile_s=compile_s)


def eos_banned(params, config: Seq2SeqConfig):
  """`params` as jax arrays with EOS's output bias at -1e9 (never chosen)."""
  params = jax.tree.map(jnp.asarray, params)
  params["decoder"]["out_bias"] = params["decoder"]["out_bias"].at[config.eos_id].set(-1e9)
  return params


def greedy_case(config: Seq2SeqConfig, params, batch_np, shapes: Shapes) -> Case:
  """`flax_attn.greedy.greedy_decode`, exactly `trg_len` steps.

  Greedy decoding stops once every row has produced EOS, and untrained
  weights pick EOS now and then; the PyTorch peers always decode `trg_len`
  steps. Banning EOS (its output bias -1e9) makes both do the same work.
  """
  params = eos_banned(params, config)
  src, lengths = jnp.asarray(batch_np["src"]), jnp.asarray(batch_np["src_lengths"])

  def fn():
    return jax.block_until_ready(greedy_decode(config, params, src, lengths, shapes.trg_len))

  return Case(FLAX, "greedy", fn, shapes.tokens, extra={"max_len": shapes.trg_len,
                                                        "eos_banned": True})


def beam_case(config: Seq2SeqConfig, params, batch_np, shapes: Shapes) -> Case:
  """`flax_attn.beam.beam_search`, beam 5, exactly `trg_len` steps.

  Untrained weights make EOS about as likely as any token, and beam search
  stops once no live hypothesis can beat a finished one (after ~3 steps).
  Banning EOS (its output bias -1e9) makes every call decode `trg_len` steps.
  """
  params = eos_banned(params, config)
  src, lengths = jnp.asarray(batch_np["src"]), jnp.asarray(batch_np["src_lengths"])

  def fn():
    return jax.block_until_ready(beam_search(config, params, src, lengths, beam_size=BEAM_SIZE,
                                             max_len=shapes.trg_len))

  return Case(FLAX, "beam", fn, shapes.tokens,
              extra={"beam_size": BEAM_SIZE, "max_len": shapes.trg_len, "eos_banned": True})
