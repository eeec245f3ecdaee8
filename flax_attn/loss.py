"""Token-level cross entropy, masked on padding, as sums with a denominator
(`projected_cross_entropy_sums`: fused with the output projection, in chunks)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from flax_attn.parallel import cotangent_of, varying_like


def cross_entropy_sums(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                       label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Summed cross entropy over real tokens.

  Args:
    logits_BxTxV: float logits.
    targets_BxT: int target ids.
    weights_BxT: 1.0 at real tokens, 0.0 at padding.
    label_smoothing: mass spread uniformly over the vocabulary.

  Returns:
    (loss_sum, nll_sum, weight_sum): the training loss (with smoothing), the
    plain negative log-likelihood (for perplexity) and the token count, all
    scalars to be summed over devices before dividing.
  """
  logits = logits_BxTxV.astype(jnp.float32)
  nll = _token_nll(logits, targets_BxT)
  if label_smoothing > 0.0:
    vocab = logits.shape[-1]
    smooth = optax.smooth_labels(jax.nn.one_hot(targets_BxT, vocab), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, smooth)
  else:
    loss = nll
  return (jnp.sum(loss * weights_BxT), jnp.sum(nll * weights_BxT), jnp.sum(weights_BxT))


def _token_nll(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """`[B, T]` negative log-likelihood of each target, computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(jnp.float32),
                                                         targets_BxT)


def row_nll_sums(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Per-sentence negative log-likelihood and token count, both `[batch]`
  (for perplexities that weigh sentences or batches, not only tokens)."""
  nll_BxT = _token_nll(logits_BxTxV, targets_BxT)
  weights_BxT = weights_BxT.astype(jnp.float32)
  return jnp.sum(nll_BxT * weights_BxT, axis=1), jnp.sum(weights_BxT, axis=1)


def projected_cross_entropy_sums(features_BxTxF: jax.Array, kernel_FxV: jax.Array,
                                 bias_V: jax.Array, targets_BxT: jax.Array,
                                 weights_BxT: jax.Array, label_smoothing: float = 0.0,
                                 dtype=jnp.float32, chunk_rows: int = 1024):
  """`cross_entropy_sums(features @ kernel + bias, ...)` without the whole logits.

  The output projection and the loss run over chunks of about `chunk_rows`
  target positions, and the same pass computes the gradients with respect to
  `features`, `kernel` and `bias` (softmax minus the smoothed one-hot, times
  the weights), so the `[B*T, V]` logits and their gradient never exist at
  once: on a CPU, where they do not fit in cache, this is the faster way
  (README, Performance). Same values as the unfused form up to summation
  order. Only `loss_sum` is differentiable; `nll_sum` and `weight_sum` are
  metrics (their gradients are zero).
  """
  b, t, f = features_BxTxF.shape
  n = b * t
  chunks = max(1, -(-n // chunk_rows))
  rows = -(-(-(-n // chunks)) // 8) * 8  # rows per chunk, a multiple of 8
  pad = chunks * rows - n
  feats = jnp.pad(features_BxTxF.reshape(n, f), ((0, pad), (0, 0))).reshape(chunks, rows, f)
  tgt = jnp.pad(targets_BxT.reshape(n), (0, pad)).reshape(chunks, rows)
  wts = jnp.pad(weights_BxT.reshape(n).astype(jnp.float32), (0, pad)).reshape(chunks, rows)
  loss_sum, nll_sum = _projected_sums(float(label_smoothing), jnp.dtype(dtype), feats, kernel_FxV,
                                      bias_V, tgt, wts)
  return loss_sum, nll_sum, jnp.sum(weights_BxT.astype(jnp.float32))


def _chunk(smoothing, dtype, kernel_FxV, bias_V, feats_CxF, tgt_C, wts_C):
  """One chunk's (loss_sum, nll_sum, d loss_sum / d logits); `kernel_FxV`
  arrives already in `dtype` (cast once, outside the loop over chunks)."""
  logits = jnp.dot(feats_CxF.astype(dtype), kernel_FxV,
                   preferred_element_type=jnp.float32) + bias_V.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  nll = lse - jnp.take_along_axis(logits, tgt_C[:, None], axis=-1)[:, 0]
  loss = nll
  onehot = jax.nn.one_hot(tgt_C, logits.shape[-1], dtype=jnp.float32)
  target_dist = onehot
  if smoothing > 0.0:
    loss = (1.0 - smoothing) * nll + smoothing * (lse - jnp.mean(logits, axis=-1))
    target_dist = optax.smooth_labels(onehot, smoothing)
  dlogits = (jnp.exp(logits - lse[:, None]) - target_dist) * wts_C[:, None]
  return jnp.sum(loss * wts_C), jnp.sum(nll * wts_C), dlogits


def _projected_fwd(smoothing, dtype, feats, kernel_FxV, bias_V, tgt, wts):
  kernel = kernel_FxV.astype(dtype)

  def body(carry, x):
    loss_sum, nll_sum, d_kernel, d_bias = carry
    feats_CxF, tgt_C, wts_C = x
    loss, nll, dlogits = _chunk(smoothing, dtype, kernel, bias_V, feats_CxF, tgt_C, wts_C)
    d_kernel = d_kernel + jnp.dot(feats_CxF.astype(dtype).T, dlogits.astype(dtype),
                                  preferred_element_type=jnp.float32)
    d_feats = jnp.dot(dlogits.astype(dtype), kernel.T, preferred_element_type=jnp.float32)
    carry = (loss_sum + loss, nll_sum + nll, d_kernel, d_bias + jnp.sum(dlogits, axis=0))
    return carry, d_feats.astype(feats.dtype)

  zero = jnp.zeros((), jnp.float32)
  # Typed like the inputs, so that the scan also runs under jax.shard_map.
  init = varying_like((zero, zero, jnp.zeros(kernel_FxV.shape, jnp.float32),
                       jnp.zeros(bias_V.shape, jnp.float32)), feats, kernel_FxV, bias_V, tgt, wts)
  (loss_sum, nll_sum, d_kernel, d_bias), d_feats = jax.lax.scan(body, init, (feats, tgt, wts))
  grads = (d_feats, d_kernel.astype(kernel_FxV.dtype), d_bias.astype(bias_V.dtype))
  return (loss_sum, nll_sum), (grads, kernel_FxV, bias_V)


def _projected_bwd(smoothing, dtype, residuals, cotangents):
  del smoothing, dtype
  (d_feats, d_kernel, d_bias), kernel_FxV, bias_V = residuals
  g = cotangents[0]  # nll_sum is a metric: its cotangent is ignored
  # cotangent_of: a replicated kernel's gradient summed over a shard_map's
  # devices, as autodiff gives it; elsewhere the gradient as it is.
  return (g * d_feats, cotangent_of(kernel_FxV, (g * d_kernel).astype(d_kernel.dtype)),
          cotangent_of(bias_V, (g * d_bias).astype(d_bias.dtype)), None, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _projected_sums(smoothing, dtype, feats, kernel_FxV, bias_V, tgt, wts):
  kernel = kernel_FxV.astype(dtype)

  def body(carry, x):
    loss, nll, _ = _chunk(smoothing, dtype, kernel, bias_V, *x)
    return (carry[0] + loss, carry[1] + nll), None

  zero = varying_like(jnp.zeros((), jnp.float32), feats, kernel_FxV, bias_V, tgt, wts)
  (loss_sum, nll_sum), _ = jax.lax.scan(body, (zero, zero), (feats, tgt, wts))
  return loss_sum, nll_sum


_projected_sums.defvjp(_projected_fwd, _projected_bwd)
