"""Encoder: embedding -> dropout -> bidirectional GRU(s) over true lengths -> bridge.

Padding is handled like PyTorch's packed sequences: the forward direction
stops updating at each row's length, the backward direction starts at each
row's last real token, and the outputs at padded positions are zero. So no
amount of extra padding changes an output at a real position or a final state.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_attn.config import Seq2SeqConfig
from flax_attn.gru import GRUCell, dense, gru_update, weight_init


def reverse_within_lengths(x_BxSx: jax.Array, lengths_B: jax.Array) -> jax.Array:
  """Reverses each row's first `length` positions, leaving padding in place."""
  t_S = jnp.arange(x_BxSx.shape[1])
  idx_BxS = jnp.where(t_S[None, :] < lengths_B[:, None], lengths_B[:, None] - 1 - t_S[None, :],
                      t_S[None, :])
  idx = idx_BxS.reshape(idx_BxS.shape + (1,) * (x_BxSx.ndim - 2))
  return jnp.take_along_axis(x_BxSx, idx, axis=1)


class BiGRULayer(nn.Module):
  """One bidirectional GRU layer over a padded batch.

  Both directions run in one scan (a batched matmul over the direction
  axis); their input projections are computed for the whole sequence first.
  """

  input_dim: int
  hidden_dim: int
  init_std: float | None = 0.01
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  unroll: int = 1

  def setup(self):
    kw = dict(input_dim=self.input_dim, hidden_dim=self.hidden_dim, init_std=self.init_std,
              dtype=self.dtype, param_dtype=self.param_dtype)
    self.fwd = GRUCell(**kw)
    self.bwd = GRUCell(**kw)

  def __call__(self, x_BxSxD: jax.Array, lengths_B: jax.Array, mask_BxS: jax.Array):
    """Returns outputs `[batch, src_len, 2*hidden]` (zero on padding), the
    forward state at each row's last token and the backward state at its first
    token (both `[batch, hidden]`)."""
    batch, src_len, _ = x_BxSxD.shape
    gi_f = self.fwd.input_gates(x_BxSxD)                                   # [B, S, 3H]
    gi_b = self.bwd.input_gates(reverse_within_lengths(x_BxSxD, lengths_B))
    gi_Sx2xBx3H = jnp.stack([gi_f, gi_b], axis=0).transpose(2, 0, 1, 3)
    w_hh = jnp.stack([self.fwd.recurrent_kernel, self.bwd.recurrent_kernel]).astype(self.dtype)
    b_hh = jnp.stack([self.fwd.recurrent_bias, self.bwd.recurrent_bias])[:, None, :]
    b_hh = b_hh.astype(jnp.float32)
    step_mask_SxB = mask_BxS.T

    def step(h_2xBxH, xs):
      gi_2xBx3H, m_B = xs
      gh = jnp.einsum("dbh,dhk->dbk", h_2xBxH.astype(self.dtype), w_hh,
                      preferred_element_type=jnp.float32) + b_hh
      h_new = gru_update(gi_2xBx3H, gh, h_2xBxH)
      h_new = jnp.where(m_B[None, :, None], h_new, h_2xBxH)
      return h_new, h_new

    h0 = jnp.zeros((2, batch, self.hidden_dim), jnp.float32)
    h_last, out_Sx2xBxH = jax.lax.scan(step, h0, (gi_Sx2xBx3H, step_mask_SxB),
                                       unroll=self.unroll)
    out_f = out_Sx2xBxH[:, 0].transpose(1, 0, 2)
    out_b = reverse_within_lengths(out_Sx2xBxH[:, 1].transpose(1, 0, 2), lengths_B)
    out = jnp.concatenate([out_f, out_b], axis=-1) * mask_BxS[:, :, None]
    return out, h_last[0], h_last[1]


class Encoder(nn.Module):
  """Embedding, dropout, `enc_layers` bidirectional GRUs and the bridge.

  Parameters: `embedding/embedding [src_vocab, emb]`, `layer_i/{fwd,bwd}/...`
  (see `GRUCell`) and `bridge/{kernel [2*enc_hidden, dec_hidden], bias}`.
  """

  config: Seq2SeqConfig

  def setup(self):
    cfg = self.config
    init = weight_init(cfg.init_std)
    self.embedding = nn.Embed(cfg.src_vocab_size, cfg.emb_dim, embedding_init=init,
                              param_dtype=cfg.params_dtype, name="embedding")
    self.layers = [
        BiGRULayer(input_dim=cfg.emb_dim if i == 0 else cfg.memory_dim,
                   hidden_dim=cfg.enc_hidden, init_std=cfg.init_std, dtype=cfg.compute_dtype,
                   param_dtype=cfg.params_dtype, unroll=cfg.scan_unroll, name=f"layer_{i}")
        for i in range(cfg.enc_layers)
    ]
    self.bridge = nn.Dense(cfg.dec_hidden, kernel_init=init, dtype=cfg.compute_dtype,
                           param_dtype=cfg.params_dtype, name="bridge")
    self.dropout = nn.Dropout(cfg.dropout)

  def __call__(self, src_BxS: jax.Array, src_lengths_B: jax.Array, train: bool = False):
    """Encodes a padded batch.

    Args:
      src_BxS: int32 token ids `[batch, src_len]`.
      src_lengths_B: true lengths `[batch]`, each in `[1, src_len]`.
      train: enables dropout (needs a "dropout" RNG).

    Returns:
      memory `[batch, src_len, 2*enc_hidden]` (float32, zero on padding),
      mask `[batch, src_len]` (bool, True at real positions), and the initial
      decoder state `s0 = tanh(Dense([h_fwd_last; h_bwd_first]))` `[batch, dec_hidden]`.
    """
    batch, src_len = src_BxS.shape
    mask_BxS = jnp.arange(src_len)[None, :] < src_lengths_B[:, None]
    x = self.dropout(self.embedding(src_BxS), deterministic=not train)
    for layer in self.layers:
      x, h_fwd, h_bwd = layer(x, src_lengths_B, mask_BxS)
    s0 = jnp.tanh(self.bridge(jnp.concatenate([h_fwd, h_bwd], axis=-1))).astype(jnp.float32)
    chex.assert_shape(x, (batch, src_len, self.config.memory_dim))
    chex.assert_shape(s0, (batch, self.config.dec_hidden))
    return x.astype(jnp.float32), mask_BxS, s0
