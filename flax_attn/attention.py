"""Additive ("Bahdanau") attention: `e_j = v . tanh(W s + U h_j + b)`.

The key projection `U h_j + b` depends only on the memory, so it is computed
once per sentence (`project_keys`) and reused at every decoder step, as
Bahdanau et al. (2015, appendix A.1.2) point out. The query projection and the
scoring are the only per-step work.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_attn.gru import dense, weight_init

# Added to the scores of padded positions. Finite, so a fully padded row gives
# a uniform (not NaN) distribution; far below any real score.
MASK_VALUE = -1e9


def mask_bias(mask_BxS: jax.Array) -> jax.Array:
  """Additive score bias: 0 at real positions, `MASK_VALUE` at padding."""
  return jnp.where(mask_BxS, 0.0, MASK_VALUE).astype(jnp.float32)


def attend(query_BxA: jax.Array, keys_BxSxA: jax.Array, v_A: jax.Array,
           memory_BxSxM: jax.Array, bias_BxS: jax.Array | None,
           dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Scores, masked softmax and context from projected query and keys.

  Args:
    query_BxA: `W s`, `[batch, attn]`.
    keys_BxSxA: `U h_j + b`, `[batch, src_len, attn]`.
    v_A: scoring vector `[attn]`.
    memory_BxSxM: the memory `h_j`, `[batch, src_len, mem]`.
    bias_BxS: `mask_bias(mask)` or None.
    dtype: dtype of the tanh and the context matmul (softmax is float32).

  Returns:
    context `[batch, mem]` (float32) and weights `[batch, src_len]` (float32).
  """
  energy = jnp.tanh((query_BxA[:, None, :] + keys_BxSxA).astype(dtype))
  scores_BxS = jnp.einsum("bsa,a->bs", energy, v_A.astype(dtype),
                          preferred_element_type=jnp.float32)
  if bias_BxS is not None:
    scores_BxS = scores_BxS + bias_BxS
  weights_BxS = jax.nn.softmax(scores_BxS, axis=-1)
  context_BxM = jnp.einsum("bs,bsm->bm", weights_BxS.astype(dtype), memory_BxSxM.astype(dtype),
                           preferred_element_type=jnp.float32)
  return context_BxM, weights_BxS


class AdditiveAttention(nn.Module):
  """Bahdanau attention of a query over a memory.

  Parameters: `query_kernel [query_dim, attn_dim]` (W), `key_kernel
  [memory_dim, attn_dim]` (U), `key_bias [attn_dim]` (the one bias of the
  tutorial's `attn` Linear) and `v [attn_dim]`.

  Use `__call__` for a one-off query, or `project_keys` once and then
  `attend_projected` at every step.
  """

  query_dim: int
  memory_dim: int
  attn_dim: int
  init_std: float | None = 0.01
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    init = weight_init(self.init_std)
    self.query_kernel = self.param("query_kernel", init, (self.query_dim, self.attn_dim),
                                   self.param_dtype)
    self.key_kernel = self.param("key_kernel", init, (self.memory_dim, self.attn_dim),
                                 self.param_dtype)
    self.key_bias = self.param("key_bias", nn.initializers.zeros_init(), (self.attn_dim,),
                               self.param_dtype)
    # `v` is a [attn_dim] vector; the tutorial's Linear(attn_dim, 1) weight is [1, attn_dim].
    self.v = self.param("v", lambda k, s, d: init(k, (1,) + s, d)[0], (self.attn_dim,),
                        self.param_dtype)

  def project_keys(self, memory_BxSxM: jax.Array) -> jax.Array:
    """`U h_j + b` for every position: `[batch, src_len, attn]`."""
    chex.assert_rank(memory_BxSxM, 3)
    return dense(memory_BxSxM, self.key_kernel, self.key_bias, self.dtype)

  def project_query(self, query_BxQ: jax.Array) -> jax.Array:
    """`W s`: `[batch, query_dim] -> [batch, attn]`."""
    return dense(query_BxQ, self.query_kernel, None, self.dtype)

  def attend_projected(self, query_BxQ: jax.Array, keys_BxSxA: jax.Array,
                       memory_BxSxM: jax.Array, bias_BxS: jax.Array | None):
    """Attention with precomputed keys: returns (context, weights)."""
    return attend(self.project_query(query_BxQ), keys_BxSxA, self.v, memory_BxSxM, bias_BxS,
                  self.dtype)

  def __call__(self, query_BxQ: jax.Array, memory_BxSxM: jax.Array,
               mask_BxS: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Attend `query [batch, query_dim]` over `memory [batch, src_len, memory_dim]`.

    Args:
      query_BxQ: the query (the decoder's previous state).
      memory_BxSxM: the memory (the encoder states).
      mask_BxS: True at real positions; None means no padding.

    Returns:
      context `[batch, memory_dim]` and weights `[batch, src_len]`; the
      weights are 0 on padding and each row sums to 1.
    """
    chex.assert_rank([query_BxQ, memory_BxSxM], [2, 3])
    chex.assert_equal_shape_prefix([query_BxQ, memory_BxSxM], 1)
    bias = None if mask_BxS is None else mask_bias(mask_BxS)
    return self.attend_projected(query_BxQ, self.project_keys(memory_BxSxM), memory_BxSxM, bias)
