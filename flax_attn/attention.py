"""Additive ("Bahdanau") attention: `e_j = v . tanh(W s + U h_j + b)`.

The key projection `U h_j + b` depends only on the memory, so it is computed
once per sentence (`project_keys`) and reused at every decoder step, as
Bahdanau et al. (2015, appendix A.1.2) point out. The query projection and the
scoring are the only per-step work.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_attn.gru import dense, weight_init

# Added to the scores of padded positions. Finite, so a fully padded row stays
# finite (no NaN); far below any real score. `AdditiveAttention` then zeroes
# such a row's weights and context.
MASK_VALUE = -1e9


def mask_bias(mask_BxS: jax.Array) -> jax.Array:
  """Additive score bias: 0 at real positions, `MASK_VALUE` at padding."""
  return jnp.where(mask_BxS, 0.0, MASK_VALUE).astype(jnp.float32)


def attend(query_BxA: jax.Array, keys_BxSxA: jax.Array, v_A: jax.Array,
           memory_BxSxM: jax.Array, bias_BxS: jax.Array | None,
           dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Scores, masked softmax and context from projected query and keys.

  Any number of leading batch axes `...` (written `B` below), the same on
  every argument.

  Args:
    query_BxA: `W s`, `[..., attn]`.
    keys_BxSxA: `U h_j + b`, `[..., src_len, attn]`.
    v_A: scoring vector `[attn]`.
    memory_BxSxM: the memory `h_j`, `[..., src_len, mem]`.
    bias_BxS: `mask_bias(mask)` `[..., src_len]` or None.
    dtype: dtype of the tanh and the context matmul (softmax is float32).

  Returns:
    context `[..., mem]` (float32) and weights `[..., src_len]` (float32). A
    row whose bias is `MASK_VALUE` everywhere gets uniform weights here (the
    `AdditiveAttention` layer zeroes it).
  """
  energy = jnp.tanh((query_BxA[..., None, :] + keys_BxSxA).astype(dtype))
  scores_BxS = jnp.einsum("...sa,a->...s", energy, v_A.astype(dtype),
                          preferred_element_type=jnp.float32)
  if bias_BxS is not None:
    scores_BxS = scores_BxS + bias_BxS
  weights_BxS = jax.nn.softmax(scores_BxS, axis=-1)
  context_BxM = jnp.einsum("...s,...sm->...m", weights_BxS.astype(dtype),
                           memory_BxSxM.astype(dtype), preferred_element_type=jnp.float32)
  return context_BxM, weights_BxS


def _zero_empty_rows(context_BxM: jax.Array, weights_BxS: jax.Array,
                     bias_BxS: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Zero context and weights where every position is masked (else unchanged)."""
  if bias_BxS is None:
    return context_BxM, weights_BxS
  has_real_B = jnp.max(bias_BxS, axis=-1) > 0.5 * MASK_VALUE
  return (jnp.where(has_real_B[..., None], context_BxM, 0.0),
          jnp.where(has_real_B[..., None], weights_BxS, 0.0))


def _check_features(name: str, x: jax.Array, expected: int, attribute: str) -> None:
  if not hasattr(x, "shape") or x.ndim < 1 or x.shape[-1] != expected:
    raise ValueError(f"AdditiveAttention: {name} has {getattr(x, 'shape', type(x))} "
                     f"but {attribute}={expected} (its last axis must be {expected})")


class AdditiveAttention(nn.Module):
  """Bahdanau attention of a query over a memory.

  Parameters: `query_kernel [query_dim, attn_dim]` (W), `key_kernel
  [memory_dim, attn_dim]` (U), `key_bias [attn_dim]` (the one bias of the
  tutorial's `attn` Linear) and `v [attn_dim]`.

  Use `__call__` for a one-off query, or `project_keys` once and then
  `attend_projected` at every step. Every method takes any number of leading
  batch axes `...` (also none, or added by `jax.vmap`).
  """

  query_dim: int
  memory_dim: int
  attn_dim: int
  init_std: float | None = 0.01
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self) -> None:
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
    """`U h_j + b` for every position: `[..., src_len, memory_dim] -> [..., src_len, attn]`."""
    _check_features("memory", memory_BxSxM, self.memory_dim, "memory_dim")
    if memory_BxSxM.ndim < 2:
      raise ValueError(f"AdditiveAttention: memory must be [..., src_len, memory_dim], "
                       f"got shape {memory_BxSxM.shape}")
    return dense(memory_BxSxM, self.key_kernel, self.key_bias, self.dtype)

  def project_query(self, query_BxQ: jax.Array) -> jax.Array:
    """`W s`: `[..., query_dim] -> [..., attn]`."""
    _check_features("query", query_BxQ, self.query_dim, "query_dim")
    return dense(query_BxQ, self.query_kernel, None, self.dtype)

  def attend_projected(self, query_BxQ: jax.Array, keys_BxSxA: jax.Array,
                       memory_BxSxM: jax.Array, bias_BxS: jax.Array | None
                       ) -> tuple[jax.Array, jax.Array]:
    """Attention with precomputed keys and bias (`mask_bias(mask)`): returns
    (context, weights), a fully masked row all zeros (see `__call__`)."""
    context, weights = attend(self.project_query(query_BxQ), keys_BxSxA, self.v, memory_BxSxM,
                              bias_BxS, self.dtype)
    return _zero_empty_rows(context, weights, bias_BxS)

  def __call__(self, query_BxQ: jax.Array, memory_BxSxM: jax.Array,
               mask_BxS: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Attend `query [..., query_dim]` over `memory [..., src_len, memory_dim]`.

    Args:
      query_BxQ: the query (the decoder's previous state).
      memory_BxSxM: the memory (the encoder states); its leading axes `...`
        must equal the query's.
      mask_BxS: bool `[..., src_len]` (the scores' shape, no broadcasting),
        True at real positions; None means no padding.

    Returns:
      context `[..., memory_dim]` and weights `[..., src_len]` (float32): the
      weights are 0 on padding and each row sums to 1, except a row with no
      real position at all, whose weights and context are all 0.

    Raises:
      ValueError: a feature size differs from `query_dim`/`memory_dim`, the
        leading axes differ, or the mask is not bool of the scores' shape.
    """
    _check_features("query", query_BxQ, self.query_dim, "query_dim")
    _check_features("memory", memory_BxSxM, self.memory_dim, "memory_dim")
    if memory_BxSxM.ndim < 2 or query_BxQ.shape[:-1] != memory_BxSxM.shape[:-2]:
      raise ValueError(f"AdditiveAttention: query {query_BxQ.shape} and memory "
                       f"{memory_BxSxM.shape} must be [..., query_dim] and "
                       f"[..., src_len, memory_dim] with the same leading axes")
    if mask_BxS is not None:
      scores_shape = memory_BxSxM.shape[:-1]
      if not hasattr(mask_BxS, "shape") or mask_BxS.shape != scores_shape:
        raise ValueError(f"AdditiveAttention: mask has shape {getattr(mask_BxS, 'shape', None)} "
                         f"but the scores have {scores_shape} (memory {memory_BxSxM.shape}); "
                         f"pass one [..., src_len] mask row per query")
      if mask_BxS.dtype != jnp.bool_:
        raise ValueError(f"AdditiveAttention: mask must be bool (True at real positions), "
                         f"got {mask_BxS.dtype}; use mask.astype(bool) or lengths > positions")
    bias = None if mask_BxS is None else mask_bias(mask_BxS)
    return self.attend_projected(query_BxQ, self.project_keys(memory_BxSxM), memory_BxSxM, bias)
