"""Batched greedy decoding (beam search lives in `flax_attn.beam`)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from flax_attn.config import Seq2SeqConfig
from flax_attn.model import Seq2Seq, check_inputs
from flax_attn.parallel import varying_like


class DecodeOutput(NamedTuple):
  """tokens `[batch, max_len]` int32 (EOS included, `pad_id` after it);
  lengths `[batch]` (tokens up to and including EOS, `max_len` if none);
  attention `[batch, max_len, src_len]` (zero after EOS)."""

  tokens: jax.Array
  lengths: jax.Array
  attention: jax.Array


def finish(config: Seq2SeqConfig, tokens_BxL: jax.Array, attention_BxLxS: jax.Array) -> DecodeOutput:
  """Cuts every row at its first EOS: pads after it and counts its length."""
  is_eos = tokens_BxL == config.eos_id
  max_len = tokens_BxL.shape[1]
  first_eos = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), max_len - 1)
  lengths = jnp.where(is_eos.any(axis=1), first_eos + 1, max_len).astype(jnp.int32)
  live = jnp.arange(max_len)[None, :] < lengths[:, None]
  tokens = jnp.where(live, tokens_BxL, config.pad_id)
  return DecodeOutput(tokens, lengths, attention_BxLxS * live[:, :, None])


@functools.partial(jax.jit, static_argnames=("config", "max_len"))
def _greedy(config: Seq2SeqConfig, params, src, src_lengths, max_len: int) -> DecodeOutput:
  model = Seq2Seq(config)
  variables = {"params": params}
  s0, cache = model.apply(variables, src, src_lengths, method=Seq2Seq.encode)

  def step(carry, _):
    s, token = carry
    s, logits, attn = model.apply(variables, s, token, cache, method=Seq2Seq.decode_step)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return (s, token), (token, attn)

  # The carry's type follows the inputs (shard_map checks it is the same in and out).
  bos = varying_like(jnp.full((src.shape[0],), config.bos_id, jnp.int32), s0, cache)
  _, (tokens_LxB, attn_LxBxS) = jax.lax.scan(step, (s0, bos), None, length=max_len,
                                             unroll=config.scan_unroll)
  return finish(config, tokens_LxB.T, attn_LxBxS.transpose(1, 0, 2))


def greedy_decode(config: Seq2SeqConfig, params: Any, src: jax.Array, src_lengths: jax.Array,
                  max_len: int) -> DecodeOutput:
  """Greedy decoding of a padded batch, `max_len` steps (jit-compiled).

  Args:
    config: the model's `Seq2SeqConfig`.
    params: its parameters.
    src: `[batch, src_len]` int32; src_lengths: `[batch]`.
    max_len: number of decoding steps (a row ends at its first EOS).

  Returns:
    `DecodeOutput(tokens, lengths, attention)`.

  Raises:
    ValueError: malformed inputs (`model.check_inputs`); source ids outside
      the vocabulary and bad lengths only when concrete. It also runs inside
      `jax.jit`, `pmap` and `jax.shard_map` (a data-parallel batch: `src` and
      `src_lengths` split over the mesh, `params` replicated), unchecked there.
  """
  if not isinstance(max_len, int) or max_len < 1:
    raise ValueError(f"max_len must be a positive int, got {max_len!r}")
  src = jnp.asarray(src)
  src_lengths = jnp.asarray(src_lengths)
  check_inputs(src, src_lengths, config=config)
  return _greedy(config, params, src.astype(jnp.int32), src_lengths.astype(jnp.int32), max_len)
