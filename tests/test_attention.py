"""AdditiveAttention on its own: any memory/query, masking, the formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def _layer_and_params(q, mem):
  layer = AdditiveAttention(query_dim=3, memory_dim=5, attn_dim=4, init_std=0.5)
  return layer, layer.init(jax.random.key(2), q, mem)["params"]


def test_fully_masked_row_gives_zero_context_and_weights():
  q = jax.random.normal(jax.random.key(0), (3, 3))
  mem = jax.random.normal(jax.random.key(1), (3, 4, 5))
  mask = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
  layer, params = _layer_and_params(q, mem)
  ctx, w = layer.apply({"params": params}, q, mem, mask)
  rows = jnp.array([0, 2])
  assert float(jnp.abs(ctx[1]).max()) == 0.0 and float(jnp.abs(w[1]).max()) == 0.0
  np.testing.assert_allclose(w[rows].sum(-1), 1.0, atol=1e-6)
  # The other rows are what they are when row 1 is not empty: the same shapes
  # (one compiled program; XLA:CPU may round a batch of 2 differently from a
  # batch of 3 in the last bit, so dropping the row is not a bitwise check).
  ctx2, w2 = layer.apply({"params": params}, q, mem, mask.at[1].set(True))
  np.testing.assert_array_equal(ctx[rows], ctx2[rows])
  np.testing.assert_array_equal(w[rows], w2[rows])
  assert float(jnp.abs(ctx2[1]).max()) > 0.0
  # And without the row, up to that last-bit rounding.
  ctx3, w3 = layer.apply({"params": params}, q[rows], mem[rows], mask[rows])
  np.testing.assert_allclose(ctx[rows], ctx3, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(w[rows], w3, rtol=1e-6, atol=1e-7)
  # Gradients stay finite (zero for the empty row's query).
  g = jax.grad(lambda q: layer.apply({"params": params}, q, mem, mask)[0].sum())(q)
  assert np.isfinite(g).all() and float(jnp.abs(g[1]).max()) == 0.0


@pytest.mark.parametrize("mask, match", [
    (jnp.ones((6,), bool), r"mask has shape \(6,\) but the scores have \(2, 6\)"),
    (jnp.ones((1, 6), bool), r"mask has shape \(1, 6\) but the scores have \(2, 6\)"),
    (jnp.ones((2, 6, 1), bool), r"mask has shape \(2, 6, 1\)"),
    (jnp.ones((2, 6), jnp.int32), "mask must be bool .* got int32"),
    (jnp.ones((2, 6), jnp.float32), "mask must be bool .* got float32"),
])
def test_bad_masks_are_rejected(mask, match):
  q, mem = jnp.ones((2, 3)), jnp.ones((2, 6, 5))
  layer, params = _layer_and_params(q, mem)
  with pytest.raises(ValueError, match=match) as err:
    layer.apply({"params": params}, q, mem, mask)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("q_shape, mem_shape, match", [
    ((2, 4), (2, 6, 5), r"query has \(2, 4\) but query_dim=3"),
    ((2, 3), (2, 6, 7), r"memory has \(2, 6, 7\) but memory_dim=5"),
    ((2, 3), (3, 6, 5), "same leading axes"),
    ((2, 3), (5,), "same leading axes"),
])
def test_feature_and_batch_mismatches_are_one_line_errors(q_shape, mem_shape, match):
  layer, params = _layer_and_params(jnp.ones((2, 3)), jnp.ones((2, 6, 5)))
  with pytest.raises(ValueError, match=match) as err:
    layer.apply({"params": params}, jnp.ones(q_shape), jnp.ones(mem_shape))
  assert "\n" not in str(err.value)


def test_any_leading_batch_axes_and_vmap():
  """`[..., Dq]` over `[..., S, Dm]` with mask `[..., S]`: two batch axes,
  none, and `jax.vmap` of the unbatched call all equal the `[B, ...]` call."""
  q = jax.random.normal(jax.random.key(0), (6, 3))
  mem = jax.random.normal(jax.random.key(1), (6, 4, 5))
  mask = jnp.arange(4)[None, :] < jnp.array([4, 1, 2, 3, 4, 2])[:, None]
  layer, params = _layer_and_params(q, mem)
  apply = lambda *a: layer.apply({"params": params}, *a)
  ctx, w = apply(q, mem, mask)
  ctx2, w2 = apply(q.reshape(2, 3, 3), mem.reshape(2, 3, 4, 5), mask.reshape(2, 3, 4))
  np.testing.assert_allclose(ctx2.reshape(6, 5), ctx, atol=1e-6)
  np.testing.assert_allclose(w2.reshape(6, 4), w, atol=1e-6)
  ctx1, w1 = apply(q[2], mem[2], mask[2])
  np.testing.assert_allclose(ctx1, ctx[2], atol=1e-6)
  np.testing.assert_allclose(w1, w[2], atol=1e-6)
  ctx_v, w_v = jax.vmap(apply)(q, mem, mask)
  np.testing.assert_allclose(ctx_v, ctx, atol=1e-6)
  np.testing.assert_allclose(w_v, w, atol=1e-6)
  keys = layer.apply({"params": params}, mem.reshape(2, 3, 4, 5),
                     method=AdditiveAttention.project_keys)
  assert keys.shape == (2, 3, 4, 4)
