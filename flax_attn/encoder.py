"""Encoder: embedding -> dropout -> bidirectional GRU(s) over true lengths -> bridge.

Padding is handled like PyTorch's packed sequences: the forward direction
stops updating at each row's length, the backward direction starts at each
row's last real token, and the outputs at padded positions are zero. So no
amount of extra padding changes an output at a real position or a final state.
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_attn.config import Seq2SeqConfig
from flax_attn.deferred import defer_weight_grads
from flax_attn.gru import GRUCell, gru_update, weight_init
from flax_attn.parallel import varying_like


def _reverse(x_SxBx: jax.Array, lengths_B: jax.Array) -> jax.Array:
  t_S = jnp.arange(x_SxBx.shape[0])[:, None]
  idx_SxB = jnp.where(t_S < lengths_B[None, :], lengths_B[None, :] - 1 - t_S, t_S)
  idx = idx_SxB.reshape(idx_SxB.shape + (1,) * (x_SxBx.ndim - 2))
  return jnp.take_along_axis(x_SxBx, idx, axis=0)


@jax.custom_vjp
def reverse_within_lengths(x_SxBx: jax.Array, lengths_B: jax.Array) -> jax.Array:
  """Time-major: reverses each row's first `length` steps, padding stays in place.

  The permutation is its own inverse, so the gradient is the same gather of
  the cotangent: equal to autodiff's scatter-add bit for bit, and 2x or more
  faster on CPU (`experiments/bench/reverse_grad_ab.py`; a few ms of a step)."""
  return _reverse(x_SxBx, lengths_B)


def _reverse_fwd(x_SxBx, lengths_B):
  return _reverse(x_SxBx, lengths_B), lengths_B


def _reverse_bwd(lengths_B, g_SxBx):
  return _reverse(g_SxBx, lengths_B), None


reverse_within_lengths.defvjp(_reverse_fwd, _reverse_bwd)


def _bigru_run(dtype, unroll, weights, zs, b_hh_2x1x3H, gi_f_SxBx3H, gi_b_SxBx3H, mask_SxB):
  """Both directions' recurrences in one scan (time-major; the backward
  direction's inputs already reversed within lengths). Returns the states of
  each direction, `[S, B, H]` twice."""
  (w_hh_2xHx3H,), (z_Sx2xBx3H,) = weights, zs
  w_hh = w_hh_2xHx3H.astype(dtype)

  def step(h_2xBxH, xs):
    gi_f, gi_b, m_B, z_2xBx3H = xs
    gh = jnp.einsum("dbh,dhk->dbk", h_2xBxH.astype(dtype), w_hh,
                    preferred_element_type=jnp.float32)
    gh = gh + b_hh_2x1x3H.astype(jnp.float32) + z_2xBx3H
    h_new = jnp.stack([gru_update(gi_f, gh[0], h_2xBxH[0]),
                       gru_update(gi_b, gh[1], h_2xBxH[1])])
    h_new = jnp.where(m_B[None, :, None], h_new, h_2xBxH)
    return h_new, (h_new[0], h_new[1])

  src_len, batch, h3 = gi_f_SxBx3H.shape
  # Typed like the inputs, so the carry's type is the same in and out under shard_map.
  h0 = varying_like(jnp.zeros((2, batch, h3 // 3), jnp.float32),
                    (weights, zs, b_hh_2x1x3H, gi_f_SxBx3H, gi_b_SxBx3H, mask_SxB))
  return jax.lax.scan(step, h0, (gi_f_SxBx3H, gi_b_SxBx3H, mask_SxB, z_Sx2xBx3H),
                      unroll=unroll)[1]


def _bigru_inputs(outputs, b_hh, gi_f, gi_b, mask):
  """The states that multiplied W_hh at each step (zeros first): `[S, 2, B, H]`."""
  del b_hh, gi_f, gi_b, mask
  out = jnp.stack(outputs, axis=1)
  return (jnp.concatenate([jnp.zeros_like(out[:1]), out[:-1]], axis=0),)


@functools.cache
def _bigru_scan(dtype, unroll: int):
  """`_bigru_run` with the recurrent kernels' gradients deferred (`flax_attn.deferred`)."""
  return defer_weight_grads(functools.partial(_bigru_run, dtype, unroll), _bigru_inputs)


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

  def setup(self) -> None:
    kw = dict(input_dim=self.input_dim, hidden_dim=self.hidden_dim, init_std=self.init_std,
              dtype=self.dtype, param_dtype=self.param_dtype)
    self.fwd = GRUCell(**kw)
    self.bwd = GRUCell(**kw)

  def __call__(self, x_SxBxD: jax.Array, lengths_B: jax.Array, mask_SxB: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Time-major in and out: returns outputs `[src_len, batch, 2*hidden]`
    (zero on padding), the forward state at each row's last token and the
    backward state at its first token (both `[batch, hidden]`)."""
    src_len, batch, _ = x_SxBxD.shape
    gi_f = self.fwd.input_gates(x_SxBxD)                                   # [S, B, 3H]
    gi_b = self.bwd.input_gates(reverse_within_lengths(x_SxBxD, lengths_B))
    w_hh = jnp.stack([self.fwd.recurrent_kernel, self.bwd.recurrent_kernel])
    b_hh = jnp.stack([self.fwd.recurrent_bias, self.bwd.recurrent_bias])[:, None, :]
    z_shape = (src_len, 2, batch, 3 * self.hidden_dim)
    out_f, out_b = _bigru_scan(self.dtype, self.unroll)((w_hh,), (z_shape,), b_hh, gi_f, gi_b,
                                                        mask_SxB)
    # Padding keeps the state, so the last step holds each row's final state.
    h_fwd, h_bwd = out_f[-1], out_b[-1]
    out = jnp.concatenate([out_f, reverse_within_lengths(out_b, lengths_B)], axis=-1)
    return out * mask_SxB[:, :, None], h_fwd, h_bwd


class Encoder(nn.Module):
  """Embedding, dropout, `enc_layers` bidirectional GRUs and the bridge.

  Parameters: `embedding/embedding [src_vocab, emb]`, `layer_i/{fwd,bwd}/...`
  (see `GRUCell`) and `bridge/{kernel [2*enc_hidden, dec_hidden], bias}`.
  """

  config: Seq2SeqConfig

  def setup(self) -> None:
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

  def __call__(self, src_BxS: jax.Array, src_lengths_B: jax.Array, train: bool = False
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
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
    # Time-major inside: the scans read and write contiguous [batch, ...] slices.
    x = self.dropout(self.embedding(src_BxS.T), deterministic=not train)
    for layer in self.layers:
      x, h_fwd, h_bwd = layer(x, src_lengths_B, mask_BxS.T)
    x = x.transpose(1, 0, 2)
    s0 = jnp.tanh(self.bridge(jnp.concatenate([h_fwd, h_bwd], axis=-1))).astype(jnp.float32)
    chex.assert_shape(x, (batch, src_len, self.config.memory_dim))
    chex.assert_shape(s0, (batch, self.config.dec_hidden))
    return x.astype(jnp.float32), mask_BxS, s0
