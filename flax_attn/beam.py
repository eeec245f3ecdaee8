"""Batched beam search with the GNMT length penalty (jit-compiled).

The encoder runs once per batch. Its outputs are copied `beam_size` times into
the beam cache (`[batch*beam, ...]`); every row of a sentence's copies is the
same, so only the per-beam decoder state (and the token and attention history)
follows the beams' parent indices from step to step.

Each step of the `lax.while_loop` scores every live hypothesis's extensions,
`beam x vocab` per sentence, and keeps the best `2*beam` candidates: enough
that `beam` of them do not end in EOS. The best `beam` non-EOS candidates
become the new live hypotheses. A candidate ending in EOS is finished if it
ranks among the best `beam` candidates (as in fairseq, so that `beam_size=1,
alpha=0` is exactly greedy decoding); it is scored

  score(Y) = log P(Y) / lp(Y),   lp(Y) = ((5 + |Y|) / 6) ** alpha

(Wu et al., 2016; |Y| counts the tokens including EOS) and merged into the
sentence's `n_best` best finished hypotheses.

A sentence stops at its length limit, `min(L, ceil(max_len_ratio * src_length
+ max_len_offset))`, or earlier once no live hypothesis can beat its worst kept
finished one: log probabilities only decrease as a hypothesis grows and, for
`alpha >= 0`, `lp` grows with the length, so `log P(live) / lp(limit)` bounds
every score a live hypothesis can still reach. The loop ends when every
sentence has stopped, or after `L` steps. A sentence with fewer than `n_best`
finished hypotheses at its limit fills the remaining places with its best live
ones (unfinished: no EOS, length = its limit).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np

from flax_attn import decode_config
from flax_attn.config import Seq2SeqConfig
from flax_attn.model import Seq2Seq, check_inputs, transposed_out_kernel
from flax_attn.parallel import varying_like

# Log probability and score of an empty slot (a live beam that does not exist
# yet, a finished slot not yet filled). Never fed to a softmax; it only meets
# finite additions, positive divisions, comparisons and top-k.
NEG_INF = -jnp.inf


class BeamOutput(NamedTuple):
  """The `n_best` hypotheses of every sentence, best first.

  tokens: `[batch, n_best, max_len]` int32, EOS included, `pad_id` after.
  lengths: `[batch, n_best]` int32, tokens up to and including EOS (an
    unfinished hypothesis has no EOS and the sentence's length limit).
  scores: `[batch, n_best]` float32 length-penalised log probabilities;
    finished hypotheses come first, each group in descending order.
  log_probs: `[batch, n_best]` float32 summed token log probabilities.
  attention: `[batch, n_best, max_len, src_len]` float32, zero after the
    hypothesis's length.

  A slot that holds no hypothesis (only possible when fewer than `n_best`
  sequences fit the length limit) has score and log_prob `-inf`, length 0
  and `pad_id` tokens.
  """

  tokens: jax.Array
  lengths: jax.Array
  scores: jax.Array
  log_probs: jax.Array
  attention: jax.Array


@flax.struct.dataclass
class BeamState:
  """The `lax.while_loop` carry (B = batch, K = beam, N = n_best, L = max
  length, S = src_len, H = dec_hidden).

  step: `[]` int32, tokens decoded so far (the position written next).
  live_seqs: `[B, K, L]` int32 tokens of the live hypotheses, `pad_id` after
    `step`; live_log_probs `[B, K]` (descending, `-inf` for empty beams);
    live_states `[B, K, H]` decoder states; live_attention `[B, K, L, S]`.
  finished_seqs: `[B, N, L]`; finished_scores `[B, N]` (descending, `-inf`
    when empty); finished_log_probs `[B, N]`; finished_lengths `[B, N]`;
    finished_attention `[B, N, L, S]`; finished_flags `[B, N]` (slot filled).
  """

  step: jax.Array
  live_seqs: jax.Array
  live_log_probs: jax.Array
  live_states: jax.Array
  live_attention: jax.Array
  finished_seqs: jax.Array
  finished_scores: jax.Array
  finished_log_probs: jax.Array
  finished_lengths: jax.Array
  finished_attention: jax.Array
  finished_flags: jax.Array


def length_penalty(length: jax.Array, alpha: jax.Array) -> jax.Array:
  """GNMT length penalty `((5 + length) / 6) ** alpha` (1 when alpha is 0)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather(tree: Any, index_BxK: jax.Array) -> Any:
  """Picks entries along axis 1 of every `[B, M, ...]` leaf: `[B, K, ...]`."""
  return jax.tree.map(lambda x: jax.vmap(lambda row, i: row[i])(x, index_BxK), tree)


def _where_rows(keep_B: jax.Array, new: Any, old: Any) -> Any:
  """Per sentence: `new` where `keep_B`, else `old`, for every `[B, ...]` leaf;
  scalar leaves come from `new`."""
  def pick(n, o):
    if n.ndim == 0:
      return n
    return jnp.where(keep_B.reshape(keep_B.shape + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


@functools.partial(jax.jit, static_argnames=("config", "beam_size", "n_best", "max_len"))
def _beam_search(config: Seq2SeqConfig, params, src_BxS: jax.Array, src_lengths_B: jax.Array,
                 limit_table: jax.Array, alpha: jax.Array, *, beam_size: int, n_best: int,
                 max_len: int) -> BeamOutput:
  """The compiled search; `limit_table[n]` is the length limit of a source
  of length n (already clipped to `[1, max_len]`)."""
  model = Seq2Seq(config)
  variables = {"params": params}
  batch, src_len = src_BxS.shape
  K, N, L, V = beam_size, n_best, max_len, config.trg_vocab_size
  limits_B = limit_table[src_lengths_B]

  s0_BxH, cache = model.apply(variables, src_BxS, src_lengths_B, method=Seq2Seq.encode)
  hidden = s0_BxH.shape[-1]
  beam_cache = jax.tree.map(lambda x: jnp.repeat(x, K, axis=0), cache)  # [B*K, ...]
  out_kernel_VxF = transposed_out_kernel(params)  # once, not once per step

  def can_improve(state: BeamState) -> jax.Array:
    """`[B]`: the sentence is within its limit and a live hypothesis could
    still beat its worst kept finished one."""
    best_live = state.live_log_probs[:, 0] / length_penalty(limits_B, alpha)
    worst_finished = jnp.where(state.finished_flags[:, -1], state.finished_scores[:, -1],
                               NEG_INF)
    return (state.step < limits_B) & (best_live > worst_finished)

  def cond_fn(state: BeamState) -> jax.Array:
    return (state.step < L) & jnp.any(can_improve(state))

  def body_fn(state: BeamState) -> BeamState:
    i = state.step
    prev = jax.lax.dynamic_index_in_dim(state.live_seqs, jnp.maximum(i - 1, 0), axis=2,
                                        keepdims=False)
    token_BxK = jnp.where(i == 0, config.bos_id, prev)
    s_flat, logits, attn_flat = model.apply(
        variables, state.live_states.reshape(batch * K, hidden), token_BxK.reshape(batch * K),
        beam_cache, out_kernel_VxF, method=Seq2Seq.decode_step)
    log_probs_BxKxV = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, K, V)

    # The best 2K of the K x V extensions (parents' histories with the new step).
    candidates = (state.live_log_probs[:, :, None] + log_probs_BxKxV).reshape(batch, K * V)
    cand_log_probs, flat_index = jax.lax.top_k(candidates, min(2 * K, K * V))
    parent, cand_tokens = flat_index // V, (flat_index % V).astype(jnp.int32)
    cand_seqs, cand_states, cand_attn, step_attn = _gather(
        (state.live_seqs, s_flat.reshape(batch, K, hidden), state.live_attention,
         attn_flat.reshape(batch, K, src_len)), parent)
    cand_seqs = cand_seqs.at[:, :, i].set(cand_tokens)
    cand_attn = cand_attn.at[:, :, i].set(step_attn)
    is_eos = cand_tokens == config.eos_id
    exists = cand_log_probs > NEG_INF

    # Live: the best K candidates that do not end in EOS.
    live_log_probs, live_index = jax.lax.top_k(jnp.where(is_eos, NEG_INF, cand_log_probs), K)
    live_seqs, live_states, live_attn = _gather((cand_seqs, cand_states, cand_attn), live_index)

    # Finished: EOS candidates among the best K, merged with the kept ones.
    in_beam = jnp.arange(cand_log_probs.shape[1]) < K
    new_flags = is_eos & exists & in_beam
    new_scores = jnp.where(new_flags, cand_log_probs / length_penalty(i + 1, alpha), NEG_INF)
    merged = (
        jnp.concatenate([state.finished_seqs, cand_seqs], axis=1),
        jnp.concatenate([state.finished_log_probs, cand_log_probs], axis=1),
        jnp.concatenate([state.finished_lengths,
                         jnp.full(cand_tokens.shape, i + 1, jnp.int32)], axis=1),
        jnp.concatenate([state.finished_attention, cand_attn], axis=1),
        jnp.concatenate([state.finished_flags, new_flags], axis=1))
    merged_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    # Empty slots rank last; among equal scores the older hypothesis wins.
    finished_scores, keep = jax.lax.top_k(merged_scores, N)
    fin_seqs, fin_log_probs, fin_lengths, fin_attn, fin_flags = _gather(merged, keep)

    new = BeamState(
        step=i + 1, live_seqs=live_seqs, live_log_probs=live_log_probs,
        live_states=live_states, live_attention=live_attn, finished_seqs=fin_seqs,
        finished_scores=finished_scores, finished_log_probs=fin_log_probs,
        finished_lengths=fin_lengths, finished_attention=fin_attn, finished_flags=fin_flags)
    # A sentence past its limit keeps its state (the batch runs on).
    return _where_rows(i < limits_B, new, state)

  # Built from constants but typed like the encoder's outputs, so that under
  # `shard_map` every carry has the same type going into the loop and out.
  init = varying_like(BeamState(
      step=jnp.array(0, jnp.int32),
      live_seqs=jnp.full((batch, K, L), config.pad_id, jnp.int32),
      live_log_probs=jnp.tile(jnp.array([0.0] + [NEG_INF] * (K - 1), jnp.float32), (batch, 1)),
      live_states=jnp.broadcast_to(s0_BxH[:, None, :], (batch, K, hidden)),
      live_attention=jnp.zeros((batch, K, L, src_len), jnp.float32),
      finished_seqs=jnp.full((batch, N, L), config.pad_id, jnp.int32),
      finished_scores=jnp.full((batch, N), NEG_INF, jnp.float32),
      finished_log_probs=jnp.full((batch, N), NEG_INF, jnp.float32),
      finished_lengths=jnp.zeros((batch, N), jnp.int32),
      finished_attention=jnp.zeros((batch, N, L, src_len), jnp.float32),
      finished_flags=jnp.zeros((batch, N), bool)), s0_BxH, cache)
  final = jax.lax.while_loop(cond_fn, body_fn, init)

  # Finished hypotheses first, then the best live ones (all of one sentence's
  # live hypotheses have the same length and hence the same penalty).
  live_lengths = jnp.minimum(final.step, limits_B)
  live_scores = final.live_log_probs / length_penalty(live_lengths, alpha)[:, None]
  n_finished = final.finished_flags.sum(axis=1)
  slot = jnp.arange(N)[None, :]
  from_finished = slot < n_finished[:, None]
  live_slot = jnp.clip(slot - n_finished[:, None], 0, K - 1)
  live = _gather((final.live_seqs, final.live_log_probs, live_scores, final.live_attention),
                 live_slot)
  live_exists = live[1] > NEG_INF

  def choose(finished_x, live_x, empty):
    fin_mask = from_finished.reshape(from_finished.shape + (1,) * (finished_x.ndim - 2))
    live_mask = live_exists.reshape(live_exists.shape + (1,) * (live_x.ndim - 2))
    return jnp.where(fin_mask, finished_x, jnp.where(live_mask, live_x, empty))

  out = BeamOutput(
      tokens=choose(final.finished_seqs, live[0], config.pad_id),
      lengths=choose(final.finished_lengths, jnp.broadcast_to(live_lengths[:, None], (batch, N)),
                     0).astype(jnp.int32),
      scores=choose(final.finished_scores, live[2], NEG_INF),
      log_probs=choose(final.finished_log_probs, live[1], NEG_INF),
      attention=choose(final.finished_attention, live[3], 0.0))
  chex.assert_shape(out.tokens, (batch, N, L))
  chex.assert_shape(out.attention, (batch, N, L, src_len))
  return out


def _positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")


def beam_search(config: Seq2SeqConfig, params: Any, src: jax.Array, src_lengths: jax.Array,
                beam_size: int = 5, alpha: float = 0.6, max_len_ratio: float = 2.0,
                max_len_offset: float = 10, max_len: int | None = None,
                n_best: int = 1) -> BeamOutput:
  """Beam search over a padded batch of source sentences (jit-compiled).

  Args:
    config: the model's `Seq2SeqConfig` (static).
    params: its parameters.
    src: `[batch, src_len]` int32 source ids; src_lengths: `[batch]`.
    beam_size: hypotheses kept per sentence (static; 1 with `alpha=0` is
      greedy decoding).
    alpha: GNMT length-penalty exponent, >= 0 (0: plain log probability).
    max_len_ratio, max_len_offset: a sentence of source length n decodes at
      most `ceil(max_len_ratio * n + max_len_offset)` tokens.
    max_len: `L`, the output width and a cap on every sentence's limit
      (static); None: the limit of a source as long as `src_len`.
    n_best: hypotheses returned per sentence, `<= beam_size` (static).

  Returns:
    `BeamOutput` with tokens `[batch, n_best, L]`, lengths, scores and
    log_probs `[batch, n_best]` and attention `[batch, n_best, L, src_len]`.

  Raises:
    ValueError: bad options or malformed inputs (`model.check_inputs`); source
      ids outside the vocabulary and bad lengths only when concrete. It also
      runs inside `jax.jit`, `pmap` and `jax.shard_map` (a data-parallel
      batch: `src` and `src_lengths` split over the mesh, `params`
      replicated; each device stops when its own sentences are done),
      unchecked there.
  """
  decode_config.check(beam_size, alpha, max_len_ratio, n_best=n_best)  # the one set of rules
  src = jnp.asarray(src)
  src_lengths = jnp.asarray(src_lengths)
  check_inputs(src, src_lengths, config=config)
  src_len = src.shape[1]
  per_length = [math.ceil(max_len_ratio * n + max_len_offset) for n in range(src_len + 1)]
  if max_len is None:
    max_len = per_length[-1]
    if max_len < 1:
      raise ValueError(f"max_len_ratio * src_len + max_len_offset must be >= 1, got {max_len}")
  _positive_int("max_len", max_len)
  limit_table = np.clip(per_length, 1, max_len).astype(np.int32)
  return _beam_search(config, params, src.astype(jnp.int32), src_lengths.astype(jnp.int32),
                      jnp.asarray(limit_table), jnp.float32(alpha), beam_size=int(beam_size),
                      n_best=int(n_best), max_len=int(max_len))
