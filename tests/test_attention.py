"""AdditiveAttention on its own: any memory/query, masking, the formula."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_attn import AdditiveAttention


def test_matches_formula_and_masks():
  layer = AdditiveAttention(query_dim=3, memory_dim=5, attn_dim=4, init_std=0.5)
  q = jax.random.normal(jax.random.key(0), (2, 3))
  mem = jax.random.normal(jax.random.key(1), (2, 6, 5))
  mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  params = layer.init(jax.random.key(2), q, mem, mask)["params"]
  ctx, w = layer.apply({"params": params}, q, mem, mask)
  W, U, b, v = (np.asarray(params[k]) for k in ("query_kernel", "key_kernel", "key_bias", "v"))
  e = np.tanh(np.asarray(q)[:, None] @ W + np.asarray(mem) @ U + b) @ v
  e = np.where(np.asarray(mask), e, -np.inf)
  ref_w = np.exp(e - e.max(-1, keepdims=True))
  ref_w /= ref_w.sum(-1, keepdims=True)
  np.testing.assert_allclose(w, ref_w, atol=1e-6)
  np.testing.assert_allclose(ctx, np.einsum("bs,bsm->bm", ref_w, mem), atol=1e-5)
  assert float(w[0, 4:].sum()) == 0.0


def test_fully_masked_row_is_finite():
  layer = AdditiveAttention(query_dim=3, memory_dim=5, attn_dim=4)
  q, mem = jnp.ones((1, 3)), jnp.ones((1, 4, 5))
  mask = jnp.zeros((1, 4), bool)
  params = layer.init(jax.random.key(0), q, mem, mask)
  ctx, w = layer.apply(params, q, mem, mask)
  assert np.all(np.isfinite(ctx)) and np.all(np.isfinite(w))
