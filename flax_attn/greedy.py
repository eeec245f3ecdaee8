"""Batched greedy decoding (beam search lives in `flax_attn.beam`)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from flax_attn.config import Seq2SeqConfig
from flax_attn.model import Seq2Seq, check_inputs, transposed_out_kernel
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

  batch, src_len = src.shape
  out_kernel_VxF = transposed_out_kernel(params)  # once, not once per step

  def cond(carry):
    i, _, _, done, _, _ = carry
    return (i < max_len) & ~jnp.all(done)

  def body(carry):
    i, s, token, done, tokens_LxB, attn_LxBxS = carry
    s, logits, attn = model.apply(variables, s, token, cache, out_kernel_VxF,
                                  method=Seq2Seq.decode_step)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # no softmax: it keeps the order
    tokens_LxB = jax.lax.dynamic_update_index_in_dim(tokens_LxB, token, i, axis=0)
    attn_LxBxS = jax.lax.dynamic_update_index_in_dim(attn_LxBxS, attn, i, axis=0)
    return i + 1, s, token, done | (token == config.eos_id), tokens_LxB, attn_LxBxS

  # Stops when every row has produced EOS (or after max_len steps); `finish`
  # pads each row after its first EOS, so the steps skipped could not change
  # the output. The carry is typed like the inputs (shard_map checks it is the
  # same in and out); under shard_map each device stops when its own rows end.
  init = varying_like((jnp.array(0, jnp.int32), s0, jnp.full((batch,), config.bos_id, jnp.int32),
                       jnp.zeros((batch,), bool), jnp.full((max_len, batch), config.pad_id, jnp.int32),
                       jnp.zeros((max_len, batch, src_len), jnp.float32)), s0, cache)
  _, _, _, _, tokens_LxB, attn_LxBxS = jax.lax.while_loop(cond, body, init)
  return finish(config, tokens_LxB.T, attn_LxBxS.transpose(1, 0, 2))


def greedy_decode(config: Seq2SeqConfig, params: Any, src: jax.Array, src_lengths: jax.Array,
                  max_len: int) -> DecodeOutput:
  """Greedy decoding of a padded batch, at most `max_len` steps (jit-compiled).

  Args:
    config: the model's `Seq2SeqConfig`.
    params: its parameters.
    src: `[batch, src_len]` int32; src_lengths: `[batch]`.
    max_len: at most this many decoding steps (a row ends at its first EOS;
      decoding stops once every row has ended).

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
