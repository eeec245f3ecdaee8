"""Decoder: attention -> GRU on [embedding; context] -> Dense([s; c; embedding]).

One step, from the previous state `s` and the previous token `y`:

  c, a = attention(s, memory)                 (query W s, keys U h_j hoisted)
  s'   = GRU(s, [emb(y); c])                  (emb(y) W_ie hoisted when known)
  logits = Dense([s'; c; emb(y)])

Under full teacher forcing every input token is known in advance, so the
embedding's share of the GRU input gates is one matmul over the whole target
before the scan and the output projection is one matmul after it; only the
attention and the recurrence run inside the `nn.scan`. With a
teacher-forcing ratio below 1 (scheduled sampling) the next input depends on
the previous prediction, so the projection and argmax run inside the scan.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_attn.attention import AdditiveAttention, attend, mask_bias
from flax_attn.config import Seq2SeqConfig
from flax_attn.deferred import defer_weight_grads
from flax_attn.gru import GRUCell, dense, gru_update, weight_init


def static_ratio(teacher_forcing: Any) -> float:
  """`teacher_forcing` as a Python float in [0, 1]; it picks the code path
  (hoisted teacher forcing, free running or scheduled sampling) when
  tracing, so it must be static: a traced value raises `TypeError`."""
  if isinstance(teacher_forcing, jax.core.Tracer):
    raise TypeError("teacher_forcing must be a static Python float, not a traced value: pass "
                    "a number (bind it with functools.partial or mark it static in jax.jit)")
  try:
    value = float(teacher_forcing)
  except TypeError:
    raise TypeError(f"teacher_forcing must be a float in [0, 1], got {teacher_forcing!r}") from None
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"teacher_forcing must be in [0, 1], got {teacher_forcing!r}")
  return value


class DecoderCache(NamedTuple):
  """Per-sentence tensors the decoder reuses at every step.

  memory: `[batch, src_len, 2*enc_hidden]` encoder states.
  keys: `[batch, src_len, attn]` projected keys `U h_j + b`.
  bias: `[batch, src_len]` additive mask (0 real, large negative padding).
  """

  memory: jax.Array
  keys: jax.Array
  bias: jax.Array


class _StepWeights(NamedTuple):
  """The parameters one decoder step reads, as stored (no copies)."""

  w_query: jax.Array      # [dec_hidden, attn]
  v: jax.Array            # [attn]
  w_hh: jax.Array         # [dec_hidden, 3*dec_hidden]
  b_hh: jax.Array         # [3*dec_hidden]
  w_ih: jax.Array         # [emb + 2*enc_hidden, 3*dec_hidden], input [emb; context]
  b_ih: jax.Array         # [3*dec_hidden]
  w_out: jax.Array        # [dec_hidden + 2*enc_hidden + emb, trg_vocab]
  b_out: jax.Array        # [trg_vocab]
  embedding: jax.Array    # [trg_vocab, emb]


def _recur(w_sh, w_ic, w: _StepWeights, cache: DecoderCache, s_BxH, gi_emb_Bx3H, dtype,
           z_sh, z_ic):
  """Teacher-forced step body: attention on `s`, then the GRU update.

  `w_sh = [W_query | W_hh]` gives both projections of `s` in one matmul;
  `gi_emb` (the embedding's share of the input gates) arrives precomputed;
  `z_sh`, `z_ic` are the zero offsets of `flax_attn.deferred`. Returns
  (s', context, weights).
  """
  attn_dim = w.v.shape[0]
  sp = dense(s_BxH, w_sh, None, dtype) + z_sh
  query, gh = sp[:, :attn_dim], sp[:, attn_dim:] + w.b_hh.astype(jnp.float32)
  context, weights = attend(query, cache.keys, w.v, cache.memory, cache.bias, dtype)
  gi = gi_emb_Bx3H + dense(context, w_ic, None, dtype) + z_ic
  return gru_update(gi, gh, s_BxH), context, weights


def _full_step(w: _StepWeights, cache: DecoderCache, s_BxH, emb_BxE, dtype,
               out_keep_BxF=None, out_kernel_VxF=None):
  """A whole step from an embedded input, reading the parameters as stored:
  returns (s', logits, weights). `out_keep_BxF` (scaled 0/1, `[batch,
  dec_hidden + 2*enc_hidden]`) is the output dropout's mask on `[s'; c]`.
  `out_kernel_VxF`, when given, is `out_kernel` transposed, `[trg_vocab,
  features]`: the output projection then reads it (a decoding loop transposes
  the kernel once; on a CPU the projection runs faster in that layout)."""
  query = dense(s_BxH, w.w_query, None, dtype)
  gh = dense(s_BxH, w.w_hh, w.b_hh, dtype)
  context, weights = attend(query, cache.keys, w.v, cache.memory, cache.bias, dtype)
  emb = emb_BxE.astype(jnp.float32)
  gi = dense(jnp.concatenate([emb, context], axis=-1), w.w_ih, w.b_ih, dtype)
  s_new = gru_update(gi, gh, s_BxH)
  state_context = jnp.concatenate([s_new, context], axis=-1)
  if out_keep_BxF is not None:
    state_context = state_context * out_keep_BxF
  features = jnp.concatenate([state_context, emb], axis=-1)
  if out_kernel_VxF is None:
    return s_new, dense(features, w.w_out, w.b_out, dtype), weights
  logits = jnp.einsum("bf,vf->bv", features.astype(dtype), out_kernel_VxF.astype(dtype),
                      preferred_element_type=jnp.float32) + w.b_out.astype(jnp.float32)
  return s_new, logits, weights


class _TeacherForcedBody(nn.Module):
  """Scan body under full teacher forcing: `gi_emb` arrives precomputed."""

  dtype: Any

  @nn.compact
  def __call__(self, s_BxH, xs, consts):
    gi_emb_Bx3H, z_sh, z_ic = xs
    w_sh, w_ic, w, cache = consts
    s_new, context, weights = _recur(w_sh, w_ic, w, cache, s_BxH, gi_emb_Bx3H, self.dtype,
                                     z_sh, z_ic)
    return s_new, (s_new, context, weights)


_SCAN_KW = dict(variable_broadcast="params", split_rngs={"params": False},
                in_axes=(0, nn.broadcast), out_axes=0)


@functools.cache
def _teacher_forced_scan_module(dtype, unroll: int) -> nn.Module:
  return nn.scan(_TeacherForcedBody, unroll=unroll, **_SCAN_KW)(dtype=dtype, parent=None)


def _teacher_forced_run(dtype, unroll, weights, zs, w, cache, s0_BxH, gi_emb_TxBx3H):
  w_sh, w_ic = weights
  _, outputs = _teacher_forced_scan_module(dtype, unroll).apply(
      {}, s0_BxH, (gi_emb_TxBx3H, *zs), (w_sh, w_ic, w, cache))
  return outputs


def _teacher_forced_inputs(outputs, w, cache, s0_BxH, gi_emb_TxBx3H):
  """What multiplied W_sh (the previous states) and W_ic (the contexts)."""
  del w, cache, gi_emb_TxBx3H
  s_TxBxH, c_TxBxM, _ = outputs
  return jnp.concatenate([s0_BxH[None], s_TxBxH[:-1]], axis=0), c_TxBxM


@functools.cache
def _teacher_forced_scan(dtype, unroll: int):
  """`f((w_sh, w_ic), z_shapes, w, cache, s0, gi_emb) -> (s, c, a)` stacked over
  time, with the two big recurrent weights' gradients deferred."""
  return defer_weight_grads(functools.partial(_teacher_forced_run, dtype, unroll),
                            _teacher_forced_inputs)


class _SampledBody(nn.Module):
  """Scan body with scheduled sampling: feeds back its own argmax where the
  per-(row, step) coin says so; the dropout masks are precomputed (`None`:
  that dropout is off, and the step does no masking work)."""

  dtype: Any

  @nn.compact
  def __call__(self, carry, xs, consts):
    s_BxH, prev_pred_B = carry
    token_B, teacher_B, keep_BxE, out_keep_BxF = xs
    w, cache = consts
    y_B = jnp.where(teacher_B, token_B, prev_pred_B)
    emb = jnp.take(w.embedding, y_B, axis=0).astype(jnp.float32)
    if keep_BxE is not None:
      emb = emb * keep_BxE
    s_new, logits, weights = _full_step(w, cache, s_BxH, emb, self.dtype, out_keep_BxF)
    pred_B = jnp.argmax(logits, axis=-1).astype(token_B.dtype)
    return (s_new, pred_B), (logits, weights)


class Decoder(nn.Module):
  """The attention decoder.

  Parameters: `embedding/embedding [trg_vocab, emb]`, `attention/...` (see
  `AdditiveAttention`), `gru/...` (a `GRUCell` whose input is
  `[emb; context]`, in that order) and `out_kernel [dec_hidden +
  2*enc_hidden + emb, trg_vocab]`, `out_bias` over `[s'; context; emb]`.
  """

  config: Seq2SeqConfig

  def setup(self) -> None:
    cfg = self.config
    init = weight_init(cfg.init_std)
    self.embedding = nn.Embed(cfg.trg_vocab_size, cfg.emb_dim, embedding_init=init,
                              param_dtype=cfg.params_dtype, name="embedding")
    self.attention = AdditiveAttention(
        query_dim=cfg.dec_hidden, memory_dim=cfg.memory_dim, attn_dim=cfg.attention_dim,
        init_std=cfg.init_std, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
        name="attention")
    self.gru = GRUCell(input_dim=cfg.emb_dim + cfg.memory_dim, hidden_dim=cfg.dec_hidden,
                       init_std=cfg.init_std, dtype=cfg.compute_dtype,
                       param_dtype=cfg.params_dtype, name="gru")
    out_dim = cfg.dec_hidden + cfg.memory_dim + cfg.emb_dim
    self.out_kernel = self.param("out_kernel", init, (out_dim, cfg.trg_vocab_size),
                                 cfg.params_dtype)
    self.out_bias = self.param("out_bias", nn.initializers.zeros_init(),
                               (cfg.trg_vocab_size,), cfg.params_dtype)
    self.dropout = nn.Dropout(cfg.dropout)
    self.out_dropout = nn.Dropout(cfg.out_dropout)
    # The time loops: nn.scan over parameter-free bodies (every weight arrives
    # as a broadcast argument, so the hoisted matmuls outside share them).
    # The teacher-forced scan runs as a pure function (see `_teacher_forced_scan`).
    self.sampled_scan = nn.scan(_SampledBody, unroll=cfg.scan_unroll, **_SCAN_KW)(
        dtype=cfg.compute_dtype, name="sampled_scan")

  def _keep_mask(self, train: bool, rate: float, shape) -> jax.Array | None:
    """A dropout mask (kept entries `1 / (1 - rate)`, dropped 0); `None` when
    not training or `rate` is 0 (no random numbers drawn, nothing to multiply)."""
    if not train or rate == 0.0:
      return None
    keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - rate, shape)
    return keep.astype(jnp.float32) / (1.0 - rate)

  def _weights(self) -> _StepWeights:
    return _StepWeights(
        w_query=self.attention.query_kernel, v=self.attention.v,
        w_hh=self.gru.recurrent_kernel, b_hh=self.gru.recurrent_bias,
        w_ih=self.gru.input_kernel, b_ih=self.gru.input_bias,
        w_out=self.out_kernel, b_out=self.out_bias,
        embedding=self.embedding.embedding)

  def prepare(self, memory_BxSxM: jax.Array, mask_BxS: jax.Array) -> DecoderCache:
    """The per-sentence cache: keys projected once, mask turned into a bias."""
    return DecoderCache(memory=memory_BxSxM, keys=self.attention.project_keys(memory_BxSxM),
                        bias=mask_bias(mask_BxS))

  def step(self, s_BxH: jax.Array, token_B: jax.Array, cache: DecoderCache,
           out_kernel_VxF: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One inference step (no dropout): returns (s', logits `[batch, trg_vocab]`,
    attention weights `[batch, src_len]`). `out_kernel_VxF`: optionally
    `out_kernel` already transposed (see `transposed_out_kernel`)."""
    w = self._weights()
    emb = jnp.take(w.embedding, token_B, axis=0).astype(jnp.float32)
    return _full_step(w, cache, s_BxH, emb, self.config.compute_dtype,
                      out_kernel_VxF=out_kernel_VxF)

  def teacher_forced_features(self, s0_BxH: jax.Array, cache: DecoderCache,
                              trg_in_BxT: jax.Array, train: bool = False
                              ) -> tuple[jax.Array, jax.Array]:
    """Full teacher forcing up to the output projection: returns the
    projection's inputs `[s'; context; emb]`, `[batch, trg_len, dec_hidden +
    2*enc_hidden + emb]` float32, and the attention `[batch, trg_len, src_len]`.
    `logits = features @ out_kernel + out_bias` (`__call__` does that; the
    train step fuses it with the loss, `loss.projected_cross_entropy_sums`)."""
    cfg, w, dtype = self.config, self._weights(), self.config.compute_dtype
    batch, trg_len = trg_in_BxT.shape
    emb_BxTxE = self.dropout(self.embedding(trg_in_BxT), deterministic=not train)
    # Hoisted out of the scan: the embedding's share of the GRU input gates,
    # and the fused [W_query | W_hh] both of which multiply the previous state.
    w_ie, w_ic = w.w_ih[:cfg.emb_dim], w.w_ih[cfg.emb_dim:]
    w_sh = jnp.concatenate([w.w_query, w.w_hh], axis=1)
    gi_emb_TxBx3H = dense(emb_BxTxE, w_ie, w.b_ih, dtype).transpose(1, 0, 2)
    h3 = 3 * cfg.dec_hidden
    z_shapes = ((trg_len, batch, cfg.attention_dim + h3), (trg_len, batch, h3))
    s_TxBxH, c_TxBxM, a_TxBxS = _teacher_forced_scan(dtype, cfg.scan_unroll)(
        (w_sh, w_ic), z_shapes, w, cache, s0_BxH, gi_emb_TxBx3H)
    state_context_BxTxF = self.out_dropout(
        jnp.concatenate([s_TxBxH.transpose(1, 0, 2), c_TxBxM.transpose(1, 0, 2)], axis=-1),
        deterministic=not train)
    features = jnp.concatenate([state_context_BxTxF, emb_BxTxE.astype(jnp.float32)], axis=-1)
    return features, a_TxBxS.transpose(1, 0, 2)

  def __call__(self, s0_BxH: jax.Array, cache: DecoderCache, trg_in_BxT: jax.Array,
               train: bool = False, teacher_forcing: float = 1.0
               ) -> tuple[jax.Array, jax.Array]:
    """Runs the decoder over a target prefix batch.

    Args:
      s0_BxH: initial state from the encoder bridge.
      cache: `prepare(memory, mask)`.
      trg_in_BxT: int32 input tokens `[batch, trg_len]` (BOS first).
      train: enables embedding dropout and `out_dropout` (need a "dropout" RNG).
      teacher_forcing: probability of feeding the true previous token at each
        step and row (1: always, the hoisted fast path; 0: free running, the
        model's own argmax; in between: scheduled sampling with coins from
        the "dropout" RNG stream). Position 0 always gets `trg_in[:, 0]`. A
        static Python float in [0, 1] (it chooses the code path when tracing):
        a traced value raises `TypeError`, one outside [0, 1] `ValueError`.

    Returns:
      logits `[batch, trg_len, trg_vocab]` (float32) and attention weights
      `[batch, trg_len, src_len]`.
    """
    teacher_forcing = static_ratio(teacher_forcing)
    cfg = self.config
    batch, trg_len = trg_in_BxT.shape
    dtype = cfg.compute_dtype
    w = self._weights()
    if teacher_forcing >= 1.0:
      features_BxTxF, attn_BxTxS = self.teacher_forced_features(s0_BxH, cache, trg_in_BxT, train)
      logits_BxTxV = dense(features_BxTxF, w.w_out, w.b_out, dtype)
      chex.assert_shape(logits_BxTxV, (batch, trg_len, cfg.trg_vocab_size))
      return logits_BxTxV, attn_BxTxS
    token_TxB = trg_in_BxT.T
    if teacher_forcing <= 0.0:
      teacher_TxB = jnp.zeros((trg_len, batch), bool)
    else:
      teacher_TxB = jax.random.bernoulli(self.make_rng("dropout"), teacher_forcing,
                                         (trg_len, batch))
    teacher_TxB = teacher_TxB.at[0].set(True)
    keep_TxBxE = self._keep_mask(train, cfg.dropout, (trg_len, batch, cfg.emb_dim))
    out_keep_TxBxF = self._keep_mask(train, cfg.out_dropout,
                                     (trg_len, batch, cfg.dec_hidden + cfg.memory_dim))
    carry0 = (s0_BxH, trg_in_BxT[:, 0])
    _, (logits_TxBxV, a_TxBxS) = self.sampled_scan(
        carry0, (token_TxB, teacher_TxB, keep_TxBxE, out_keep_TxBxF), (w, cache))
    logits_BxTxV = logits_TxBxV.transpose(1, 0, 2)
    attn_BxTxS = a_TxBxS.transpose(1, 0, 2)
    chex.assert_shape(logits_BxTxV, (batch, trg_len, cfg.trg_vocab_size))
    return logits_BxTxV, attn_BxTxS
