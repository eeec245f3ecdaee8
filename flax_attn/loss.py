"""Token-level cross entropy, masked on padding, as sums with a denominator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets_BxT)
  if label_smoothing > 0.0:
    vocab = logits.shape[-1]
    smooth = optax.smooth_labels(jax.nn.one_hot(targets_BxT, vocab), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, smooth)
  else:
    loss = nll
  return (jnp.sum(loss * weights_BxT), jnp.sum(nll * weights_BxT), jnp.sum(weights_BxT))
