"""Deferred weight gradients: same values and gradients as plain autodiff."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_attn.deferred import defer_weight_grads


def _rnn(weights, zs, x_TxBxI, h0):
  (w_x, w_h), (z,) = weights, zs
  def step(h, xs):
    x, z_t = xs
    h = jnp.tanh(x @ w_x + h @ w_h + z_t)
    return h, h
  return jax.lax.scan(step, h0, (x_TxBxI, z))[1]


def _inputs(outputs, x_TxBxI, h0):
  del x_TxBxI
  return (jnp.concatenate([h0[None], outputs[:-1]], 0),)


def test_same_value_and_gradients():
  k = jax.random.split(jax.random.key(0), 4)
  w_x = jax.random.normal(k[0], (3, 5))
  w_h = jax.random.normal(k[1], (5, 5)) * 0.5
  x = jax.random.normal(k[2], (6, 4, 3))
  h0 = jax.random.normal(k[3], (4, 5))
  # Defer w_h (multiplies h_{t-1}); keep w_x an ordinary argument.
  run = lambda weights, zs, w_x, x, h0: _rnn((w_x, weights[0]), zs, x, h0)
  inputs = lambda out, w_x, x, h0: _inputs(out, x, h0)
  fast = defer_weight_grads(run, inputs)

  def loss_ref(w_x, w_h, x, h0):
    return jnp.sum(jnp.sin(_rnn((w_x, w_h), (jnp.zeros((6, 4, 5)),), x, h0)))

  def loss_fast(w_x, w_h, x, h0):
    return jnp.sum(jnp.sin(fast((w_h,), ((6, 4, 5),), w_x, x, h0)))

  np.testing.assert_allclose(loss_fast(w_x, w_h, x, h0), loss_ref(w_x, w_h, x, h0), rtol=1e-6)
  g_ref = jax.grad(loss_ref, argnums=(0, 1, 2, 3))(w_x, w_h, x, h0)
  g_fast = jax.grad(loss_fast, argnums=(0, 1, 2, 3))(w_x, w_h, x, h0)
  for a, b in zip(g_fast, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(g_fast[1]).sum()) > 0
